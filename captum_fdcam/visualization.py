"""Figures: CAM overlays on the photo, one panel per method (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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


def overlay_figure(
    image: np.ndarray,
    maps: Mapping[str, Tensor],
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("input", None), *maps.items()]
    columns = min(len(panels), max_columns)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (name, cam) in zip(axes.flat, panels, strict=False):
        ax.imshow(image)
        if cam is not None:
            ax.imshow(normalize_map(cam), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(name)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
