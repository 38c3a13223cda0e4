"""The benchmark's output folder: keyed records, resume after a kill, one dataset per
folder, and the command's one-line errors (exit code 2, nothing written)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_fdcam import benchmark, cli, records
from captum_fdcam.benchmark import DEFAULT_OUT, main, read_scores
from captum_fdcam.evaluation import LabelsError, read_labels, summarise

pytest.importorskip("efficientnet_lite_pytorch")

ARGS = ["--tables", "fdcam-table1", "--cams", "Grad-CAM", "--image-size", "64", "--quiet"]
REPOSITORY = Path(benchmark.__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(root: Path, n: int = 4, seed: int = 0, labels: list[str] | None = None) -> Path:
    """n random 80x96 photos img<i>.png with classes 0, 10, 20, ... in labels.csv."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = ["file,class_index"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(
            root / f"img{i}.png"
        )
        rows.append(f"img{i}.png,{labels[i] if labels else 10 * i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("data") / "photos")


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _lines(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted(out.glob("scores-rank*.jsonl"))
        for line in shard.read_text().splitlines()
    ]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[str, str]:
    assert main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, prefix: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{prefix}: error: "), err
    return err


def test_a_line_cut_mid_way_is_dropped_and_computed_again(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    argv = ["--data", str(photos), "--limit", "2", *ARGS]
    _run(capsys, [*argv, "--out", str(whole)])
    shutil.copytree(whole, cut)
    shard = cut / "scores-rank0.jsonl"
    text = shard.read_text()
    shard.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2])  # killed mid-write
    printed, err = _run(capsys, [*argv, "--out", str(cut)])
    assert f"{shard} line 2 was cut mid-way" in err and "computed again" in err
    assert "1 of 2 records to compute" in printed
    assert shard.read_text() == text  # the same record, on a line of its own
    assert (cut / "tables.json").read_text() == (whole / "tables.json").read_text()
    _, err = _run(capsys, [*argv, "--out", str(cut)])
    assert "warning" not in err  # repaired once


