"""The commands under faults and odd inputs: a full disk, an output folder that cannot
be created, Ctrl-C, two runs on one folder, labels files that leave photos out or carry
a byte-order mark, EXIF-rotated photos, a model on the ``meta`` device; and the help a
mistake gets (close matches, the valid choices)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captum_fdcam import cli
from captum_fdcam.errors import DeviceError
from captum_fdcam.images import preprocess, read_image
from captum_fdcam.records import folder_lock, parse

pytest.importorskip("efficientnet_lite_pytorch")
pytestmark = pytest.mark.usefixtures("one_thread")

BENCHMARK = ["--tables", "fdcam-table1", "--cams", "Grad-CAM", "--image-size", "64"]


def _photos(root: Path, n: int = 3, labelled: int | None = None, bom: bool = False) -> Path:
    """n random photos img<i>.png; the first ``labelled`` (all) in labels.csv."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,class_index"]
    for i in range(n):
        pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        if labelled is None or i < labelled:
            rows.append(f"img{i}.png,{10 * i}")
    text = "\n".join(rows) + "\n"
    (root / "labels.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return root


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _records(out: Path) -> list[dict]:
    lines = [
        line
        for shard in sorted(out.glob("scores*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    assert all(parse(line) is not None for line in lines), "a partial line was left"
    return [json.loads(line) for line in lines]


def _under_file_size_limit(argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a fresh process that may write no file beyond ``limit`` bytes: the
    kernel fails the write that would pass it (EFBIG), as a full disk fails one."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from captum_fdcam import cli\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env
    )


# ------------------------------------------------------------------- a full disk


@pytest.mark.slow
def test_a_full_disk_stops_the_benchmark_in_one_line_and_the_same_command_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert (
        cli.main(["benchmark", "--data", str(data), *BENCHMARK, "--out", str(whole), "--quiet"])
        == 0
    )
    capsys.readouterr()
    record = (whole / "scores-rank0.jsonl").read_text().splitlines()[0]
    # Room for one record and a half: the second record's write fails mid-line.
    limit = int(len(record) * 1.5)
    argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(cut), "--quiet"]
    run = _under_file_size_limit(argv, limit, tmp_path)
    assert run.returncode == 2, run.stderr
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "File too large" in err[0] and "1 of 3 new records kept" in err[0], err[0]
    assert "run the same command again" in err[0]
    assert len(_records(cut)) == 1  # the last complete record, and no part of the next
    assert not list(cut.glob(".*"))  # no lock file, no temporary file left
    assert cli.main(argv) == 0  # resumes
    assert "2 of 3 records to compute" in capsys.readouterr().out
    assert (cut / "tables.json").read_text() == (whole / "tables.json").read_text()


@pytest.mark.slow
def test_a_full_disk_stops_explain_in_one_line_with_every_file_whole(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = ["explain", str(photo), "--methods", "Grad-CAM", "--out", str(out), "--quiet"]
    # The (224, 224) float32 map fits (200 KB); the figure does not.
    run = _under_file_size_limit(argv, 210_000, tmp_path)
    assert run.returncode == 2, run.stderr
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot write to" in err[0] and "File too large" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["photo.grad-cam.npy"]  # nothing partial
    assert np.load(out / "photo.grad-cam.npy").shape == (224, 224)


def test_an_out_folder_that_cannot_be_created_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    # /proc takes no new folders, even from root (for whom os.access always says yes).
    out = "/proc/captum-fdcam-test/out"
    for command in (["explain", str(photo)], ["evaluate", str(photo)]):
        argv = [*command, "--methods", "Grad-CAM", "--out", out, "--quiet"]
        assert cli.main(argv) == 2
        err = _one_line(capsys)
        assert err.startswith(f"captum-fdcam {command[0]}: error:") and out in err, err


# ----------------------------------------------------------------------- Ctrl-C


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "stop",
    [_raise_keyboard_interrupt, lambda: os.kill(os.getpid(), signal.SIGTERM)],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stopped_run_says_what_was_kept_and_the_same_command_resumes(
    stop: Callable[[], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C, or SIGTERM (a batch scheduler's time limit, ``kill``): the records done
    are kept, the lock is released, the process's SIGTERM handler is given back, and
    the same command does the rest."""
    from captum_fdcam.evaluation import scoring

    data = _photos(tmp_path / "data")
    out = tmp_path / "out"
    score, calls = scoring.score, []

    def stopped_on_the_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            stop()
        return score(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", stopped_on_the_second)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(out), "--quiet"]
    assert cli.main(argv) == 130
    err = _one_line(capsys)
    assert "interrupted: 1 of 3 new records kept" in err and "run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) is before
    assert len(_records(out)) == 1 and not list(out.glob(".*lock"))
    monkeypatch.setattr(scoring, "score", score)
    assert cli.main(argv) == 0
    assert len(_records(out)) == 3


def test_fast_cpu_is_part_of_the_runs_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fast-cpu scores equal the default's up to float rounding, and a folder
    computed one way is not resumed the other."""
    data = _photos(tmp_path / "data", n=2)
    outs = {flag: tmp_path / f"out{flag}" for flag in ("", "--fast-cpu")}
    for flag, out in outs.items():
        argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(out), "--quiet"]
        assert cli.main([*argv, *([flag] if flag else [])]) == 0
    fingerprints = {
        flag: json.loads((out / "run.json").read_text())["fingerprint"]
        for flag, out in outs.items()
    }
    assert "inference" not in fingerprints[""]  # folders run before the option stay valid
    assert fingerprints["--fast-cpu"].pop("inference") == "fast-cpu"
    assert fingerprints["--fast-cpu"] == fingerprints[""]
    scores = [
        {(r["method"], r["item"]): r["scores"] for r in _records(out)} for out in outs.values()
    ]
    assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 2
    for key, values in scores[0].items():
        for metric in ("insertion", "deletion"):
            assert values[metric] == pytest.approx(scores[1][key][metric], abs=1e-5)
    capsys.readouterr()
    argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(outs[""]), "--quiet"]
    assert cli.main([*argv, "--fast-cpu"]) == 2
    assert "inference (--fast-cpu) default vs fast-cpu" in _one_line(capsys)


def test_ctrl_c_during_explain_keeps_the_images_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from captum_fdcam.evaluation import explainer

    data = _photos(tmp_path / "data")
    explain, calls = explainer.explain, []

    def interrupted_on_the_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return explain(*args, **kwargs)

    monkeypatch.setattr(explainer, "explain", interrupted_on_the_second)
    out = tmp_path / "out"
    assert (
        cli.main(["explain", str(data), "--methods", "Grad-CAM", "--out", str(out), "--quiet"])
        == 130
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kept the files of 1 of 3 images" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["img0.grad-cam.npy", "img0.png"]


# --------------------------------------------------------------- two runs, one out


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(out), "--quiet"]
    with folder_lock(out):  # a run that holds the folder
        assert cli.main(argv) == 2
        err = _one_line(capsys)
        assert "is being written by another run" in err and f"pid {os.getpid()}" in err
        assert not list(out.glob("scores*"))
        photo = str(data / "img0.png")
        argv_evaluate = ["evaluate", photo, "--methods", "Grad-CAM", "--out", str(out)]
        assert cli.main([*argv_evaluate, "--quiet"]) == 2
        assert "is being written by another run" in _one_line(capsys)
    assert cli.main(argv) == 0  # released with its run
    assert not list(out.glob(".*lock"))


def test_the_lock_is_the_kernels_and_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import os, sys, pathlib\n"
        "from captum_fdcam.records import folder_lock\n"
        f"with folder_lock(pathlib.Path({str(tmp_path)!r})):\n"
        "    os._exit(0)  # killed: no clean-up runs\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with folder_lock(tmp_path):  # the stale file does not hold the folder
        pass


# ------------------------------------------------------------------------ labels


def test_an_unlabelled_photo_is_an_error_naming_it_or_left_out_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data", labelled=2)
    out = tmp_path / "out"
    argv = ["benchmark", "--data", str(data), *BENCHMARK, "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    err = _one_line(capsys)
    assert "1 images of" in err and "img2.png" in err and "--labelled-only" in err
    assert not out.exists()
    assert cli.main([*argv, "--labelled-only"]) == 0
    assert "1 images of" in capsys.readouterr().out
    tables = json.loads((out / "tables.json").read_text())
    assert tables["fdcam-table1"]["Grad-CAM"]["insertion"]["n"] == 2


def test_a_labels_file_with_a_byte_order_mark_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data", n=2, bom=True)
    out = tmp_path / "out"
    assert (
        cli.main(["benchmark", "--data", str(data), *BENCHMARK, "--out", str(out), "--quiet"]) == 0
    )
    argv = ["evaluate", str(data / "img1.png"), "--methods", "Grad-CAM", "--metrics", "insertion"]
    assert cli.main([*argv, "--out", str(tmp_path / "e"), "--image-size", "64", "--quiet"]) == 0
    record = _records(tmp_path / "e")[0]
    assert record["key"]["item"]["label"] == 10  # the dataset's labels.csv, for one photo


def test_evaluate_resumes_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _photos(tmp_path / "data", n=2)
    out = tmp_path / "out"
    argv = ["evaluate", str(data), "--methods", "Grad-CAM", "--metrics", "insertion"]
    argv += ["--out", str(out), "--image-size", "64", "--quiet"]
    assert cli.main([*argv, "--limit", "1"]) == 0
    first = _records(out)
    assert len(first) == 1
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "1 of 2 records are already in" in capsys.readouterr().out
    assert _records(out)[0] == first[0] and len(_records(out)) == 2
    other = [*argv[:-3], "--image-size", "96", "--quiet"]
    assert cli.main(other) == 2
    assert "holds scores of another run (image_size differ)" in _one_line(capsys)


# -------------------------------------------------------------------- images


def test_an_exif_rotated_photo_is_read_as_displayed(tmp_path: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "phone.jpg")
    assert image.size == (30, 50)  # width, height: upright, as displayed
    with Image.open(tmp_path / "phone.jpg") as stored:
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(upright))
    assert torch.equal(preprocess(image, size=32), preprocess(upright, size=32))


# ----------------------------------------------------------------- meta device


def test_a_model_or_inputs_on_the_meta_device_is_the_librarys_error() -> None:
    from torchvision.models import resnet18

    from captum_fdcam import LayerFDCam, LayerGradCam, PropagationLRP
    from captum_fdcam.evaluation import explain

    model = resnet18().eval().to("meta")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(DeviceError, match=r"'conv1\.weight' is on the meta device"):
        LayerGradCam(model, model.layer4).attribute(x, target=1)
    with pytest.raises(DeviceError, match="meta device"):
        LayerFDCam(model, model.layer4).attribute(x, target=1)
    with pytest.raises(DeviceError, match="meta device"):
        explain(model, x.numpy(), [1], method="Grad-CAM", layer="layer4")
    with pytest.raises(DeviceError, match="meta device"):
        PropagationLRP(model).attribute(x, target=1)
    real = resnet18().eval()
    with pytest.raises(DeviceError, match=r"inputs\[0\] is on the meta device"):
        LayerGradCam(real, real.layer4).attribute(x.to("meta"), target=1)


# -------------------------------------------------------- mistakes that help


def test_mistakes_suggest_close_matches_and_list_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    base = ["explain", str(photo), "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main([*base, "--methods", "grad-cam"]) == 2
    assert "Did you mean 'Grad-CAM'?" in _one_line(capsys)
    assert cli.main([*base, "--layer", "head_activaton"]) == 2
    assert "Did you mean 'head_activation'?" in _one_line(capsys)
    assert cli.main([*base, "--layer", "layer4"]) == 2
    err = _one_line(capsys)
    assert "no module named 'layer4'" in err and "Its top-level modules: " in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--method", "Grad-CAM", "--targt", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--targt: did you mean --target?" in err
    assert "(see 'captum-fdcam explain --help')" in err


def test_evaluate_help_prints_percent_signs_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "95% CIs" in text and "%%" not in text


def test_the_benchmark_default_out_is_ignored_by_git() -> None:
    from captum_fdcam.benchmark import DEFAULT_OUT

    root = Path(__file__).resolve().parents[1]
    patterns = (root / ".gitignore").read_text().splitlines()
    assert f"{DEFAULT_OUT}/" in patterns or f"/{DEFAULT_OUT}/" in patterns


def test_the_demo_names_no_temporary_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from captum_fdcam import demo

    monkeypatch.setattr(demo, "demo_methods", lambda: ["Grad-CAM"])
    figure = tmp_path / "demo.png"
    assert demo.main(["--out", str(figure)]) == figure and figure.is_file()
    printed = capsys.readouterr().out
    assert "/tmp" not in printed.replace(str(tmp_path), "") and f"Wrote {figure}" in printed
