"""Figures: CAM overlays on the photo (Captum's ``visualize_image_attr``), a
method-comparison grid and insertion/deletion curves (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import Tensor

from captum_fdcam._core.numeric import min_max

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def normalize_map(cam: Tensor) -> np.ndarray:
    """Min-max normalises one (1, h, w) or (h, w) map to [0, 1] (a constant map gives
    zeros), with the methods' ``min_max``."""
    return min_max(cam.detach().float().reshape(cam.shape[-2:])).cpu().numpy()


def upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (N, 1, h, w) maps to ``size``, as Captum does it."""
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")


def _pyplot() -> Any:  # matplotlib is imported lazily: it is an optional dependency
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay(ax: Any, image: np.ndarray, cam: Tensor | np.ndarray | None, alpha: float) -> None:
    """The photo, with the map min-max scaled to 0-1 over it (:func:`normalize_map`),
    the scale every figure of the library uses and its colour bar states."""
    if cam is None:
        ax.imshow(image)
        return
    overlay_scaled(ax, image, normalize_map(_as_tensor(cam)), alpha)


def _as_tensor(cam: Tensor | np.ndarray) -> Tensor:
    return cam if isinstance(cam, Tensor) else torch.from_numpy(np.asarray(cam))


#: What the overlays' colours mean: one scale for every figure (the command line's, the
#: examples'), each map min-max scaled on its own (:func:`normalize_map`).
OVERLAY_SCALE = "relevance, each map scaled to 0-1 (0: its lowest value, 1: its highest)"

#: The colour map of every overlay.
OVERLAY_CMAP = "jet"

#: The same scale, by the name the examples used.
MINMAX_SCALE = OVERLAY_SCALE


def figure_grid(rows: int, columns: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with a (rows, columns) array of axes, laid out by matplotlib's constrained
    layout (which, unlike ``tight_layout``, leaves room for a figure-wide colour bar)."""
    fig, axes = _pyplot().subplots(
        rows, columns, figsize=figsize, squeeze=False, layout="constrained"
    )
    return fig, axes


def figure_title(fig: Figure, title: str | None = None, *, layer: str | None = None) -> None:
    """Writes the figure's title, with a line "layer: <name>" under it when ``layer`` is
    given (so a reader knows which layer the maps explain)."""
    lines = [line for line in (title, None if layer is None else f"layer: {layer}") if line]
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)


def overlay_scaled(ax: Any, image: np.ndarray, scaled: np.ndarray, alpha: float = 0.5) -> None:
    """The photo with a map already scaled to [0, 1] (e.g. by :func:`normalize_map`) over
    it, on the fixed 0-1 range of the colour bar that :func:`finish_figure` draws.

    Args:
        ax: the matplotlib axes to draw in.
        image: (H, W, 3) RGB image in [0, 1].
        scaled: (H, W) map in [0, 1] at the image's size.
        alpha: opacity of the heat map.
    """
    ax.imshow(image)
    ax.imshow(scaled, cmap=OVERLAY_CMAP, alpha=alpha, vmin=0, vmax=1)


def finish_figure(
    fig: Figure,
    axes: np.ndarray,
    title: str | None = None,
    *,
    layer: str | None = None,
    scale: str = OVERLAY_SCALE,
    location: str = "bottom",
) -> None:
    """What every overlay figure ends with: no axis ticks, the title and the explained
    layer (:func:`figure_title`), and a colour bar beside ``axes`` labelled ``scale``
    (:func:`add_colorbar`)."""
    for ax in np.asarray(axes, dtype=object).flat:
        ax.axis("off")
    figure_title(fig, title, layer=layer)
    add_colorbar(fig, axes, scale, location=location)


def add_colorbar(
    fig: Figure,
    axes: np.ndarray | Sequence[Any],
    label: str = OVERLAY_SCALE,
    *,
    cmap: str = OVERLAY_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    location: str = "bottom",
) -> Any:
    """A colour bar for ``cmap`` on [vmin, vmax] beside ``axes`` (under them by default,
    ``location="right"`` for a vertical one), with ``label`` saying what the colours mean.
    Returns the matplotlib ``Colorbar``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    bar = fig.colorbar(
        mappable,
        ax=list(np.asarray(axes, dtype=object).flat),
        location=location,
        shrink=0.6 if location in ("bottom", "top") else 0.9,
        aspect=40,
    )
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Writes ``fig`` to ``path`` (parent folders are created), whole or not at all, and
    closes it."""
    from captum_fdcam.records import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Whole or not at all: a full disk leaves no truncated PNG behind.
        write_atomic(path, lambda partial: fig.savefig(partial, dpi=dpi, format=_format(path)))
    finally:
        _pyplot().close(fig)
    return path


