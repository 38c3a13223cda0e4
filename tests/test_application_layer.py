"""The application layer: who imports whom, the metric table the outputs read, the
explicit options of a scoring job, and the pieces the command line, the benchmark and
the demo share (one image loader, one channel sum, the layer kept as a module name)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SmallCNN
from PIL import Image
from torch import nn

import captum_fdcam
from captum_fdcam import benchmark, cli
from captum_fdcam.app.common import checked_images
from captum_fdcam.errors import RequestError
from captum_fdcam.evaluation import (
    METRICS,
    AverageDrop,
    Job,
    channel_sum,
    explain,
    load_image,
    make_metric,
    markdown,
    score,
    summarise,
)
from captum_fdcam.evaluation.metric_info import per_image_metrics
from captum_fdcam.evaluation.metrics import pixel_ranking
from captum_fdcam.evaluation.stats import set_aside_lines
from captum_fdcam.loading import LoadedModel, resolve_layer
from captum_fdcam.models import preprocess, read_rgb

PACKAGE = Path(captum_fdcam.__file__).parent


def _imports(path: Path, entry_points: tuple[str, ...] = ()) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions, except inside
    the functions named in ``entry_points`` (a ``python -m`` entry's ``main``)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in entry_points:
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # "from captum_fdcam import cli" imports the submodule cli
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


#: The application's layers, top down: a module imports only modules of its own layer
#: or below (function-level imports included), so that a command's path goes down
#: from the command line and comes back to it once, with the result.
COMMANDS = {"captum_fdcam.cli", "captum_fdcam.demo"}
SERVICES = {
    "captum_fdcam.app",
    "captum_fdcam.app.explain",
    "captum_fdcam.app.evaluate",
    "captum_fdcam.app.common",
    "captum_fdcam.benchmark",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    return 2 if module in COMMANDS else 1 if module in SERVICES else 0


def test_every_import_goes_down_the_layers() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        # benchmark.main is `python -m captum_fdcam.benchmark`: the command line's entry.
        entry = ("main",) if module == "captum_fdcam.benchmark" else ()
        for imported in _imports(path, entry):
            if imported.startswith("captum_fdcam") and _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert upward == []
    # the command line reaches each service, and the demo the explain service
    assert {"captum_fdcam.app", "captum_fdcam.benchmark"} <= _imports(PACKAGE / "cli.py")
    assert "captum_fdcam.app.explain" in _imports(PACKAGE / "demo.py")
    assert "captum_fdcam.cli" not in _imports(PACKAGE / "demo.py")


def test_no_function_below_the_command_line_takes_parsed_arguments() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if _module_name(path) in COMMANDS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    assert "Namespace" not in annotation, f"{path}: {node.name}({arg.arg})"


def test_cli_holds_only_the_parser_the_requests_and_the_errors() -> None:
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 300


def _python(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (nothing imported yet)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return run.stdout.strip()


def test_only_the_standard_library_at_module_level_of_cli_and_registry() -> None:
    code = (
        "import sys, captum_fdcam.cli, captum_fdcam.registry, captum_fdcam.benchmark\n"
        "import captum_fdcam.app, captum_fdcam.loading, captum_fdcam.images\n"
        "import captum_fdcam.resolve, captum_fdcam.records\n"
        "heavy = {'torch', 'torchvision', 'captum', 'quantus', 'numpy', 'PIL', 'matplotlib'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert _python(code) == "[]"


def test_no_export_of_evaluation_is_shadowed_by_a_submodule() -> None:
    """The package exports lazily; once a submodule is imported, Python sets the package's
    attribute of that name to the module, so an export named like one would be lost."""
    import captum_fdcam.evaluation as evaluation

    modules = {p.stem for p in (PACKAGE / "evaluation").glob("*.py")}
    assert not modules & set(evaluation.__all__)
    code = (
        "import importlib, pkgutil, types, captum_fdcam.evaluation as e\n"
        "for m in pkgutil.iter_modules(e.__path__):\n"
        "    importlib.import_module(f'captum_fdcam.evaluation.{m.name}')\n"
        "print([n for n in e.__all__ if isinstance(getattr(e, n), types.ModuleType)])\n"
    )
    assert _python(code) == "[]"


def test_the_usage_error_is_one_class() -> None:
    from captum_fdcam.errors import CliError, RequestError

    assert cli.CliError is benchmark.RequestError is CliError is RequestError


# -------------------------------------------------------------------- metric table


def test_the_cli_metric_choices_are_the_tables_per_image_metrics() -> None:
    assert cli.EVALUATION_METRICS == per_image_metrics()
    assert "gridpg" not in per_image_metrics() and "overall" not in per_image_metrics()
    for name, info in METRICS.items():
        assert info.better in {"higher", "lower"} and info.unit, name
    # the Quantus metrics say the same direction where they have one
    for name in ("insertion", "deletion", "average_drop", "average_increase", "gridpg"):
        direction = make_metric(name).score_direction.name.lower()
        assert direction == METRICS[name].better, name


def test_markdown_says_each_metrics_direction_and_unit() -> None:
    records = [
        {"table": "t", "method": m, "item": str(i), "scores": {"insertion": v, "deletion": w}}
        for i, (m, v, w) in enumerate([("A", 0.6, 0.2), ("A", 0.5, 0.1), ("B", 0.4, 0.3)])
    ]
    text = markdown(summarise(records), "# header")
    for name in ("insertion", "deletion", "overall"):
        line = next(x for x in text.splitlines() if x.startswith(f"- {name}: "))
        assert f"{METRICS[name].better} is better" in line and METRICS[name].unit in line


def test_the_committed_tables_regenerate_from_the_scores() -> None:
    folder = PACKAGE.parent / "benchmarks" / "results" / "paper_tables"
    if not (folder / "tables.md").is_file():
        pytest.skip("no committed results in this checkout")
    records = sorted(
        benchmark.read_scores(folder).records,
        key=lambda r: (r["table"], r["method"], r["item"], benchmark._identity(r.get("key"))),
    )
    tables = summarise(records)
    assert json.dumps(tables, indent=1) == (folder / "tables.json").read_text()
    committed = (folder / "tables.md").read_text()
    text = markdown(tables, committed.partition("\n")[0], set_aside_lines(records))
    legend = [x for x in text.splitlines() if x.startswith("- ")]
    named = {k for rows in tables.values() for row in rows.values() for k in row}
    described = {m for m in named if m in METRICS}
    assert described and len(legend) == len(described)  # one line per metric shown
    assert text == committed


# ------------------------------------------------------------------ scoring jobs


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()  # (N, 3, 8, 8) images


def test_positive_only_is_the_jobs_own_field() -> None:
    assert make_metric("average_drop", positive_only=True).positive_only
    assert not make_metric("average_drop").positive_only
    rows = benchmark.jobs_for(benchmark.TABLES, benchmark.CAMS)
    assert {r.job.positive_only for r in rows if r.table == "fgcam-input"} == {True}
    assert {r.job.positive_only for r in rows if r.table != "fgcam-input"} == {False}
    model = _model()
    x = torch.randn(1, 3, 8, 8).numpy()
    y = np.array([1])
    a = explain(model, x, y, method="IntegratedGradients", relu_attributions=False)
    assert 0 < (a > 0).mean() < 0.5  # fewer than half positive: positive_only matters
    for positive_only in (False, True):
        job = Job("IG", "IntegratedGradients", metrics=("average_drop",))
        job = Job(**{**job.__dict__, "positive_only": positive_only})
        got = score(model, job, x, y)["average_drop"]
        expected = AverageDrop(positive_only=positive_only, disable_warnings=True)(
            model, x, y, a_batch=a
        )[0]
        assert got == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------- shared pieces


def test_channel_sum_is_one_function_for_numpy_and_torch() -> None:
    a = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(channel_sum(a), a.sum(axis=1, keepdims=True))
    t = torch.from_numpy(a)
    assert torch.equal(channel_sum(t), t.sum(dim=1, keepdim=True))
    one = a[:, :1]
    assert channel_sum(one) is one  # one channel: nothing to sum
    assert channel_sum(a[0]).shape == (1, 4, 5)
    np.testing.assert_array_equal(
        pixel_ranking(a[0]), np.argsort(-a[0].sum(axis=0).reshape(-1), kind="stable")
    )


def test_one_image_loader(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    expected = preprocess(read_rgb(tmp_path / "a.png"), size=32)
    assert torch.equal(load_image(tmp_path / "a.png", 32), expected)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(RequestError, match=r"cannot read image .*broken\.png"):
        checked_images([tmp_path / "broken.png"])
    # one image module: the other modules reach images through it
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name not in ("images.py",):
            assert "PIL.Image.open" not in path.read_text(), path
            assert "captum_fdcam.models.read_rgb" not in _imports(path), path


def test_a_torchscript_models_layer_is_none_not_an_empty_name() -> None:
    scripted = LoadedModel(torch.jit.script(_model()), [], scripted=True)
    assert resolve_layer(scripted, None) is None
    eager = LoadedModel(_model(), [f"class {i}" for i in range(5)])
    assert resolve_layer(eager, "act") == "act"
