"""Reproduces the papers' evaluation tables on a folder of labelled images.

::

    python -m captum_fdcam.benchmark --data ../shared/data/imagenet-sample --limit 20 \\
        --out paper-tables
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
* ``quantus-faithfulness``: Quantus's FaithfulnessCorrelation, PixelFlipping and ROAD
  of every CAM on the photos; ``quantus-localisation``: its PointingGame,
  AttributionLocalisation, TopKIntersection and RelevanceRankAccuracy on the GridPG
  mosaics, the explained cell being the mask (settings in
  ``captum_fdcam/evaluation/report_card.py``).
* ``<table>/depthwise`` (Table I, the ablations, GridPG and the two Quantus tables): the
  same at the last block's depthwise activation (``DW_LAYER``), which a non-linear
  network follows; the tables without the suffix are at ``head_activation``.

Output (``--out``, default ``./captum-fdcam-benchmark``): every score of every image is
appended to ``scores-rank<r>.jsonl`` as soon as it is known, with a key holding what
the score depends on (table, method and its options, layer, image file, content hash
and class, image size, model weights, labels file). A run resumes what is in
``--out``: a record is computed only if no record has its key, a record written twice
(any mix of runs and ``torchrun`` ranks) counts once, a line cut mid-way by a killed run
is dropped with a warning and computed again. ``run.json`` says which labels file,
image size and weights the folder's scores belong to; a run with other ones is refused.
Under ``torchrun`` each rank takes every ``world_size``-th image (gloo backend, CPU or
GPU) and rank 0 merges the files and writes ``tables.json``, ``tables.md`` and the curve
plots. Means come with bootstrap 95% confidence intervals over images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.errors import CliArgumentParser, CliError
from captum_fdcam.evaluation.data import LabelsError, folder_images, read_labels
from captum_fdcam.evaluation.metric_info import (
    QUANTUS_FAITHFULNESS,
    QUANTUS_LOCALISATION,
    mosaic_metrics,
)
from captum_fdcam.evaluation.scoring import Job
from captum_fdcam.registry import cam_names, split_fg

if TYPE_CHECKING:  # imported where used: `captum-fdcam --help` imports this module
    import numpy as np
    from torch import nn

PROG = "python -m captum_fdcam.benchmark"
TABLES = (
    "fdcam-table1",
    "fdcam-table1/depthwise",
    "fdcam-ablation",
    "fdcam-ablation/depthwise",
    "gridpg",
    "gridpg/depthwise",
    "fgcam-layers",
    "fgcam-input",
    "quantus-faithfulness",
    "quantus-faithfulness/depthwise",
    "quantus-localisation",
    "quantus-localisation/depthwise",
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
#: The last block's depthwise activation (1152 x 7 x 7 at 224 x 224, non-negative),
#: followed by a non-linear network: the projection, the head convolution and its
#: ReLU6. At BASE_LAYER only pooling and one linear layer follow, so Grad-CAM equals
#: XGrad-CAM there and FD-CAM's switch-on score is its switch-off score plus the bias;
#: the FD-CAM paper's question is asked here too (the tables' "/depthwise" variants).
#: models.DEPTHWISE_LAYER, spelt out: `captum-fdcam --help` must not import torch.
DW_LAYER = "_blocks.15.depthwise_activation"
#: The layer of each table's "/depthwise" variant and of the one without the suffix.
LAYERS = {"": BASE_LAYER, "/depthwise": DW_LAYER}
MODEL = "efficientnet-lite0"
NUM_CLASSES = 1000
#: EfficientNet-Lite0 downsamples 32 times: below 32 px its 5x5 depthwise kernels
#: meet 4x4 maps, which PyTorch refuses.
MIN_IMAGE_SIZE = 32
#: A GridPG mosaic holds 2x2 images of distinct classes.
GRID_CLASSES = 4
#: In the current directory, not the repository's committed results.
DEFAULT_OUT = Path("captum-fdcam-benchmark")
MANIFEST = "run.json"
FORMAT = 1
#: The scores' protocol, part of every record's key (via the run fingerprint): "8rows" is
#: insertion/deletion in steps of 8 rows (1792 pixels at 224 x 224) with the AUC over the
#: share of pixels moved; folders scored before it (steps of 3.6%, 1806 pixels) lack it
#: and are refused, not resumed as if their scores were of this protocol.
PROTOCOL = "8rows"
_FINGERPRINT_FIELDS = {
    "labels": "labels file",
    "image_size": "image size",
    "model": "model",
    "weights": "weights",
    "protocol": "evaluation protocol (insertion/deletion steps)",
}


def __getattr__(name: str) -> Any:
    # CAMS is read from the registry on each look-up, so that a method added there is
    # one of the tables' CAMs (and of --cams) with no change here.
    if name == "CAMS":
        return cam_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class TableJob:
    """One row of one of the papers' tables: its table and what it scores."""

    table: str
    job: Job


