"""The paper-table command: resume, and torchrun sharding that merges to the same tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_fdcam.benchmark import jobs_for, main
from captum_fdcam.evaluation import bootstrap_ci, read_labels

pytest.importorskip("efficientnet_lite_pytorch")

ARGS = ["--tables", "fdcam-table1", "--cams", "Grad-CAM", "--image-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = ["file,class_index,name"]
    for i in range(4):
        pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,{10 * i},thing {i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _lines(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted(out.glob("scores-rank*.jsonl"))
        for line in shard.read_text().splitlines()
    ]


@pytest.mark.slow
def test_resumes_where_it_stopped(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    main(["--data", str(folder), "--out", str(out), "--limit", "2", *ARGS])
    assert len(_lines(out)) == 2
    main(["--data", str(folder), "--out", str(out), "--limit", "3", *ARGS])
    items = [r["item"] for r in _lines(out)]
    assert sorted(items) == ["img0.png", "img1.png", "img2.png"]  # nothing done twice
    tables = json.loads((out / "tables.json").read_text())
    row = tables["fdcam-table1"]["Grad-CAM"]
    scores = [r["scores"] for r in _lines(out)]
    assert row["insertion"]["n"] == 3
    assert row["overall"]["mean"] == pytest.approx(
        np.mean([s["insertion"] - s["deletion"] for s in scores])
    )
    assert (out / "tables.md").read_text().startswith("# Paper tables")
    assert (out / "fdcam-table1_insertion.png").is_file()


@pytest.mark.slow
def test_torchrun_shards_merge_to_the_single_process_tables(folder: Path, tmp_path: Path) -> None:
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    # Both runs in fresh processes with one thread each (torchrun's default), so
    # they compute bit for bit the same maps.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    module = ["-m", "captum_fdcam.benchmark", "--data", str(folder), *ARGS]
    subprocess.run(
        [sys.executable, *module, "--out", str(single)], check=True, env=env, timeout=300
    )
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [sys.executable, *launcher, *module, "--out", str(sharded)]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    assert sorted(p.name for p in sharded.glob("scores-rank*.jsonl")) == [
        "scores-rank0.jsonl",
        "scores-rank1.jsonl",
    ]
    assert json.loads((sharded / "tables.json").read_text()) == json.loads(
        (single / "tables.json").read_text()
    )
    # A single process resuming the two ranks' folder finds every record in one of the
    # two files (it used to read only its own and compute rank 1's images again: n = 6).
    shards = {p.name: p.read_text() for p in sharded.glob("scores-rank*.jsonl")}
    main(["--data", str(folder), "--out", str(sharded), *ARGS])
    assert {p.name: p.read_text() for p in sharded.glob("scores-rank*.jsonl")} == shards
    assert json.loads((sharded / "tables.json").read_text()) == json.loads(
        (single / "tables.json").read_text()
    )


def test_labels_and_jobs(folder: Path, tmp_path: Path) -> None:
    assert [p.name for p, _ in read_labels(folder)] == [f"img{i}.png" for i in range(4)]
    with pytest.raises(FileNotFoundError, match="labels"):
        read_labels(tmp_path)
    names = [j.job.name for j in jobs_for(("fgcam-input",), ("Grad-CAM", "Score-CAM"))]
    assert names == [
        "LRP",
        "CLRP",
        "SGLRP",
        "FG-Grad-CAM",
        "FG-Grad-CAM-D",
        "FG-Score-CAM",
        "FG-Score-CAM-D",
    ]


def test_bootstrap_interval_contains_the_mean() -> None:
    values = np.random.default_rng(1).normal(2.0, 1.0, 200)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high and high - low < 0.5
