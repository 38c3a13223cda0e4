"""The explain service: image files explained by methods, into a folder of figures and
maps (``captum-fdcam explain``, the demo)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from captum_fdcam.app.common import (
    OutputFolder,
    Progress,
    checked_images,
    checked_out,
    method_errors,
)
from captum_fdcam.app.requests import ExplainRequest
from captum_fdcam.errors import RequestError

if TYPE_CHECKING:
    import numpy as np


def slug(name: str) -> str:
    """A method name as a file name part: ``"FG-Grad-CAM"`` -> ``"fg-grad-cam"``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def explain_files(request: ExplainRequest, log: Callable[[str], None] = print) -> list[Path]:
    """Explains each image with each method; writes ``<stem>.png`` (the photo and an
    overlay per method), ``<stem>.<method>.npy`` (the (H, W) map at the input size, if
    ``request.save_maps``) and, for several images, ``comparison.png``. Returns the
    files written.

    Everything is checked before the first file is written (the images decoded in full,
    the methods, the model on a blank image, the output folder); the folder is created
    once the first image's maps exist, and each file is written whole or not at all.

    Raises:
        RequestError: a mistake in the request, one line (``OutputError``: a write
            failed; what was written whole is kept).
        Interrupted: Ctrl-C; the message says which images were written.
    """
    from captum_fdcam.images import image_paths, sample_image
    from captum_fdcam.loading import prepare_model
    from captum_fdcam.resolve import check_methods

    try:
        paths = image_paths(list(request.images) or [sample_image()])
    except FileNotFoundError as err:
        raise RequestError(str(err)) from err
    out = checked_out(request.out)
    layered = check_methods(request.methods)
    checked_images(paths)
    model, layer, device = prepare_model(request.model, layered, log)
    classes = len(model.categories)
    if request.target is not None and not 0 <= request.target < classes:
        raise RequestError(
            f"--target {request.target} is not a class of this model (0-{classes - 1})"
        )

    import torch

    from captum_fdcam.evaluation.explainer import explain
    from captum_fdcam.images import read_image
    from captum_fdcam.records import write_atomic
    from captum_fdcam.visualization import comparison_figure, overlay_figure

    written: list[Path] = []
    rows: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    progress = Progress(request.progress)
    # Resolved once: each method's class is looked up for its signature.
    options = {method: progress.method_options(method) for method in request.methods}
    kept = lambda: f"kept the files of {len(rows)} of {len(paths)} images"  # noqa: E731
    with OutputFolder(out, kept) as folder:
        for path in progress.items(paths, "images"):
            x = model.preprocessing.apply(read_image(path)).to(device)
            with torch.no_grad():
                probs = model.scores(x).softmax(dim=-1)[0]
            target = int(probs.argmax()) if request.target is None else request.target
            label = f"{model.categories[target]} ({probs[target]:.1%})"
            log(f"{path.name}: class {target}, {label}")
            maps = {}
            for method in request.methods:
                with method_errors(method):
                    a = explain(
                        model.module,
                        x,
                        [target],
                        method=method,
                        layer=layer,
                        device=device,
                        attribute_kwargs=options[method],
                    )
                maps[method] = a[0, 0]
            # Created once the first image's maps exist: a method that cannot explain
            # this model leaves nothing written.
            folder.create()
            if request.save_maps:
                for method, values in maps.items():
                    target_path = out / f"{path.stem}.{slug(method)}.npy"
                    written.append(write_atomic(target_path, lambda p, v=values: _save(p, v)))
            image = model.preprocessing.undo(x)[0].permute(1, 2, 0).cpu().numpy()
            # Figures are written whole or not at all (visualization.save_figure).
            title = f"{path.name}: {label}"
            written.append(
                overlay_figure(image, maps, out / f"{path.stem}.png", title=title, layer=layer)
            )
            rows.append((f"{path.name}\n{model.categories[target]}", image, maps))
        if len(rows) > 1:
            written.append(comparison_figure(rows, out / "comparison.png", layer=layer))
    log(f"wrote {len(written)} files to {out}")
    return written


def _save(path: Path, values: np.ndarray) -> None:
    import numpy as np

    with path.open("wb") as handle:  # np.save(path) would append ".npy" to the name
        np.save(handle, values)