def test_records_written_by_several_runs_count_once(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a torchrun run (two shards) followed by a single-process resume of the old
    version left: rank 1's records again in rank 0's file."""
    single, merged = tmp_path / "single", tmp_path / "merged"
    argv = ["--data", str(photos), "--limit", "2", *ARGS]
    _run(capsys, [*argv, "--out", str(single)])
    lines = (single / "scores-rank0.jsonl").read_text().splitlines(keepends=True)
    merged.mkdir()
    shutil.copy(single / "run.json", merged)
    (merged / "scores-rank0.jsonl").write_text("".join(lines[0::2] + lines[1::2]))
    (merged / "scores-rank1.jsonl").write_text("".join(lines[1::2]))
    printed, _ = _run(capsys, [*argv, "--out", str(merged)])
    tables = json.loads((merged / "tables.json").read_text())
    assert tables["fdcam-table1"]["Grad-CAM"]["insertion"]["n"] == 2  # 3 before keys
    assert (
        "0 of 2 records to compute" in printed
        and "1 records are in the scores files twice" in printed
    )
    assert tables == json.loads((single / "tables.json").read_text())
    assert read_scores(merged).duplicates == 1


def test_other_image_size_folder_or_image_content_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _photos(tmp_path / "photos", n=2), tmp_path / "out"
    _run(capsys, ["--data", str(data), "--out", str(out), "--limit", "1", *ARGS])
    before = _files(out)
    # Another size: the version without keys computed nothing and labelled the 64 px
    # scores 96x96.
    argv = ["benchmark", "--data", str(data), "--out", str(out), *ARGS, "--image-size", "96"]
    err = _one_line_error(capsys, cli.main(argv), "captum-fdcam benchmark")
    assert "64x64" in err and "96x96" in err and "(image size differ)" in err and "--out" in err
    assert _files(out) == before
    header = (out / "tables.md").read_text().splitlines()[0]
    assert header.startswith("# Paper tables on photos (EfficientNet-Lite0, 64x64")
    # Another folder: it appended its scores and renamed the tables after itself.
    others = _photos(tmp_path / "others", n=2, seed=1, labels=["1", "2"])
    code = main(["--data", str(others), "--out", str(out), *ARGS])
    err = _one_line_error(capsys, code, benchmark.PROG)
    assert "scores of photos" in err and "on others" in err and "labels file" in err
    assert _files(out) == before
    # The same folder with another photo under the same name.
    Image.new("RGB", (96, 80), "red").save(data / "img0.png")
    err = _one_line_error(
        capsys, main(["--data", str(data), "--out", str(out), *ARGS]), benchmark.PROG
    )
    assert "img0.png is not the image" in err and "file changed" in err
    assert _files(out) == before


def test_a_folder_of_the_older_version_is_refused(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records without keys and no run.json: written by versions whose insertion/deletion
    stepped by 3.6% of the pixels, so they are not this version's scores (they used to be
    taken over when the folder's tables.md named the same data and image size)."""
    out = tmp_path / "out"
    _run(capsys, ["--data", str(photos), "--out", str(out), "--limit", "1", *ARGS])
    (out / "run.json").unlink()
    shard = out / "scores-rank0.jsonl"
    old = [{k: v for k, v in r.items() if k != "key"} for r in _lines(out)]
    shard.write_text("".join(json.dumps(r) + "\n" for r in old))
    legacy = _files(out)
    others = _photos(tmp_path / "others", n=2, seed=1)
    for argv in (
        ["--data", str(others), *ARGS],
        ["--data", str(photos), *ARGS, "--image-size", "96"],
        ["--data", str(photos), *ARGS, "--limit", "2"],
    ):
        err = _one_line_error(capsys, main([*argv, "--out", str(out)]), benchmark.PROG)
        assert "older version" in err and "3.6%" in err and "pass another --out" in err
        assert _files(out) == legacy


def test_tables_only_writes_the_tables_of_every_record_and_computes_nothing(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a stopped run leaves: records appended after the last tables were written."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    argv = ["--data", str(photos), *ARGS]
    _run(capsys, [*argv, "--limit", "3", "--out", str(whole)])
    _run(capsys, [*argv, "--limit", "1", "--out", str(stopped)])
    shutil.copy(whole / "scores-rank0.jsonl", stopped)  # 2 records more, tables of 1
    written = ["tables.json", "tables.md", "paired.json", "paired.md"]
    assert [(stopped / f).read_bytes() != (whole / f).read_bytes() for f in written] == [
        True,
        True,
        False,  # one method: no pairs
        False,
    ]
    scores = _lines(stopped)
    # Rank 1 of a run still appending: refused, nothing rewritten.
    with records.folder_lock(stopped, rank=1):
        code = main([*argv, "--out", str(stopped), "--tables-only"])
        assert "is being written by another run" in _one_line_error(capsys, code, benchmark.PROG)
    assert (stopped / "tables.json").read_bytes() != (whole / "tables.json").read_bytes()
    printed, _ = _run(capsys, [*argv, "--limit", "1", "--out", str(stopped), "--tables-only"])
    assert "records to compute" not in printed and printed.rstrip().endswith(f"wrote {stopped}")
    for name in written:
        assert (stopped / name).read_bytes() == (whole / name).read_bytes(), name
    tables = json.loads((stopped / "tables.json").read_text())
    assert tables["fdcam-table1"]["Grad-CAM"]["insertion"]["n"] == 3
    assert _lines(stopped) == scores
    assert not list(stopped.glob(".captum-fdcam-rank*.lock"))


def test_the_committed_results_read_back_to_their_tables() -> None:
    folder = REPOSITORY / "benchmarks" / "results" / "paper_tables"
    if not (folder / "tables.json").is_file():
        pytest.skip("no committed results in this checkout")
    scores = read_scores(folder)
    assert not scores.dropped and scores.records
    records = sorted(
        scores.records,
        key=lambda r: (r["table"], r["method"], r["item"], benchmark._identity(r.get("key"))),
    )
    # compared as JSON: a count of 1 has a NaN CI, and NaN != NaN in a dict comparison
    expected = json.loads((folder / "tables.json").read_text())
    assert json.dumps(summarise(records), sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_the_default_out_the_printed_tables_and_the_progress_bar(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The default --out was the repository's committed results folder."""
    assert _parse(["--data", "x"]).out == DEFAULT_OUT == Path("captum-fdcam-benchmark")
    monkeypatch.chdir(tmp_path)
    printed, err = _run(capsys, ["--data", str(photos), "--limit", "2", *ARGS[:-1]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captum-fdcam-benchmark"]
    out = tmp_path / "captum-fdcam-benchmark"
    assert (out / "tables.md").read_text() in printed
    assert printed.rstrip().endswith("wrote captum-fdcam-benchmark")
    bar = [line for line in err.replace("\r", "\n").splitlines() if "2/2" in line][-1]
    assert bar.startswith("(image, method) records: 100%"), bar
    assert "record/s" in bar or "s/record" in bar, bar


def _benchmark_parser() -> argparse.ArgumentParser:
    return cli.build_parser()._subparsers._group_actions[0].choices["benchmark"]


def _parse(argv: list[str]) -> argparse.Namespace:
    return _benchmark_parser().parse_args(argv)


def test_every_option_shows_its_default() -> None:
    parser = _benchmark_parser()
    for action in parser._actions[1:]:  # the first is --help
        assert action.help and ("default" in action.help or "required" in action.help), action


def test_importing_the_module_imports_nothing_heavy() -> None:
    """``captum-fdcam --help`` imports the benchmark for its options: the module is
    loaded here on its own, without the package's ``__init__``."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {benchmark.__file__!r})\n"
        "module = sys.modules['b'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "heavy = {'torch', 'torchvision', 'captum', 'quantus', 'matplotlib', 'numpy', 'PIL'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


# ------------------------------------------------------------------------ mistakes


def _labelled(root: Path, label: str) -> Path:
    data = _photos(root, n=1)
    (data / "labels.csv").write_text(f"file,class_index\nimg0.png,{label}\n")
    return data


MISTAKES = {
    "limit 0": (["--limit", "0"], "--limit must be at least 1"),
    "image size 0": (["--image-size", "0"], "--image-size must be at least 32"),
    "negative image size": (["--image-size", "-8"], "--image-size must be at least 32"),
    "image size too small": (["--image-size", "16"], "--image-size must be at least 32"),
    "mosaics 0": (["--tables", "gridpg", "--mosaics", "0"], "--mosaics must be at least 1"),
    "3 classes for gridpg": (["--tables", "gridpg", "--limit", "3"], "at least 4 classes"),
    "label not an integer": (["labels:abc"], "'abc' is not an integer"),
    "label not whole": (["labels:2.5"], "'2.5' is not an integer"),
    "label too large": (["labels:1000"], "out of range (0-999)"),
    "negative label": (["labels:-1"], "out of range (0-999)"),
    "no folder": (["data:none"], "no such folder"),
    "empty folder": (["data:empty"], "no images in"),
    "hidden files only": (["data:hidden"], "no images in"),
    "tables of no records": (["--tables-only"], "--tables-only: no records in"),
}


@pytest.mark.parametrize("entry", ["captum-fdcam", "python -m"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_one_line_with_exit_code_2_and_nothing_written(
    mistake: str, entry: str, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, message = MISTAKES[mistake]
    data = photos
    if extra[0].startswith("labels:"):
        data, extra = _labelled(tmp_path / "labelled", extra[0].removeprefix("labels:")), []
    elif extra[0].startswith("data:"):
        data = tmp_path / "folder"
        if extra[0] != "data:none":
            data.mkdir()
        if extra[0] == "data:hidden":
            (data / ".img0.png").write_bytes(b"not an image")
            (data / "sub").mkdir()
            shutil.copy(photos / "img0.png", data / "sub")
        extra = []
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), *ARGS, *extra]
    if entry == "captum-fdcam":
        err = _one_line_error(capsys, cli.main(["benchmark", *argv]), "captum-fdcam benchmark")
    else:
        err = _one_line_error(capsys, main(argv), benchmark.PROG)
    assert message in err
    assert not out.exists()


def test_argument_errors_of_python_m_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", "x", "--limit", "two"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--limit: invalid int value: 'two'" in err, err


def test_hidden_files_and_sub_folders_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "photos", n=1)
    (data / ".DS_Store").write_bytes(b"\0\1")
    (data / "._img0.png").write_bytes(b"AppleDouble")
    (data / "sub").mkdir()
    (data / "sub" / "notes.txt").write_text("x")
    _run(capsys, ["--data", str(data), "--out", str(tmp_path / "out"), *ARGS])


def test_read_labels_refuses_what_is_not_a_class_index(tmp_path: Path) -> None:
    data = _labelled(tmp_path / "a", "x1")
    with pytest.raises(LabelsError, match="line 2: class_index 'x1' is not an integer"):
        read_labels(data)
    data = _labelled(tmp_path / "b", "7")
    assert read_labels(data, num_classes=8) == [(data / "img0.png", 7)]
    with pytest.raises(ValueError, match=r"class_index 7 is out of range \(0-4\)"):
        read_labels(data, num_classes=5)  # a ValueError: captum-fdcam evaluate's "bad labels"
    (data / "labels.csv").write_text("name,class\nimg0.png,1\n")
    with pytest.raises(LabelsError, match="no column file or class_index"):
        read_labels(data)
