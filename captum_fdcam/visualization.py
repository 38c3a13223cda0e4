"""Figures: CAM overlays on the photo (Captum's ``visualize_image_attr``), a
method-comparison grid and insertion/deletion curves (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import Tensor


def normalize_map(cam: Tensor) -> np.ndarray:
    """Min-max normalises one (1, h, w) or (h, w) map to [0, 1] (all-zero stays zero)."""
    cam = cam.detach().float().reshape(cam.shape[-2:])
    low, high = cam.min(), cam.max()
    scaled = (cam - low) / (high - low) if high > low else torch.zeros_like(cam)
    return scaled.cpu().numpy()


def upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (N, 1, h, w) maps to ``size``, as Captum does it."""
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")


def _pyplot() -> Any:  # matplotlib is imported lazily: it is an optional dependency
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay(ax: Any, image: np.ndarray, cam: Tensor | np.ndarray | None, alpha: float) -> None:
    """The photo, blended with the map's positive part by Captum's ``visualize_image_attr``
    (scaled to its 98th cumulative percentile, as Captum does)."""
    if cam is None or not np.any(np.asarray(_as_tensor(cam)) > 0):
        ax.imshow(image)
        return
    from captum.attr import visualization

    attr = np.asarray(_as_tensor(cam).detach().float().cpu().reshape(cam.shape[-2:]))[..., None]
    visualization.visualize_image_attr(
        attr,
        image,
        method="blended_heat_map",
        sign="positive",
        cmap="jet",
        alpha_overlay=alpha,
        plt_fig_axis=(ax.figure, ax),
        use_pyplot=False,
    )


def _as_tensor(cam: Tensor | np.ndarray) -> Tensor:
    return cam if isinstance(cam, Tensor) else torch.from_numpy(np.asarray(cam))


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def overlay_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    path: str | Path,
    title: str | None = None,
    alpha: float = 0.5,
    max_columns: int = 5,
) -> Path:
    """Writes a figure: the photo, then the photo overlaid with each map.

    Args:
        image: (H, W, 3) RGB image in [0, 1].
        maps: panel title -> (1, 1, H, W) or (H, W) map at the image's size.
        path: where to write the figure (PNG); parent folders are created.
        title: optional figure title.
        alpha: opacity of the heat map.
        max_columns: panels per row; more panels wrap to further rows.

    Returns:
        The path written.
    """
    plt = _pyplot()
    panels = [("input", None), *maps.items()]
    columns = min(len(panels), max_columns)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (name, cam) in zip(axes.flat, panels, strict=False):
        _overlay(ax, image, cam, alpha)
        ax.set_title(name)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def comparison_figure(
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, Tensor | np.ndarray]]],
    path: str | Path,
    alpha: float = 0.5,
) -> Path:
    """Writes a method-comparison grid: one row per image, one column per method.

    Args:
        rows: (row label, (H, W, 3) image in [0, 1], method -> map at the image's size);
            every row must have the same methods.
        path: where to write the figure (PNG).
        alpha: opacity of the heat map.

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError("comparison_figure needs at least one row.")
    methods = list(rows[0][2])
    plt = _pyplot()
    shape = (len(rows), len(methods) + 1)
    fig, axes = plt.subplots(*shape, figsize=(2.2 * shape[1], 2.3 * shape[0]), squeeze=False)
    for r, (label, image, maps) in enumerate(rows):
        if list(maps) != methods:
            raise ValueError(f"Row {label!r} has methods {list(maps)}, expected {methods}.")
        _overlay(axes[r, 0], image, None, alpha)
        axes[r, 0].set_title(label, fontsize=8)
        for c, method in enumerate(methods, start=1):
            _overlay(axes[r, c], image, maps[method], alpha)
            if r == 0:
                axes[r, c].set_title(method, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


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
    return _save(fig, path)
