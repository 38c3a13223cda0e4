"""Reproduces the papers' evaluation tables on a folder of labelled images.

::

    python -m captum_fdcam.benchmark --data ../shared/data/imagenet-sample \\
        --out benchmarks/results/paper_tables --limit 20
    torchrun --nproc_per_node 4 -m captum_fdcam.benchmark --data ... --out ...

Tables (``--tables``, default all):

* ``fdcam-table1``: insertion, deletion and overall (ins - del) AUC of every CAM at
  the model's last layer (FD-CAM Table I).
* ``fdcam-ablation``: FD-CAM without grouping, switch-off only, and the combination
  variants (FD-CAM Tables III and IV).
* ``gridpg``: grid pointing game on 2x2 mosaics of confidently classified images,
  the class discriminability of FD-CAM's Table II without box annotations.
* ``fgcam-layers``: average drop / increase and insertion / deletion at three
  depths, Grad-CAM, Score-CAM and Layer-CAM at the layer against FG-Grad-CAM and
  FG-Score-CAM with and without denoising (FG-CAM Tables 1 and 2).
* ``fgcam-input``: the same metrics at the input against LRP, CLRP and SGLRP
  (FG-CAM Tables 4 and 5).

Every score of every image is appended to ``scores-rank<r>.jsonl`` as soon as it is
known, so an interrupted run resumes where it stopped. Under ``torchrun`` each rank
takes every ``world_size``-th image (gloo backend, CPU or GPU) and rank 0 merges the
files and writes ``tables.json``, ``tables.md`` and the curve plots. Means come with
bootstrap 95% confidence intervals over images.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import quantus
import torch
from captum.attr import LayerAttribution
from PIL import Image
from torch import nn

from captum_fdcam import METHODS, LayerFGCam
from captum_fdcam.evaluation import (
    AverageDrop,
    AverageIncrease,
    Deletion,
    GridPointingGame,
    Insertion,
    curve_auc,
    explain,
    find_layer,
    grid_mosaics,
)

TABLES = ("fdcam-table1", "fdcam-ablation", "gridpg", "fgcam-layers", "fgcam-input")
CAMS = (
    "Grad-CAM",
    "Grad-CAM++",
    "XGrad-CAM",
    "Layer-CAM",
    "Score-CAM",
    "Ablation-CAM",
    "Group-CAM",
    "FD-CAM",
)
FD_ABLATIONS = {
    "FD-CAM": {},
    "FD-CAM, no grouping": {"group_fraction": None},
    "FD-CAM, switch-off only": {"switch": "off"},
    "FD-CAM, rho = a s": {"combination": "linear", "bias": 0.0},
    "FD-CAM, rho = a exp(s)": {"combination": "exp", "bias": 0.0},
}
#: EfficientNet-Lite0's three depths for the FG-CAM tables (56, 28 and 14 pixels
#: at 224x224), standing in for VGG16-BN's Layer13/23/33 of the paper.
DEPTHS = {"depth-56": "_blocks.2", "depth-28": "_blocks.4", "depth-14": "_blocks.10"}
BASE_LAYER = "head_activation"


@dataclass(frozen=True)
class Job:
    """One attribution method of one table, at one layer, scored by some metrics."""

    table: str
    name: str
    method: str
    layer: str | None
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ("insertion", "deletion")
    fg_target: str | None = None  # LayerFGCam's target layer


def jobs_for(tables: tuple[str, ...], cams: tuple[str, ...]) -> list[Job]:
    jobs: list[Job] = []
    if "fdcam-table1" in tables:
        jobs += [Job("fdcam-table1", m, m, BASE_LAYER) for m in cams]
    if "fdcam-ablation" in tables:
        jobs += [
            Job("fdcam-ablation", n, "FD-CAM", BASE_LAYER, kw) for n, kw in FD_ABLATIONS.items()
        ]
    if "gridpg" in tables:
        jobs += [Job("gridpg", m, m, BASE_LAYER, metrics=("gridpg",)) for m in cams]
    faithful = ("average_drop", "average_increase", "insertion", "deletion")
    if "fgcam-layers" in tables:
        for depth, layer in DEPTHS.items():
            table = f"fgcam-layers/{depth}"
            for m in ("Grad-CAM", "Score-CAM", "Layer-CAM"):
                jobs.append(Job(table, m, m, layer, metrics=faithful))
            for base in ("Grad-CAM", "Score-CAM"):
                for denoise in (False, True):
                    name = f"FG-{base}" + ("-D" if denoise else "")
                    kw = {"denoise": True} if denoise else {}
                    jobs.append(Job(table, name, base, BASE_LAYER, kw, faithful, fg_target=layer))
    if "fgcam-input" in tables:
        for m in ("PropagationLRP", "CLRP", "SGLRP"):
            jobs.append(Job("fgcam-input", m.replace("Propagation", ""), m, None, {}, faithful))
        for base in ("Grad-CAM", "Score-CAM"):
            for denoise in (False, True):
                name = f"FG-{base}" + ("-D" if denoise else "")
                kw = {"denoise": True} if denoise else {}
                jobs.append(Job("fgcam-input", name, f"FG-{base}", BASE_LAYER, kw, faithful))
    return [j for j in jobs if _uses_allowed_cams(j, cams)]


def _uses_allowed_cams(job: Job, cams: tuple[str, ...]) -> bool:
    base = job.method.removeprefix("FG-")
    return base not in CAMS or base in cams


# ------------------------------------------------------------------------- data


def read_labels(folder: Path, labels: Path | None = None) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from ``labels.csv`` (columns ``file`` and
    ``class_index``; any other columns are ignored), sorted by file name."""
    labels = labels or folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"No labels file {labels}: a CSV with columns file,class_index.")
    with labels.open(newline="") as handle:
        rows = [(folder / r["file"], int(r["class_index"])) for r in csv.DictReader(handle)]
    missing = [str(p) for p, _ in rows if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {labels} are missing: {missing[:3]}"
        )
    return sorted(rows, key=lambda r: r[0].name)