def jobs_for(tables: tuple[str, ...], cams: tuple[str, ...]) -> list[TableJob]:
    """The rows of ``tables``, leaving out the rows of CAMs not in ``cams``."""
    rows: list[TableJob] = []
    # The table names without a suffix are those of the stored scores (head_activation).
    for suffix, layer in LAYERS.items():
        if f"fdcam-table1{suffix}" in tables:
            rows += [TableJob(f"fdcam-table1{suffix}", Job(m, m, layer)) for m in cams]
    for suffix, layer in LAYERS.items():
        if f"fdcam-ablation{suffix}" in tables:
            rows += [
                TableJob(f"fdcam-ablation{suffix}", Job(n, "FD-CAM", layer, kw))
                for n, kw in FD_ABLATIONS.items()
            ]
    for suffix, layer in LAYERS.items():
        table = f"gridpg{suffix}"
        if table in tables:
            rows += [TableJob(table, Job(m, m, layer, metrics=("gridpg",))) for m in cams]
    for suffix, layer in LAYERS.items():
        for table, metrics in (
            (f"quantus-faithfulness{suffix}", QUANTUS_FAITHFULNESS),
            (f"quantus-localisation{suffix}", QUANTUS_LOCALISATION),
        ):
            if table in tables:
                rows += [TableJob(table, Job(m, m, layer, metrics=metrics)) for m in cams]
    faithful = ("average_drop", "average_increase", "insertion", "deletion")
    if "fgcam-layers" in tables:
        for depth, layer in DEPTHS.items():
            table = f"fgcam-layers/{depth}"
            for m in ("Grad-CAM", "Score-CAM", "Layer-CAM"):
                rows.append(TableJob(table, Job(m, m, layer, metrics=faithful)))
            for base in ("Grad-CAM", "Score-CAM"):
                for denoise in (False, True):
                    name = f"FG-{base}" + ("-D" if denoise else "")
                    kw = {"denoise": True} if denoise else {}
                    job = Job(name, f"FG-{base}", BASE_LAYER, {}, faithful, layer, kw)
                    rows.append(TableJob(table, job))
    if "fgcam-input" in tables:
        # FG-CAM's input-layer tables keep only positive pixels when fewer than half are.
        for m in ("PropagationLRP", "CLRP", "SGLRP"):
            name = m.replace("Propagation", "")
            job = Job(name, m, None, {}, faithful, positive_only=True)
            rows.append(TableJob("fgcam-input", job))
        for base in ("Grad-CAM", "Score-CAM"):
            for denoise in (False, True):
                name = f"FG-{base}" + ("-D" if denoise else "")
                kw = {"denoise": True} if denoise else {}
                job = Job(name, f"FG-{base}", BASE_LAYER, {}, faithful, None, kw, True)
                rows.append(TableJob("fgcam-input", job))
    return [r for r in rows if _uses_allowed_cams(r.job, cams)]


def _on_mosaics(row: TableJob) -> bool:
    """Whether the row is scored on GridPG mosaic cells (gridpg, Quantus's localisation)."""
    return any(m in mosaic_metrics() for m in row.job.metrics)


def _uses_allowed_cams(job: Job, cams: tuple[str, ...]) -> bool:
    base, _ = split_fg(job.method)
    return base not in cam_names() or base in cams