def _format(path: Path) -> str | None:
    return path.suffix[1:].lower() or None


def build_overlay_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    title: str | None = None,
    alpha: float = 0.5,
    max_columns: int = 5,
    *,
    layer: str | None = None,
) -> Figure:
    """The figure of :func:`overlay_figure`, not yet written (for callers that add to it)."""
    panels = [("input", None), *maps.items()]
    columns = min(len(panels), max_columns)
    rows = -(-len(panels) // columns)
    # 0.5 inch more for the colour bar and its label.
    fig, axes = figure_grid(rows, columns, (2.6 * columns, 2.8 * rows + 0.5))
    for ax, (name, cam) in zip(axes.flat, panels, strict=False):
        _overlay(ax, image, cam, alpha)
        ax.set_title(name)
    finish_figure(fig, axes, title, layer=layer)
    return fig


def overlay_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    path: str | Path,
    title: str | None = None,
    alpha: float = 0.5,
    max_columns: int = 5,
    *,
    layer: str | None = None,
) -> Path:
    """Writes a figure: the photo, then the photo overlaid with each map, and a colour bar
    saying what the colours mean (:data:`OVERLAY_SCALE`).

    Args:
        image: (H, W, 3) RGB image in [0, 1].
        maps: panel title -> (1, 1, H, W) or (H, W) map at the image's size.
        path: where to write the figure (PNG); parent folders are created.
        title: optional figure title.
        alpha: opacity of the heat map.
        max_columns: panels per row; more panels wrap to further rows.
        layer: name of the layer the maps explain, written under the title.

    Returns:
        The path written.
    """
    fig = build_overlay_figure(image, maps, title, alpha, max_columns, layer=layer)
    return save_figure(fig, path)


def build_comparison_figure(
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, Tensor | np.ndarray]]],
    alpha: float = 0.5,
    *,
    title: str | None = None,
    layer: str | None = None,
) -> Figure:
    """The figure of :func:`comparison_figure`, not yet written."""
    if not rows:
        raise ValueError("comparison_figure needs at least one row.")
    methods = list(rows[0][2])
    shape = (len(rows), len(methods) + 1)
    # 0.5 inch more for the colour bar, 0.4 for a title.
    extra = 0.5 + (0.4 if title or layer else 0.0)
    fig, axes = figure_grid(*shape, (2.2 * shape[1], 2.3 * shape[0] + extra))
    for r, (label, image, maps) in enumerate(rows):
        if list(maps) != methods:
            raise ValueError(f"Row {label!r} has methods {list(maps)}, expected {methods}.")
        _overlay(axes[r, 0], image, None, alpha)
        axes[r, 0].set_title(label, fontsize=8)
        for c, method in enumerate(methods, start=1):
            _overlay(axes[r, c], image, maps[method], alpha)
            if r == 0:
                axes[r, c].set_title(method, fontsize=9)
    finish_figure(fig, axes, title, layer=layer)
    return fig


def comparison_figure(
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, Tensor | np.ndarray]]],
    path: str | Path,
    alpha: float = 0.5,
    *,
    title: str | None = None,
    layer: str | None = None,
) -> Path:
    """Writes a method-comparison grid: one row per image, one column per method, and a
    colour bar saying what the colours mean (:data:`OVERLAY_SCALE`).

    Args:
        rows: (row label, (H, W, 3) image in [0, 1], method -> map at the image's size);
            every row must have the same methods.
        path: where to write the figure (PNG).
        alpha: opacity of the heat map.
        title: optional figure title.
        layer: name of the layer the maps explain, written under the title.

    Returns:
        The path written.
    """
    return save_figure(build_comparison_figure(rows, alpha, title=title, layer=layer), path)