def load_image(path: Path, size: int) -> torch.Tensor:
    from captum_fdcam.models import preprocess

    with Image.open(path) as image:
        return preprocess(image, size=size)


# ------------------------------------------------------------------- evaluation


def _metric(name: str, table: str, size: int = 224) -> Any:
    common = {"disable_warnings": True}
    # FG-CAM's input-layer tables keep only positive pixels when fewer than half are.
    keep_half = {"positive_only": table == "fgcam-input", **common}
    if name == "insertion":
        return Insertion(pixels_per_step=0.036, **common)
    if name == "deletion":
        return Deletion(pixels_per_step=0.036, **common)
    if name == "average_drop":
        return AverageDrop(**keep_half)
    if name == "average_increase":
        return AverageIncrease(**keep_half)
    if name == "gridpg":
        return GridPointingGame(**common)
    if name == "pixel_flipping":  # Quantus's own; score_job takes the AUC of its curve
        step = size * 8 if size % 8 == 0 else size  # 28 steps at 224 x 224
        return quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", **common)
    if name == "faithfulness_correlation":  # Quantus's own (Bhatt et al., 2020)
        return quantus.FaithfulnessCorrelation(
            subset_size=size, return_aggregate=False, abs=False, **common
        )
    raise ValueError(f"Unknown metric {name!r}.")


