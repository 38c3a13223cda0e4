"""Reproduces the papers' evaluation tables on a folder of labelled images.

::

    python -m captum_fdcam.benchmark --data ../shared/data/imagenet-sample --limit 20 \\
        --out paper-tables
    torchrun --nproc_per_node 4 -m captum_fdcam.benchmark --data ... --out ...

From Python, :func:`run` takes a :class:`~captum_fdcam.app.requests.BenchmarkRequest`::

    from captum_fdcam.app import BenchmarkRequest, run_benchmark
    run_benchmark(BenchmarkRequest(data=Path("imagenet-sample"), limit=20))

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
plots, ``paired.json`` and ``paired.md`` (each comparison's paired per-image
difference with its CI). Means come with bootstrap 95% confidence intervals over images.

Every image of ``--data`` needs a row in the labels file; ``--labelled-only`` scores the
labelled ones and leaves the others out, said in one line. The folder is locked while a
run writes it (a second run is refused, naming the first), each record is appended
whole, and Ctrl-C or a full disk stop with one line saying what was kept: the same
command resumes. A stopped run leaves the tables of the last run that finished;
``--tables-only`` rewrites them from every record in ``--out``, computing nothing (and
is refused while a run writes the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.app.requests import BENCHMARK_OUT, BenchmarkRequest
from captum_fdcam.errors import RequestError
from captum_fdcam.evaluation.data import LabelsError, folder_images, read_labels
from captum_fdcam.evaluation.metric_info import (
    QUANTUS_FAITHFULNESS,
    QUANTUS_LOCALISATION,
    mosaic_metrics,
)
from captum_fdcam.evaluation.scoring import Job
from captum_fdcam.loading import (
    DEPTHWISE_LAYER,
    HEAD_LAYER,
    MIN_IMAGE_SIZE,
    OFFLINE_CLASSES,
    OFFLINE_MODEL,
    OFFLINE_MODELS,
    file_digest,
    offline_weights_digest,
)
from captum_fdcam.records import (
    RecordFile,
    Scores,
    identity,
    read_scores,
    repair,
    shard_rank,
    shards,
    write_json,
    write_text,
)
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
BASE_LAYER = HEAD_LAYER
#: The last block's depthwise activation (1152 x 7 x 7 at 224 x 224, non-negative),
#: followed by a non-linear network: the projection, the head convolution and its
#: ReLU6. At BASE_LAYER only pooling and one linear layer follow, so Grad-CAM equals
#: XGrad-CAM there and FD-CAM's switch-on score is its switch-off score plus the bias;
#: the FD-CAM paper's question is asked here too (the tables' "/depthwise" variants).
DW_LAYER = DEPTHWISE_LAYER
#: The layer of each table's "/depthwise" variant and of the one without the suffix.
LAYERS = {"": BASE_LAYER, "/depthwise": DW_LAYER}
MODEL = OFFLINE_MODEL
NUM_CLASSES = OFFLINE_CLASSES
#: A GridPG mosaic holds 2x2 images of distinct classes.
GRID_CLASSES = 4
DEFAULT_OUT = BENCHMARK_OUT
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
    "inference": "inference (--fast-cpu)",
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


def jobs_for(
    tables: tuple[str, ...], cams: tuple[str, ...], model: str = OFFLINE_MODEL
) -> list[TableJob]:
    """The rows of ``tables`` on the offline ``model``, leaving out the rows of CAMs not
    in ``cams``."""
    info = OFFLINE_MODELS[model]
    layers = {"": info.head_layer, "/depthwise": info.depthwise_layer}
    rows: list[TableJob] = []
    # The table names without a suffix are those of the stored scores (head_activation).
    for suffix, layer in layers.items():
        if f"fdcam-table1{suffix}" in tables:
            rows += [TableJob(f"fdcam-table1{suffix}", Job(m, m, layer)) for m in cams]
    for suffix, layer in layers.items():
        if f"fdcam-ablation{suffix}" in tables:
            rows += [
                TableJob(f"fdcam-ablation{suffix}", Job(n, "FD-CAM", layer, kw))
                for n, kw in FD_ABLATIONS.items()
            ]
    for suffix, layer in layers.items():
        table = f"gridpg{suffix}"
        if table in tables:
            rows += [TableJob(table, Job(m, m, layer, metrics=("gridpg",))) for m in cams]
    for suffix, layer in layers.items():
        for table, metrics in (
            (f"quantus-faithfulness{suffix}", QUANTUS_FAITHFULNESS),
            (f"quantus-localisation{suffix}", QUANTUS_LOCALISATION),
        ):
            if table in tables:
                rows += [TableJob(table, Job(m, m, layer, metrics=metrics)) for m in cams]
    faithful = ("average_drop", "average_increase", "insertion", "deletion")
    if "fgcam-layers" in tables:
        for depth, layer in info.depths.items():
            table = f"fgcam-layers/{depth}"
            for m in ("Grad-CAM", "Score-CAM", "Layer-CAM"):
                rows.append(TableJob(table, Job(m, m, layer, metrics=faithful)))
            for base in ("Grad-CAM", "Score-CAM"):
                for denoise in (False, True):
                    name = f"FG-{base}" + ("-D" if denoise else "")
                    kw = {"denoise": True} if denoise else {}
                    job = Job(name, f"FG-{base}", info.head_layer, {}, faithful, layer, kw)
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
                job = Job(name, f"FG-{base}", info.head_layer, {}, faithful, None, kw, True)
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


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:  # an absolute path in the labels file
        return str(path)


# ---------------------------------------------------------------------- records


#: The records' identity, by its name before the record store moved to captum_fdcam.records.
_identity = identity


# ------------------------------------------------------------------ the checks


@dataclass
class Plan:
    """What a run computes and where, all checked before the model is loaded."""

    samples: list[Sample]
    fingerprint: dict[str, Any]
    model: str
    image_size: int
    manifest: dict[str, Any] | None  # to write into --out; None: the one there is kept
    jobs: list[TableJob]


def _refuse(out: Path, stored: dict[str, Any], data: str | None, plan: Plan, name: str) -> None:
    def size(fingerprint: dict[str, Any]) -> str:
        return f"{fingerprint.get('image_size')}x{fingerprint.get('image_size')} px"

    def value(fingerprint: dict[str, Any], key: str) -> str:
        if key == "inference":  # absent: the default, written out in full
            return str(fingerprint.get(key, "default"))
        return str(fingerprint.get(key))[:8]  # digests: their start is enough to tell

    current = plan.fingerprint
    differ = [
        label if key == "image_size" else f"{label} {value(stored, key)} vs {value(current, key)}"
        for key, label in _FINGERPRINT_FIELDS.items()
        if stored.get(key) != current.get(key)
    ]
    raise RequestError(
        f"{out} holds scores of {data or 'other data'} at {size(stored)}, this run is on "
        f"{name} at {size(current)} ({'; '.join(differ) or 'settings'} differ): pass another --out"
    )


def _check_out(request: BenchmarkRequest, plan: Plan) -> None:
    """Refuses an --out whose scores belong to other data, another image size or other
    weights; sets ``plan.manifest`` to what the folder's ``run.json`` is to hold."""
    out = request.out
    name = request.data.name
    if out.exists() and not out.is_dir():
        raise RequestError(f"--out {out} is a file, not a folder")
    manifest_path = out / MANIFEST
    stored: dict[str, Any] | None = None
    if manifest_path.exists():
        try:
            stored = json.loads(manifest_path.read_text())
        except ValueError:
            stored = None
        if not isinstance(stored, dict) or not isinstance(stored.get("fingerprint"), dict):
            raise RequestError(
                f"{manifest_path} is not a run.json of this command: pass another --out"
            )
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
                raise RequestError(
                    f"{request.data / image} is not the image of that name the scores in {out} "
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
        raise RequestError(
            f"{out} holds {len(legacy)} scores of an older version (no run.json), computed "
            "with insertion/deletion steps of 3.6% of the pixels, not this version's 8 rows "
            "(1792 px at 224x224): pass another --out"
        )


def prepare(request: BenchmarkRequest) -> Plan:
    """Checks the arguments, the data and --out, without writing anything or loading
    the model. Raises the command line's error (one line, exit code 2)."""
    if request.limit is not None and request.limit < 1:
        raise RequestError(f"--limit must be at least 1 (got {request.limit})")
    if request.model not in OFFLINE_MODELS:
        raise RequestError(
            f"unknown --model {request.model!r}: use one of {', '.join(OFFLINE_MODELS)}"
        )
    info = OFFLINE_MODELS[request.model]
    size = info.image_size if request.image_size is None else request.image_size
    if size < MIN_IMAGE_SIZE:
        raise RequestError(
            f"--image-size must be at least {MIN_IMAGE_SIZE} for {info.title}, which "
            f"downsamples {MIN_IMAGE_SIZE} times (got {size})"
        )
    tables = tuple(request.tables) or TABLES
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise RequestError(f"unknown tables {unknown}: use {', '.join(TABLES)}")
    cams = tuple(request.cams) or cam_names()
    unknown = [c for c in cams if c not in cam_names()]
    if unknown:
        raise RequestError(f"unknown CAMs {unknown}: use {', '.join(cam_names())}")
    jobs = jobs_for(tables, cams, request.model)
    with_grid = any(_on_mosaics(j) for j in jobs)
    if with_grid and request.mosaics < 1:
        raise RequestError(f"--mosaics must be at least 1 (got {request.mosaics})")
    data = request.data
    if not data.is_dir():
        raise RequestError(f"no such folder: {data}")
    if request.labels is None and not (data / "labels.csv").is_file() and not folder_images(data):
        raise RequestError(f"no images in {data} (hidden files and sub-folders are skipped)")
    try:
        rows = read_labels(data, request.labels, num_classes=NUM_CLASSES)
    except (FileNotFoundError, LabelsError) as err:
        raise RequestError(str(err)) from err
    labels = request.labels or data / "labels.csv"
    if not rows:
        raise RequestError(f"{labels} lists no images")
    labelled = {p.resolve() for p, _ in rows}
    unlabelled = [p.name for p in folder_images(data) if p.resolve() not in labelled]
    if unlabelled and not request.labelled_only:
        shown = ", ".join(unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
        raise RequestError(
            f"{len(unlabelled)} images of {data} have no row in {labels}: {shown}; add "
            "them, or pass --labelled-only to score only the labelled images"
        )
    if unlabelled:
        print(f"--labelled-only: {len(unlabelled)} images of {data} without a label left out")
    chosen = rows[: request.limit]
    classes = {label for _, label in chosen}
    if with_grid and len(classes) < GRID_CLASSES:
        raise RequestError(
            f"gridpg needs images of at least {GRID_CLASSES} classes (2x2 mosaics of distinct "
            f"classes); the {len(chosen)} images have {len(classes)}: add images or raise "
            "--limit, or leave gridpg out of --tables"
        )
    from captum_fdcam.evaluation.data import read_image

    for path, _ in chosen:  # decoded in full: a broken file fails before the model loads
        try:
            read_image(path)
        except ValueError as err:
            raise RequestError(str(err)) from err
    names = [(_relative(p, data), label) for p, label in rows]
    fingerprint = {
        "labels": hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16],
        "image_size": size,
        "model": request.model,
        "weights": offline_weights_digest(request.model),
        "protocol": PROTOCOL,
    }
    if request.fast_cpu:
        # Only when set: the fingerprints of folders run before the option stay valid.
        fingerprint["inference"] = "fast-cpu"
    samples = [Sample(p, _relative(p, data), label, file_digest(p)) for p, label in chosen]
    plan = Plan(samples, fingerprint, request.model, size, None, jobs)
    _check_out(request, plan)
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


def teardown() -> None:
    """Ends the ``torchrun`` process group, if this process joined one."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
        raise RequestError(
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


def run(request: BenchmarkRequest) -> dict[str, Any] | None:
    """Computes what ``request.out`` lacks and, on rank 0, writes and prints the tables.

    Raises:
        RequestError: a mistake in the request, one line (``OutputError``: a write
            failed; every complete record is kept).
        Interrupted: Ctrl-C; the message says how many records were kept.
    """
    from captum_fdcam.app.common import OutputFolder

    plan = prepare(request)
    if request.tables_only:
        return _tables_only(request, plan)
    rank, world = _distributed()
    import torch

    from captum_fdcam.evaluation.memo import MapCache, WeightsCache
    from captum_fdcam.evaluation.scoring import score
    from captum_fdcam.loading import offline_model

    torch.manual_seed(0)
    model = offline_model(name=plan.model)
    scoring_model = None
    if request.fast_cpu:
        from captum_fdcam.models import inference_copy

        model = model.to(memory_format=torch.channels_last)
        scoring_model = inference_copy(model)
    grid_jobs = [j for j in plan.jobs if _on_mosaics(j)]
    image_jobs = [j for j in plan.jobs if not _on_mosaics(j)]
    n_mosaics = request.mosaics if grid_jobs else None
    items = _items(model, plan.samples, plan.image_size, n_mosaics)
    out = request.out
    todo: list[tuple[Item, TableJob, dict[str, Any]]] = []
    computed = 0

    def kept() -> str:
        return f"{computed} of {len(todo)} new records kept"

    with OutputFolder(out, kept, rank) as folder:
        if rank == 0:
            folder.create()
            if plan.manifest is not None:
                write_json(out / MANIFEST, plan.manifest)
        _barrier(world)
        folder.create()
        for shard in shards(out):
            if shard_rank(shard) % world == rank:
                warning = repair(shard)
                if warning:
                    print(warning, file=sys.stderr)
        _barrier(world)
        scores = read_scores(out)
        if rank == 0:
            for where in scores.dropped:
                print(f"warning: {where} is not a whole record: left out", file=sys.stderr)
            if scores.duplicates:
                print(f"{scores.duplicates} records are in the scores files twice: counted once")
        for item in items[rank::world]:
            for job in grid_jobs if item.grid else image_jobs:
                key = record_key(job, item, plan.fingerprint)
                if identity(key) not in scores.keys:
                    todo.append((item, job, key))
        _barrier(world)  # every rank has read the files before any appends to them
        mine = sum(len(grid_jobs if i.grid else image_jobs) for i in items[rank::world])
        prefix = "" if world == 1 else f"rank {rank}: "
        if len(todo) == mine:
            print(f"{prefix}{mine} records to compute")
        else:
            print(
                f"{prefix}{len(todo)} of {mine} records to compute, the other "
                f"{mine - len(todo)} are in {out}"
            )
        # An image's jobs run one after another: Table I's Score-CAM, then the
        # FG-Score-CAMs over the same Score-CAM, compute its weights once.
        weights = WeightsCache()
        # GridPG and Quantus's localisation metrics score the same maps of the same cells.
        maps = MapCache()
        with (
            RecordFile(out / f"scores-rank{rank}.jsonl") as records,
            _progress(len(todo), rank, world, request.progress) as bar,
        ):
            for item, row, key in todo:
                scores_ = score(
                    model,
                    row.job,
                    item.x,
                    item.y,
                    item.s,
                    weights_cache=weights,
                    map_cache=maps,
                    scoring_model=scoring_model,
                )
                record = {"table": row.table, "method": row.job.name, "item": item.id}
                record["model"] = plan.model
                records.append({**record, "key": key, "scores": scores_})
                computed += 1
                bar.update(1)
        _barrier(world)
        if rank != 0:
            return None
        return _write_tables(request, plan, out)


def _tables_only(request: BenchmarkRequest, plan: Plan) -> dict[str, Any] | None:
    """``--tables-only``: the tables of the records already in ``--out``."""
    import contextlib

    from captum_fdcam.records import folder_lock, locked_ranks

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one rank writes
        return None
    out = request.out
    if not out.is_dir():
        raise RequestError(f"--tables-only: no records in {out} to make tables of")
    with contextlib.ExitStack() as locks:
        # Every rank's lock: refused while any rank of a run is still appending.
        for rank in sorted({0} | locked_ranks(out)):
            locks.enter_context(folder_lock(out, rank))
        records = read_scores(out).records
        if not records:
            raise RequestError(f"--tables-only: no records in {out} to make tables of")
        return _write_tables(request, plan, out, records)


def _write_tables(
    request: BenchmarkRequest, plan: Plan, out: Path, records: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The tables of every record in ``out`` (``records``: those already read from it):
    JSON, markdown, paired differences, plots."""
    from captum_fdcam.evaluation.paired import write as write_paired
    from captum_fdcam.evaluation.report import markdown, plot_curves, summarise
    from captum_fdcam.evaluation.stats import set_aside_lines

    records = sorted(
        read_scores(out).records if records is None else records,
        key=lambda r: (r["table"], r["method"], r["item"], identity(r.get("key"))),
    )
    tables = summarise(records)
    write_text(out / "tables.json", json.dumps(tables, indent=1))
    size = plan.image_size
    title = OFFLINE_MODELS[plan.model].title
    header = (
        f"# Paper tables on {request.data.name} ({title}, {size}x{size}; every "
        "record of the scores files once, however many runs wrote them; n per table below)"
    )
    text = markdown(tables, header, set_aside_lines(records))
    write_text(out / "tables.md", text)
    # The paired differences per image (per mosaic for GridPG) that the results page
    # reads: comparisons are made on these, not on the overlapping per-method CIs.
    write_paired(out, records)
    plot_curves(tables, out)
    print(text)
    print(f"wrote {out}")
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m captum_fdcam.benchmark``: the command line's ``benchmark`` command."""
    from captum_fdcam import cli  # the entry point only: the service never imports it

    return cli.main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
