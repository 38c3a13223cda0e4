"""The ``captum-fdcam`` command line: files written, maps equal to the library's, and
one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data

from captum_fdcam import cli
from captum_fdcam.evaluation import Insertion, explain
from captum_fdcam.evaluation.report_card import ValuePixelFlipping
from captum_fdcam.models import efficientnet_lite0, preprocess

pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def offline() -> torch.nn.Module:
    return efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two bundled photos (cat, coffee cup), a text file and labels.csv."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(folder / "cat.png")
    Image.fromarray(data.coffee()).save(folder / "cup.jpg")
    (folder / "notes.txt").write_text("not an image")
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([("file", "class_index"), ("cat.png", 285), ("cup.jpg", 967)])
    return folder


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"captum-fdcam {argv[0]}: error:") and match in err, err


def test_explain_the_bundled_photo(tmp_path: Path, offline: torch.nn.Module, capsys) -> None:
    out = tmp_path / "out"
    argv = ["explain", "--out", str(out), "--methods", "Grad-CAM", "FG-Layer-CAM", "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer: head_activation" in printed and "class 285" in printed  # Egyptian cat
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea.fg-layer-cam.npy",
        "chelsea.grad-cam.npy",
        "chelsea.png",
    ]
    x = preprocess(data.chelsea())
    for name, method in (("grad-cam", "Grad-CAM"), ("fg-layer-cam", "FG-Layer-CAM")):
        saved = np.load(out / f"chelsea.{name}.npy")
        assert saved.shape == (224, 224) and saved.dtype == np.float32
        expected = explain(offline, x, [285], method=method, layer="head_activation")[0, 0]
        np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-7)
    with Image.open(out / "chelsea.png") as figure:
        # photo + two overlays side by side (the colour bar and layer line add height)
        assert figure.width > 2 * figure.height > 0


@pytest.mark.slow
def test_explain_a_folder_with_a_torchvision_model(tmp_path: Path, photos: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    argv = ["explain", str(photos), "--model", "resnet18", "--weights", str(weights)]
    argv += ["--num-classes", "10", "--layer", "layer3", "--target", "4", "--image-size", "64"]
    assert cli.main([*argv, "--methods", "FD-CAM", "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat.fd-cam.npy", "cat.png", "comparison.png", "cup.fd-cam.npy", "cup.png"]
    x = preprocess(Image.open(photos / "cup.jpg"), size=64)
    expected = explain(model, x, [4], method="FD-CAM", layer="layer3")[0, 0]
    np.testing.assert_allclose(np.load(out / "cup.fd-cam.npy"), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_torchscript_models_take_input_methods_only(tmp_path: Path, photos: Path, capsys) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "model.pt"
    with pytest.warns(FutureWarning):  # TorchScript is deprecated in recent PyTorch
        torch.jit.script(model).save(str(path))
    image = str(photos / "cat.png")
    base = ["explain", image, "--model", str(path), "--image-size", "32", "--quiet"]
    with pytest.warns(FutureWarning):
        _error(capsys, [*base, "--methods", "Grad-CAM"], "TorchScript models do not support")
    with pytest.warns(FutureWarning):
        code = cli.main([*base, "--methods", "Saliency", "--out", str(tmp_path), "--target", "2"])
    assert code == 0
    saved = np.load(tmp_path / "cat.saliency.npy")
    x = preprocess(Image.open(image), size=32).requires_grad_()
    model(x)[0, 2].backward()
    np.testing.assert_allclose(saved, x.grad.abs().sum(dim=1)[0].numpy(), rtol=1e-4, atol=1e-8)


def test_explain_errors(tmp_path: Path, photos: Path, capsys, monkeypatch) -> None:
    cat = str(photos / "cat.png")
    _error(capsys, ["explain", str(tmp_path / "nope.jpg")], "no such file or folder")
    _error(capsys, ["explain", str(photos / "notes.txt")], "cannot read image")
    (tmp_path / "empty").mkdir()
    _error(capsys, ["explain", str(tmp_path / "empty")], "no images")
    _error(capsys, ["explain", cat, "--layer", "_blocks.99"], "no module named '_blocks.99'")
    _error(capsys, ["explain", cat, "--methods", "Grad-CAM+++"], "Unknown method")
    _error(capsys, ["explain", cat, "--model", "resnet9000"], "unknown model 'resnet9000'")
    _error(capsys, ["explain", cat, "--model", "resnet18"], "needs --weights FILE")
    _error(capsys, ["explain", cat, "--model", "missing.pt"], "no such model file")
    _error(capsys, ["explain", cat, "--target", "1000"], "not a class of this model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _error(capsys, ["explain", cat, "--device", "cuda"], "no GPU is available")


@pytest.mark.slow
def test_evaluate_a_folder(tmp_path: Path, photos: Path, offline: torch.nn.Module) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(photos), "--methods", "Grad-CAM", "--metrics", "insertion"]
    assert cli.main([*argv, "deletion", "--image-size", "64", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["item"] for r in records] == ["cat.png", "cup.jpg"]
    x = preprocess(data.chelsea(), size=64).numpy()
    a = explain(offline, x, [285], method="Grad-CAM", layer="head_activation")
    expected = Insertion(disable_warnings=True)(  # steps of 8 rows: 8 steps at 64 x 64
        offline, x, np.array([285]), a_batch=a
    )
    assert records[0]["scores"]["insertion"] == pytest.approx(expected[0], rel=1e-5)
    summary = json.loads((out / "scores.json").read_text())["evaluate"]["Grad-CAM"]
    assert summary["insertion"]["n"] == 2 and len(summary["deletion_curve"]) == 9
    assert {"overall", "insertion", "deletion"} <= summary.keys()
    assert "labels from" in (out / "scores.md").read_text()
    assert (out / "evaluate_insertion.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_with_quantus_own_metrics(tmp_path: Path, photos: Path, offline) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(photos), "--methods", "Layer-CAM", "--limit", "1", "--quiet"]
    argv += ["--metrics", "pixel_flipping", "faithfulness_correlation", "--image-size", "32"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    x = preprocess(data.chelsea(), size=32).numpy()
    a = explain(offline, x, [285], method="Layer-CAM", layer="head_activation")
    # Quantus's curve with 8 rows of pixels a step: 3 x 8 x 32 values of the map broadcast
    # over the channels, 4 steps (the steps' pixels: tests/test_report_card.py)
    curve = ValuePixelFlipping(features_in_step=768, perturb_baseline="black")(
        offline, x, np.array([285]), a_batch=a
    )[0]
    auc = (np.sum(curve) - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1)
    assert record["scores"]["pixel_flipping"] == pytest.approx(auc, rel=1e-6)
    assert -1 <= record["scores"]["faithfulness_correlation"] <= 1


def test_evaluate_and_benchmark_errors(tmp_path: Path, photos: Path, capsys) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("file,class_index\ncat.png,285\n")  # no row for cup.jpg
    _error(capsys, ["evaluate", str(photos), "--labels", str(bad)], "have no label")
    _error(capsys, ["evaluate", str(tmp_path / "none")], "no such file or folder")
    _error(capsys, ["benchmark", "--data", str(tmp_path / "none")], "no such folder")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit with 2 too
        cli.main(["evaluate", str(photos), "--metrics", "accuracy"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_benchmark_command_writes_the_tables(tmp_path: Path, photos: Path) -> None:
    argv = ["benchmark", "--data", str(photos), "--tables", "fdcam-table1", "--cams", "Grad-CAM"]
    out = tmp_path / "tables"
    assert cli.main([*argv, "--image-size", "64", "--out", str(out), "--quiet"]) == 0
    tables = json.loads((out / "tables.json").read_text())
    assert tables["fdcam-table1"]["Grad-CAM"]["insertion"]["n"] == 2


@pytest.mark.parametrize("command", ["explain", "evaluate", "benchmark"])
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: captum-fdcam {command}")


def test_the_console_script_is_installed() -> None:
    """As a user types it (the entry point of setup.cfg)."""
    script = Path(sys.executable).parent / "captum-fdcam"
    run = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("usage: captum-fdcam")
    assert all(command in run.stdout for command in ("explain", "evaluate", "benchmark"))
