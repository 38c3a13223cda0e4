"""The evaluate service: methods scored with metrics on image files, resumably, into a
folder (``captum-fdcam evaluate``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from captum_fdcam.app.common import (
    OutputFolder,
    Progress,
    checked_images,
    checked_out,
    method_errors,
)
from captum_fdcam.app.requests import EvaluateRequest
from captum_fdcam.errors import RequestError

#: The record file of ``evaluate``'s output folder.
SCORES = "scores.jsonl"
#: The records' ``table``.
TABLE = "evaluate"


def find_labels(request: EvaluateRequest) -> Path | None:
    """The labels file: as given, else ``labels.csv`` in the one folder all the images
    come from, if there is one."""
    if request.labels is not None:
        return request.labels
    folders = {Path(spec) if Path(spec).is_dir() else Path(spec).parent for spec in request.images}
    if len(folders) == 1:
        candidate = folders.pop() / "labels.csv"
        if candidate.is_file():
            return candidate
    return None


def image_labels(paths: list[Path], labels: Path) -> dict[Path, int]:
    """Each image's class from the labels file.

    A row's file name is taken relative to the labels file's folder; an image found
    nowhere so is matched by its file name, if exactly one row has that name (a labels
    file kept apart from the images). The file may list more images than are scored (a
    dataset's labels for a subset of its photos); every scored image needs a row.
    """
    from collections import Counter

    from captum_fdcam.evaluation.data import LabelsError, read_labels

    try:
        pairs = read_labels(labels.parent, labels, require_files=False)
    except (FileNotFoundError, LabelsError) as err:
        message = str(err)
        if str(labels) not in message:
            message = f"bad labels file {labels}: {message}"
        raise RequestError(message) from err
    by_path = {p.resolve(): c for p, c in pairs}
    names = Counter(p.name for p, _ in pairs)
    by_name = {p.name: c for p, c in pairs if names[p.name] == 1}
    found: dict[Path, int] = {}
    for path in paths:
        label = by_path.get(path.resolve(), by_name.get(path.name))
        if label is not None:
            found[path] = label
    missing = [p.name for p in paths if p not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise RequestError(
            f"{len(missing)} of {len(paths)} images have no label in {labels}: {shown}"
        )
    return found


def _model_fingerprint(request: EvaluateRequest, size: int, labels: Path | None) -> dict[str, Any]:
    """What every score of the run depends on besides the image and the method."""
    from captum_fdcam.loading import OFFLINE_MODEL, file_digest, offline_weights_digest

    spec = request.model.model
    source = None
    if request.model.weights is not None:
        source = file_digest(request.model.weights)
    elif spec == OFFLINE_MODEL:
        source = offline_weights_digest()
    elif Path(spec).is_file():
        source = file_digest(Path(spec))
    return {
        "model": spec,
        "weights": source,
        "num_classes": request.model.num_classes,
        "image_size": size,
        "labels": None if labels is None else file_digest(labels),
    }


def evaluate_files(request: EvaluateRequest, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores each method on each image with the request's metrics; writes
    ``scores.jsonl`` (a keyed record per image and method, appended as each is known),
    ``scores.json`` and ``scores.md`` (means with bootstrap 95% CIs) and the mean
    insertion/deletion curves. Returns the summary tables.

    A run resumes its folder: a record already there (same model, weights, image size,
    labels, method, layer, metrics and image content) is not computed again. A folder
    of another model or settings is refused.

    Raises:
        RequestError: a mistake in the request, one line (``OutputError``: a write
            failed; every complete record is kept).
        Interrupted: Ctrl-C; the message says how many records were kept.
    """
    from captum_fdcam.evaluation.metric_info import per_image_metrics
    from captum_fdcam.images import image_paths
    from captum_fdcam.loading import file_digest, prepare_model
    from captum_fdcam.resolve import check_methods

    if not request.images:
        raise RequestError("no images given")
    if request.limit is not None and request.limit < 1:
        raise RequestError(f"--limit must be at least 1 (got {request.limit})")
    unknown = [m for m in request.metrics if m not in per_image_metrics()]
    if unknown:
        raise RequestError(f"unknown metrics {unknown}: use {', '.join(per_image_metrics())}")
    try:
        paths = image_paths(list(request.images))[: request.limit]
    except FileNotFoundError as err:
        raise RequestError(str(err)) from err
    out = checked_out(request.out)
    layered = check_methods(request.methods)
    labels = find_labels(request)
    targets = None if labels is None else image_labels(paths, labels)
    checked_images(paths)
    model, layer, device = prepare_model(request.model, layered, log)
    classes = len(model.categories)
    if targets is not None:
        wrong = [f"{p.name}: {c}" for p, c in targets.items() if not 0 <= c < classes]
        if wrong:
            raise RequestError(
                f"{len(wrong)} labels in {labels} are not classes of this model "
                f"(0-{classes - 1}): " + ", ".join(wrong[:3])
            )
    run = _model_fingerprint(request, model.preprocessing.size, labels)
    store = _open_store(out, run)

    import numpy as np
    import torch

    from captum_fdcam.evaluation.scoring import Job, score
    from captum_fdcam.images import read_image
    from captum_fdcam.records import RecordFile, identity

    # Quantus's metrics call the model and need its scores as a tensor; the layer is
    # named in that model (a Hugging Face model's is a wrapper that returns its logits).
    scorer, scored_layer = model.scoring(layer)
    jobs = [Job(m, m, scored_layer, metrics=tuple(request.metrics)) for m in request.methods]
    keys = {
        (path, job.name): {"run": run, "method": job.name, "layer": layer}
        | {"metrics": list(job.metrics), "item": item}
        for path in paths
        for item in [
            {
                "image": path.name,
                "sha256": file_digest(path),
                "label": None if targets is None else targets[path],
            }
        ]
        for job in jobs
    }
    wanted = {identity(key) for key in keys.values()}
    done = sum(k in store.keys for k in wanted)
    if done:
        log(f"{done} of {len(wanted)} records are already in {out / SCORES}: not computed again")
    computed = 0

    def kept() -> str:
        return f"kept {done + computed} of {len(wanted)} records"

    progress = Progress(request.progress)
    with OutputFolder(out, kept) as folder, RecordFile(out / SCORES) as records:
        for path in progress.items(paths, "images"):
            x: torch.Tensor | None = None
            scored = []
            for job in jobs:
                key = keys[path, job.name]
                if identity(key) in store.keys:
                    continue
                if x is None:
                    x = model.preprocessing.apply(read_image(path)).to(device)
                if targets is None:
                    with torch.no_grad():
                        y = scorer(x).argmax(dim=-1).cpu().numpy()
                else:
                    y = np.array([targets[path]])
                with method_errors(job.name):
                    scores = score(scorer, job, x.cpu().numpy(), y)
                scored.append(
                    {"table": TABLE, "method": job.name, "item": path.name, "key": key}
                    | {"scores": scores}
                )
            # Written once the image's methods have all run: a method that cannot
            # explain this model fails on the first image, with nothing written.
            if scored:
                folder.create()
            for record in scored:
                records.append(record)
                computed += 1
        folder.create()
        tables = _summary(out, wanted, request, labels, log)
    return tables


def _open_store(out: Path, run: dict[str, Any]) -> Any:
    """The folder's records, checked to be of this model and settings."""
    from captum_fdcam.records import Scores, read_scores, repair

    if not (out / SCORES).is_file():
        return Scores()
    warning = repair(out / SCORES)
    if warning:
        print(warning)
    store = read_scores(out, SCORES)
    for record in store.records:
        key = record.get("key")
        if key is None:
            raise RequestError(
                f"{out} holds scores of an earlier version of evaluate (without keys, so "
                "they cannot be resumed): pass another --out"
            )
        if key.get("run") != run:
            other = key.get("run") or {}
            differ = [k for k in run if other.get(k) != run[k]]
            raise RequestError(
                f"{out} holds scores of another run ({', '.join(differ)} differ): pass "
                "another --out"
            )
    return store


def _summary(
    out: Path,
    wanted: set[str],
    request: EvaluateRequest,
    labels: Path | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from captum_fdcam.evaluation.report import markdown, plot_curves, summarise
    from captum_fdcam.records import identity, read_scores, write_json, write_text

    records = [r for r in read_scores(out, SCORES).records if identity(r["key"]) in wanted]
    tables = summarise(records)
    write_json(out / "scores.json", tables)
    source = f"labels from {labels}" if labels else "the model's top class as target"
    n = len({r["item"] for r in records})
    where = ", ".join(str(p) for p in request.images)
    header = f"# {n} images of {where} ({request.model.model}, {source})"
    text = markdown(tables, header)
    write_text(out / "scores.md", text)
    plot_curves(tables, out)
    log(text)
    log(f"wrote {out}")
    return tables


__all__ = ["evaluate_files", "find_labels", "image_labels"]