def attribution(model: nn.Module, job: Job, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The job's (1, 1, H, W) map of image ``x`` for class ``y``."""
    if job.fg_target is not None:
        base = METHODS[job.method](model, find_layer(model, job.layer))
        fg = LayerFGCam(base, find_layer(model, job.fg_target), **job.method_kwargs)
        maps = fg.attribute(torch.from_numpy(x), target=torch.from_numpy(y), relu_attributions=True)
        return LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear").numpy()
    return explain(model, x, y, method=job.method, layer=job.layer, method_kwargs=job.method_kwargs)


def score_job(
    model: nn.Module, job: Job, x: np.ndarray, y: np.ndarray, s: np.ndarray | None
) -> dict[str, Any]:
    a = attribution(model, job, x, y)
    if not np.isfinite(a).all():
        raise FloatingPointError(f"{job.name} gave a non-finite map.")
    out: dict[str, Any] = {}
    if float(a.max()) == float(a.min()):
        # Quantus refuses constant maps. One ranks pixels by index (stable order),
        # which a decreasing ramp reproduces; the record says so.
        a = np.linspace(1.0, 0.5, a.size, dtype=np.float32).reshape(a.shape)
        out["constant_map"] = 1.0
    for name in job.metrics:
        metric = _metric(name, job.table, x.shape[-1])
        score = metric(model, x, y, a_batch=a, s_batch=s)
        if name == "pixel_flipping":
            # Quantus's return_auc_per_sample calls np.trapz, which numpy 2.4 removed.
            out[name] = curve_auc(np.asarray(score[0], dtype=np.float64))
        else:
            out[name] = float(score[0])
        if hasattr(metric, "curves"):
            out[f"{name}_curve"] = [float(v) for v in metric.curves[0]]
    return out


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per table, method and metric: mean, 95% CI and count; the overall AUC too."""
    grouped: dict[tuple[str, str], dict[str, list[float]]] = {}
    curves: dict[tuple[str, str, str], list[list[float]]] = {}
    for r in records:
        slot = grouped.setdefault((r["table"], r["method"]), {})
        for key, value in r["scores"].items():
            if key.endswith("_curve"):
                curves.setdefault((r["table"], r["method"], key), []).append(value)
            else:
                slot.setdefault(key, []).append(value)
        if {"insertion", "deletion"} <= r["scores"].keys():
            slot.setdefault("overall", []).append(
                r["scores"]["insertion"] - r["scores"]["deletion"]
            )
    tables: dict[str, Any] = {}
    for (table, method), metrics in grouped.items():
        row = tables.setdefault(table, {}).setdefault(method, {})
        for key, values in metrics.items():
            array = np.asarray(values, dtype=np.float64)
            low, high = bootstrap_ci(array)
            row[key] = {"mean": float(array.mean()), "ci95": [low, high], "n": len(array)}
        for (t, m, key), items in curves.items():
            if t == table and m == method:
                length = min(len(c) for c in items)
                row[key] = np.mean([c[:length] for c in items], axis=0).tolist()
    return tables


def _count(row: dict[str, Any]) -> int:
    return max(c["n"] for k, c in row.items() if not k.endswith("_curve"))


def markdown(tables: dict[str, Any], header: str) -> str:
    lines = [header, ""]
    for table, rows in tables.items():
        keys = [k for k in next(iter(rows.values())) if not k.endswith("_curve")]
        lines += [f"## {table}", "", "| method | " + " | ".join(keys) + " |"]
        lines.append("|---|" + "---:|" * len(keys))
        for method, row in rows.items():
            cells = []
            for k in keys:
                cell = row.get(k)
                if cell is None:
                    cells.append("—")
                else:
                    low, high = cell["ci95"]
                    cells.append(f"{cell['mean']:.4f} [{low:.4f}, {high:.4f}]")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        counts = {m: _count(r) for m, r in rows.items()}
        n = max(counts.values())
        fewer = [f"{m}: {c}" for m, c in counts.items() if c < n]
        note = f"; fewer images for {', '.join(fewer)}" if fewer else ""
        lines += ["", f"n = {n}{note} (mean [bootstrap 95% CI])", ""]
    return "\n".join(lines)


def plot_curves(tables: dict[str, Any], out: Path) -> list[Path]:
    """Writes each table's mean insertion and deletion curves, one PNG per table and kind."""
    from captum_fdcam.visualization import curves_figure

    written = []
    for table, rows in tables.items():
        for kind in ("insertion", "deletion"):
            series = {m: r[f"{kind}_curve"] for m, r in rows.items() if f"{kind}_curve" in r}
            if series:
                path = out / f"{table.replace('/', '_')}_{kind}.png"
                xlabel = f"fraction of pixels {'inserted' if kind == 'insertion' else 'deleted'}"
                written.append(curves_figure(series, path, xlabel, title=f"{table}: {kind}"))
    return written


# ------------------------------------------------------------------------- run


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _done(path: Path) -> set[tuple[str, str, str]]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            done.add((r["table"], r["method"], r["item"]))
    return done


def _progress(total: int, rank: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"rank {rank}", disable=not enabled, position=rank)


def _items(
    model: nn.Module, data: list[tuple[Path, int]], size: int, with_grid: bool, n_mosaics: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, bool]]:
    """(item id, x, y, s, is_grid) for every image, then every mosaic cell."""
    images = torch.cat([load_image(p, size) for p, _ in data])  # decoded once, used twice
    for (path, label), image in zip(data, images, strict=True):
        yield path.name, image[None].numpy(), np.array([label]), None, False
    if with_grid:
        labels = torch.tensor([label for _, label in data])
        mosaics = grid_mosaics(model, images, labels, n_mosaics=n_mosaics)
        for i in range(len(mosaics.y_batch)):
            yield (
                f"mosaic{i // 4}-cell{i % 4}",
                mosaics.x_batch[i : i + 1],
                mosaics.y_batch[i : i + 1],
                mosaics.s_batch[i : i + 1],
                True,
            )


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    rank, world = _distributed()
    torch.manual_seed(0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from captum_fdcam.models import efficientnet_lite0

    model = efficientnet_lite0(pretrained=True)
    data = read_labels(args.data, args.labels)[: args.limit]
    jobs = jobs_for(tuple(args.tables), tuple(args.cams))
    grid_jobs = [j for j in jobs if "gridpg" in j.metrics]
    image_jobs = [j for j in jobs if "gridpg" not in j.metrics]
    items = list(_items(model, data, args.image_size, bool(grid_jobs), args.mosaics))
    mine = items[rank::world]
    path = out / f"scores-rank{rank}.jsonl"
    done = _done(path)
    todo = [
        (item, job)
        for item in mine
        for job in (grid_jobs if item[4] else image_jobs)
        if (job.table, job.name, item[0]) not in done
    ]
    with path.open("a") as handle, _progress(len(todo), rank, not args.quiet) as bar:
        for (item_id, x, y, s, _), job in todo:
            scores = score_job(model, job, x, y, s)
            record = {"table": job.table, "method": job.name, "item": item_id, "scores": scores}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            bar.update(1)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None
    records = []
    for shard in sorted(out.glob("scores-rank*.jsonl")):
        records += [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: (r["table"], r["method"], r["item"]))
    tables = summarise(records)
    (out / "tables.json").write_text(json.dumps(tables, indent=1))
    header = (
        f"# Paper tables on {args.data.name} (EfficientNet-Lite0, "
        f"{args.image_size}x{args.image_size}; every score in the scores files, however "
        "many runs wrote them; n per table below)"
    )
    (out / "tables.md").write_text(markdown(tables, header))
    plot_curves(tables, out)
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``python -m`` and ``captum-fdcam benchmark``)."""
    parser.add_argument("--data", type=Path, required=True, help="folder of images")
    parser.add_argument("--labels", type=Path, default=None, help="default: DATA/labels.csv")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_tables"))
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--cams", nargs="+", choices=CAMS, default=list(CAMS))
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--mosaics", type=int, default=10, help="GridPG mosaics")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