# ------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """One labelled image, as the records' keys name it."""

    path: Path
    name: str  # the path relative to --data
    label: int
    sha256: str


def _sha256(path: Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:  # an absolute path in the labels file
        return str(path)


# ---------------------------------------------------------------------- records


def _identity(key: Any) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def _parse(line: str) -> dict[str, Any] | None:
    """The record on a line, or None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
        return None
    if not all(isinstance(record.get(k), str) for k in ("table", "method", "item")):
        return None
    if "key" in record and not isinstance(record["key"], dict):
        return None
    return record


def _shard_rank(path: Path) -> int:
    match = re.fullmatch(r"scores-rank(\d+)", path.stem)
    return int(match.group(1)) if match else 0


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("scores-rank*.jsonl"), key=lambda p: (_shard_rank(p), p.name))


@dataclass
class Scores:
    """The records of an output folder, each measurement once.

    Records are read file by file (``scores-rank0.jsonl``, ``scores-rank1.jsonl``, ...),
    line by line; of records with the same key the first one read is kept. Records
    written before keys existed ("legacy": ``table``, ``method`` and ``item`` only) are
    matched by those three fields, as that version did.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    legacy: set[tuple[str, str, str]] = field(default_factory=set)
    duplicates: int = 0
    #: "file line n" of each line that is not a whole record
    dropped: list[str] = field(default_factory=list)


def read_scores(out: Path) -> Scores:
    """Every record of ``out/scores-rank*.jsonl``, deduplicated by key."""
    scores = Scores()
    kept: set[tuple[str, str, str]] = set()
    for shard in _shards(out):
        for number, line in enumerate(shard.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                scores.dropped.append(f"{shard} line {number}")
                continue
            triple = (record["table"], record["method"], record["item"])
            if "key" in record:
                identity = _identity(record["key"])
                if identity in scores.keys or triple in scores.legacy:
                    scores.duplicates += 1
                    continue
                scores.keys.add(identity)
            else:
                if triple in kept:
                    scores.duplicates += 1
                    continue
                scores.legacy.add(triple)
            kept.add(triple)
            scores.records.append(record)
    return scores


def _repair(path: Path) -> str | None:
    """Cuts the last line of a scores file if a killed run left it unfinished, so that
    the next record starts a line of its own; returns the warning to print."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    if _parse(data[start:].decode(errors="replace")) is not None:
        with path.open("ab") as handle:  # a whole record, only its newline is missing
            handle.write(b"\n")
        return None
    with path.open("r+b") as handle:
        handle.truncate(start)
    line = data.count(b"\n") + 1
    return (
        f"warning: {path} line {line} was cut mid-way (a killed run?): "
        "dropped from the file, its score is computed again"
    )


def _write_json(path: Path, value: Any) -> None:
    # Through a temporary file: under torchrun other ranks may read it meanwhile.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(partial, path)


# ------------------------------------------------------------------ the checks


@dataclass
class Plan:
    """What a run computes and where, all checked before the model is loaded."""

    samples: list[Sample]
    fingerprint: dict[str, Any]
    manifest: dict[str, Any] | None  # to write into --out; None: the one there is kept
    jobs: list[TableJob]


def _refuse(out: Path, stored: dict[str, Any], data: str | None, plan: Plan, name: str) -> None:
    def size(fingerprint: dict[str, Any]) -> str:
        return f"{fingerprint.get('image_size')}x{fingerprint.get('image_size')} px"

    current = plan.fingerprint
    differ = [
        label
        if key == "image_size"
        else f"{label} {str(stored.get(key))[:8]} vs {current[key][:8]}"
        for key, label in _FINGERPRINT_FIELDS.items()
        if stored.get(key) != current[key]
    ]
    raise CliError(
        f"{out} holds scores of {data or 'other data'} at {size(stored)}, this run is on "
        f"{name} at {size(current)} ({'; '.join(differ) or 'settings'} differ): pass another --out"
    )


def _weights_digest() -> str:
    from captum_fdcam.models import _weights_path

    return _sha256(Path(_weights_path()))


def _check_out(args: argparse.Namespace, plan: Plan) -> None:
    """Refuses an --out whose scores belong to other data, another image size or other
    weights; sets ``plan.manifest`` to what the folder's ``run.json`` is to hold."""
    out: Path = args.out
    name = args.data.name
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    manifest_path = out / MANIFEST
    stored: dict[str, Any] | None = None
    if manifest_path.exists():
        try:
            stored = json.loads(manifest_path.read_text())
        except ValueError:
            stored = None
        if not isinstance(stored, dict) or not isinstance(stored.get("fingerprint"), dict):
            raise CliError(f"{manifest_path} is not a run.json of this command: pass another --out")
        stored_fingerprint = stored["fingerprint"]
        if stored_fingerprint != plan.fingerprint:
            _refuse(out, stored_fingerprint, stored.get("data"), plan, name)
    scores = read_scores(out) if out.is_dir() else Scores()
    hashes = {s.name: s.sha256 for s in plan.samples}
    for record in scores.records:
        key = record.get("key")
        if key is None:
            continue
        if key.get("run") != plan.fingerprint:  # run.json deleted or replaced by hand
            _refuse(out, key.get("run") or {}, None, plan, name)
        item = key.get("item", {})
        for image, digest in zip(item.get("images", []), item.get("sha256", []), strict=False):
            if hashes.get(image, digest) != digest:
                raise CliError(
                    f"{args.data / image} is not the image of that name the scores in {out} "
                    "were computed on (another folder, or the file changed): pass another --out"
                )
    if stored is not None:
        plan.manifest = None
        return
    plan.manifest = {"format": FORMAT, "data": name, "fingerprint": plan.fingerprint}
    legacy = [r for r in scores.records if "key" not in r]
    if legacy:
        # Written before keys and run.json existed, by versions whose insertion/deletion
        # stepped by 3.6% of the pixels (1806 at 224 x 224), not by this version's 8 rows.
        raise CliError(
            f"{out} holds {len(legacy)} scores of an older version (no run.json), computed "
            "with insertion/deletion steps of 3.6% of the pixels, not this version's 8 rows "
            "(1792 px at 224x224): pass another --out"
        )


def prepare(args: argparse.Namespace) -> Plan:
    """Checks the arguments, the data and --out, without writing anything or loading
    the model. Raises the command line's error (one line, exit code 2)."""
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1 (got {args.limit})")
    if args.image_size < MIN_IMAGE_SIZE:
        raise CliError(
            f"--image-size must be at least {MIN_IMAGE_SIZE} for EfficientNet-Lite0, which "
            f"downsamples {MIN_IMAGE_SIZE} times (got {args.image_size})"
        )
    jobs = jobs_for(tuple(args.tables), tuple(args.cams))
    with_grid = any(_on_mosaics(j) for j in jobs)
    if with_grid and args.mosaics < 1:
        raise CliError(f"--mosaics must be at least 1 (got {args.mosaics})")
    data: Path = args.data
    if not data.is_dir():
        raise CliError(f"no such folder: {data}")
    if args.labels is None and not (data / "labels.csv").is_file() and not folder_images(data):
        raise CliError(f"no images in {data} (hidden files and sub-folders are skipped)")
    try:
        rows = read_labels(data, args.labels, num_classes=NUM_CLASSES)
    except (FileNotFoundError, LabelsError) as err:
        raise CliError(str(err)) from err
    labels = args.labels or data / "labels.csv"
    if not rows:
        raise CliError(f"{labels} lists no images")
    chosen = rows[: args.limit]
    classes = {label for _, label in chosen}
    if with_grid and len(classes) < GRID_CLASSES:
        raise CliError(
            f"gridpg needs images of at least {GRID_CLASSES} classes (2x2 mosaics of distinct "
            f"classes); the {len(chosen)} images have {len(classes)}: add images or raise "
            "--limit, or leave gridpg out of --tables"
        )
    from captum_fdcam.evaluation.data import read_image

    for path, _ in chosen:  # decoded in full: a broken file fails before the model loads
        try:
            read_image(path)
        except ValueError as err:
            raise CliError(str(err)) from err
    names = [(_relative(p, data), label) for p, label in rows]
    fingerprint = {
        "labels": hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16],
        "image_size": args.image_size,
        "model": MODEL,
        "weights": _weights_digest(),
        "protocol": PROTOCOL,
    }
    samples = [Sample(p, _relative(p, data), label, _sha256(p)) for p, label in chosen]
    plan = Plan(samples, fingerprint, None, jobs)
    _check_out(args, plan)
    return plan


# ------------------------------------------------------------------------- run


def _distributed() -> tuple[int, int]:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        import torch

        torch.distributed.barrier()


def _progress(total: int, rank: int, world: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    what = "(image, method) records"
    desc = what if world == 1 else f"rank {rank}: {what}"
    return tqdm(total=total, desc=desc, unit="record", disable=not enabled, position=rank)


@dataclass
class Item:
    """An image, or one cell of a GridPG mosaic, ready for the model."""

    id: str  # the records' "item": the file name, or mosaic<i>-cell<j>
    key: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray | None
    grid: bool


def _items(model: nn.Module, samples: list[Sample], size: int, n_mosaics: int | None) -> list[Item]:
    """Every image, then (``n_mosaics`` not None) every mosaic cell."""
    import numpy as np
    import torch

    from captum_fdcam.evaluation.data import load_image
    from captum_fdcam.evaluation.grid import grid_mosaics

    images = torch.cat([load_image(s.path, size) for s in samples])  # decoded once, used twice
    items = [
        Item(
            s.name,
            {"images": [s.name], "sha256": [s.sha256], "labels": [s.label], "cell": None},
            image[None].numpy(),
            np.array([s.label]),
            None,
            False,
        )
        for s, image in zip(samples, images, strict=True)
    ]
    if n_mosaics is None:
        return items
    labels = torch.tensor([s.label for s in samples])
    try:
        mosaics = grid_mosaics(model, images, labels, n_mosaics=n_mosaics)
    except ValueError as err:  # too few confidently classified classes
        raise CliError(
            f"gridpg: {err} ({len(samples)} images): add images or raise --limit, or leave "
            "gridpg out of --tables"
        ) from err
    for i in range(len(mosaics.y_batch)):
        quad = [samples[j] for j in mosaics.sources[i // 4]]
        key = {
            "images": [s.name for s in quad],
            "sha256": [s.sha256 for s in quad],
            "labels": [s.label for s in quad],
            "cell": i % 4,
        }
        items.append(
            Item(
                f"mosaic{i // 4}-cell{i % 4}",
                key,
                mosaics.x_batch[i : i + 1],
                mosaics.y_batch[i : i + 1],
                mosaics.s_batch[i : i + 1],
                True,
            )
        )
    return items


def record_key(row: TableJob, item: Item, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Everything one score depends on.

    The fields are those of the records written before the registry's split of the base
    CAM's and FG-CAM's options, so that committed score files still resume: ``method``
    is the base CAM of a job with an FG-CAM layer, ``options`` holds the base CAM's and
    FG-CAM's options together (no job of the tables has both), ``fg_target`` is
    FG-CAM's layer.
    """
    job = row.job
    return {
        "run": fingerprint,
        "table": row.table,
        "name": job.name,
        "method": split_fg(job.method)[0] if job.fg_layer is not None else job.method,
        "options": {**job.method_kwargs, **job.fg_kwargs},
        "layer": job.layer,
        "fg_target": job.fg_layer,
        "metrics": list(job.metrics),
        "item": item.key,
    }


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Computes what --out lacks and, on rank 0, writes and prints the tables."""
    plan = prepare(args)
    rank, world = _distributed()
    import torch

    from captum_fdcam.evaluation.memo import MapCache, WeightsCache
    from captum_fdcam.evaluation.paired import write as write_paired
    from captum_fdcam.evaluation.report import markdown, plot_curves, summarise
    from captum_fdcam.evaluation.scoring import score
    from captum_fdcam.models import efficientnet_lite0

    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=True)
    grid_jobs = [j for j in plan.jobs if _on_mosaics(j)]
    image_jobs = [j for j in plan.jobs if not _on_mosaics(j)]
    n_mosaics = args.mosaics if grid_jobs else None
    items = _items(model, plan.samples, args.image_size, n_mosaics)
    out: Path = args.out
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if plan.manifest is not None:
            _write_json(out / MANIFEST, plan.manifest)
    _barrier(world)
    for shard in _shards(out):
        if _shard_rank(shard) % world == rank:
            warning = _repair(shard)
            if warning:
                print(warning, file=sys.stderr)
    _barrier(world)
    scores = read_scores(out)
    if rank == 0:
        for where in scores.dropped:
            print(f"warning: {where} is not a whole record: left out", file=sys.stderr)
        if scores.duplicates:
            print(f"{scores.duplicates} records are in the scores files twice: counted once")
    todo = []
    for item in items[rank::world]:
        for job in grid_jobs if item.grid else image_jobs:
            key = record_key(job, item, plan.fingerprint)
            if _identity(key) not in scores.keys:
                todo.append((item, job, key))
    _barrier(world)  # every rank has read the files before any appends to them
    mine = sum(len(grid_jobs if i.grid else image_jobs) for i in items[rank::world])
    prefix = "" if world == 1 else f"rank {rank}: "
    print(f"{prefix}{len(todo)} of {mine} records to compute, the others are in {out}")
    path = out / f"scores-rank{rank}.jsonl"
    # An image's jobs run one after another: Table I's Score-CAM, then the FG-Score-CAMs
    # over the same Score-CAM, compute its weights once.
    weights = WeightsCache()
    # GridPG and Quantus's localisation metrics score the same maps of the same cells.
    maps = MapCache()
    with path.open("a") as handle, _progress(len(todo), rank, world, not args.quiet) as bar:
        for item, row, key in todo:
            scores_ = score(
                model, row.job, item.x, item.y, item.s, weights_cache=weights, map_cache=maps
            )
            record = {"table": row.table, "method": row.job.name, "item": item.id, "key": key}
            handle.write(json.dumps({**record, "scores": scores_}) + "\n")
            handle.flush()
            bar.update(1)
    _barrier(world)
    if rank != 0:
        return None
    records = sorted(
        read_scores(out).records,
        key=lambda r: (r["table"], r["method"], r["item"], _identity(r.get("key"))),
    )
    tables = summarise(records)
    (out / "tables.json").write_text(json.dumps(tables, indent=1))
    size = args.image_size
    header = (
        f"# Paper tables on {args.data.name} (EfficientNet-Lite0, {size}x{size}; every "
        "record of the scores files once, however many runs wrote them; n per table below)"
    )
    text = markdown(tables, header)
    (out / "tables.md").write_text(text)
    # The paired differences per image (per mosaic for GridPG) that the results page
    # reads: comparisons are made on these, not on the overlapping per-method CIs.
    write_paired(out, records)
    plot_curves(tables, out)
    print(text)
    print(f"wrote {out}")
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``python -m`` and ``captum-fdcam benchmark``)."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder of images with a labels.csv (columns file,class_index); required",
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="labels CSV (default: DATA/labels.csv)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder: scores, run.json, tables, plots; a run resumes the scores "
        "already there, and refuses one of other data, image size or weights "
        f"(default: ./{DEFAULT_OUT} in the current directory)",
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=TABLES,
        default=list(TABLES),
        metavar="TABLE",
        help=f"any of {', '.join(TABLES)} (default: all)",
    )
    parser.add_argument(
        "--cams",
        nargs="+",
        choices=cam_names(),
        default=list(cam_names()),
        metavar="CAM",
        help=f"the CAMs of the tables, any of {', '.join(cam_names())} (default: all)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="the first N images by file name (default: all)"
    )
    parser.add_argument(
        "--mosaics",
        type=int,
        default=24,
        # 24: the minimum. The 500-photo sample has 307 photos the model gives
        # >= 0.5 to (one class each): 76 mosaics of all, 32 of the first 200, 16 of 100.
        help="GridPG mosaics, at most: fewer when the images' confidently classified "
        "classes run out (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help=f"resize/crop size, at least {MIN_IMAGE_SIZE} (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (default: a bar per rank)"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = CliArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except CliError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
