"""2x2 mosaics for the grid pointing game (GridPG, Böhle et al. / Rao et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GridMosaics:
    """Mosaics ready for :class:`~captum_fdcam.evaluation.GridPointingGame`.

    Each mosaic appears four times, once per cell, so that every cell's class is
    explained and scored.

    Attributes:
        x_batch: (4M, C, 2H, 2W) mosaics.
        y_batch: (4M,) the class of the explained cell.
        s_batch: (4M, 1, 2H, 2W) the mask of the explained cell.
        sources: (M, 4) the index in the given images of each cell's image
            (top-left, top-right, bottom-left, bottom-right).
    """

    x_batch: np.ndarray
    y_batch: np.ndarray
    s_batch: np.ndarray
    sources: np.ndarray


@torch.no_grad()
def confident_indices(
    model: nn.Module, images: Tensor, labels: Tensor, threshold: float, batch_size: int = 32
) -> np.ndarray:
    """Indices of the images the model classifies correctly with probability >= threshold."""
    keep = []
    for start in range(0, len(images), batch_size):
        probabilities = model(images[start : start + batch_size]).softmax(dim=1)
        top, predicted = probabilities.max(dim=1)
        good = (predicted == labels[start : start + batch_size]) & (top >= threshold)
        keep.extend((start + torch.nonzero(good).flatten()).tolist())
    return np.asarray(keep, dtype=np.int64)


def grid_mosaics(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    n_mosaics: int,
    threshold: float = 0.5,
    seed: int = 0,
) -> GridMosaics:
    """Builds 2x2 mosaics of confidently classified images of four distinct classes.

    Args:
        model: the classifier (eval mode); it must accept inputs of twice the
            images' height and width (any model with adaptive pooling does).
        images: (N, C, H, W) preprocessed images, on the model's device.
        labels: (N,) their classes.
        n_mosaics: how many mosaics to build (fewer if the confident images run
            out of distinct classes).
        threshold: the minimum softmax probability of the true class.
        seed: seeds the choice and order of images.

    Returns:
        The mosaics, one entry per cell (see :class:`GridMosaics`).
    """
    x = torch.as_tensor(images)
    y = torch.as_tensor(labels).to(device=x.device, dtype=torch.long)
    pool = confident_indices(model, x, y, threshold)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index in rng.permutation(pool):
        by_class.setdefault(int(y[index]), []).append(int(index))
    sources = []
    while len(sources) < n_mosaics:
        classes = [c for c, items in by_class.items() if items]
        if len(classes) < 4:
            break
        chosen = rng.choice(classes, size=4, replace=False)
        sources.append([by_class[int(c)].pop() for c in chosen])
    if not sources:
        raise ValueError(
            f"Fewer than four classes have an image classified with probability >= {threshold}: "
            "no mosaic can be built."
        )
    c, h, w = x.shape[1:]
    xs, ys, ss = [], [], []
    for quad in sources:
        mosaic = torch.zeros(c, 2 * h, 2 * w, dtype=x.dtype)
        for cell, index in enumerate(quad):
            row, col = divmod(cell, 2)
            mosaic[:, row * h : (row + 1) * h, col * w : (col + 1) * w] = x[index].cpu()
        for cell, index in enumerate(quad):
            row, col = divmod(cell, 2)
            mask = np.zeros((1, 2 * h, 2 * w), dtype=np.float32)
            mask[:, row * h : (row + 1) * h, col * w : (col + 1) * w] = 1
            xs.append(mosaic.numpy())
            ys.append(int(y[index]))
            ss.append(mask)
    return GridMosaics(
        x_batch=np.stack(xs),
        y_batch=np.asarray(ys, dtype=np.int64),
        s_batch=np.stack(ss),
        sources=np.asarray(sources, dtype=np.int64),
    )