def curves_figure(
    curves: Mapping[str, Sequence[float] | np.ndarray],
    path: str | Path,
    xlabel: str,
    ylabel: str = "softmax probability of the class",
    title: str | None = None,
) -> Path:
    """Writes insertion or deletion curves (mean over images), one line per method,
    each sampled at evenly spaced fractions of the pixels on [0, 1]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, curve in curves.items():
        ax.plot(np.linspace(0, 1, len(curve)), curve, label=method)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_boxes(
    ax: Any,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None,
    class_names: Sequence[str] | Mapping[int, str] | None,
    explained: int | None,
) -> None:
    """Boxes (x1, y1, x2, y2) with their label (and score) above them; label -1 (the
    padding of :meth:`~captum_fdcam.DetectionTarget.detections`) is skipped. The
    explained box is drawn thicker, the others thinner and dashed, so that a reader sees
    which detection the map explains."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = colormaps["tab10"]
    height = abs(ax.get_ylim()[0] - ax.get_ylim()[1])  # the image's, as imshow set it
    for b, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
        if label < 0:
            continue
        name = str(class_names[int(label)]) if class_names is not None else str(int(label))
        text = name if scores is None else f"{name} {float(scores[b]):.2f}"
        colour = colours(int(label) % 10)
        bold = explained is None or b == explained
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                edgecolor=colour,
                linewidth=2.0 if bold else 1.0,
                linestyle="-" if bold else "--",
                label=text,
            )
        )
        if bold:
            # Above the box, or inside it at the image's top edge (above, it would cover
            # the panel's title).
            inside = y1 < 0.08 * height
            ax.text(
                x1,
                y1,
                text,
                fontsize=7,
                color="white",
                va="top" if inside else "bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0},
            )


def _as_array(values: Tensor | np.ndarray | Sequence[Any]) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def build_detection_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    boxes: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    scores: Tensor | np.ndarray | Sequence[float] | None = None,
    *,
    explained: Mapping[str, int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    max_columns: int = 5,
    layer: str | None = None,
) -> Figure:
    """The figure of :func:`detection_figure`, not yet written (for callers that add to
    it)."""
    box_array = _as_array(boxes).reshape(-1, 4)
    label_array = _as_array(labels).reshape(-1)
    score_array = None if scores is None else _as_array(scores).reshape(-1)
    if len(label_array) != len(box_array) or (
        score_array is not None and len(score_array) != len(box_array)
    ):
        raise ValueError(
            f"detection_figure needs one label (and score) per box: got {len(box_array)} "
            f"boxes, {len(label_array)} labels"
            + ("" if score_array is None else f", {len(score_array)} scores")
            + "."
        )
    explained = dict(explained or {})
    unknown = set(explained) - set(maps)
    if unknown:
        raise ValueError(f"explained names panels {sorted(unknown)} that maps does not have.")
    # The layout of build_overlay_figure, with the boxes drawn on every panel.
    panels = [("input", None), *maps.items()]
    columns = min(len(panels), max_columns)
    rows = -(-len(panels) // columns)
    fig, axes = figure_grid(rows, columns, (2.6 * columns, 2.8 * rows + 0.5))
    for ax, (name, cam) in zip(axes.flat, panels, strict=False):
        _overlay(ax, image, cam, alpha)
        _draw_boxes(ax, box_array, label_array, score_array, class_names, explained.get(name))
        ax.set_title(name)
    finish_figure(fig, axes, title, layer=layer)
    return fig


def detection_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    boxes: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    path: str | Path,
    scores: Tensor | np.ndarray | Sequence[float] | None = None,
    *,
    explained: Mapping[str, int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    max_columns: int = 5,
    layer: str | None = None,
) -> Path:
    """Writes a figure for a detector: the photo with the boxes, then the photo overlaid
    with each map and the boxes, and a colour bar saying what the colours mean
    (:data:`OVERLAY_SCALE`).

    Args:
        image: (H, W, 3) RGB image in [0, 1], the one the detector saw.
        maps: panel title -> (1, 1, H, W) or (H, W) map at the image's size.
        boxes: (B, 4) boxes (x1, y1, x2, y2) in the image's pixels, e.g. one image's
            row of :meth:`~captum_fdcam.DetectionTarget.detections`.
        labels: (B,) class labels; boxes labelled -1 (padding) are not drawn.
        path: where to write the figure (PNG); parent folders are created.
        scores: optional (B,) scores, written after the labels.
        explained: panel title -> index of the box its map explains: that box is drawn
            with its label, the others thin and dashed. Default: every box alike.
        class_names: names of the labels (a sequence indexed by label, or a mapping).
        title: optional figure title.
        alpha: opacity of the heat map.
        max_columns: panels per row; more panels wrap to further rows.
        layer: name of the layer the maps explain, written under the title.

    Returns:
        The path written.
    """
    fig = build_detection_figure(
        image,
        maps,
        boxes,
        labels,
        scores,
        explained=explained,
        class_names=class_names,
        title=title,
        alpha=alpha,
        max_columns=max_columns,
        layer=layer,
    )
    return save_figure(fig, path)
