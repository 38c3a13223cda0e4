"""Division by zero and min-max normalisation, as every method and figure does them."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, with 0 where the denominator is 0."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1), 0)


def min_max(
    values: Tensor,
    dims: int | tuple[int, ...] | None = None,
    *,
    bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Min-max normalisation to [0, 1]; a constant slice gives zeros, not NaN.

    Args:
        values: any shape.
        dims: the dimensions over which minimum and maximum are taken (``None``: all),
            e.g. ``(1, 2)`` to normalise each of M maps (M, H, W) on its own.
        bounds: ``(low, high)`` to use instead of the minimum and maximum of
            ``values``, broadcastable to it (Group-CAM normalises its maps at the
            layer by the range of their upsampled versions).

    Returns:
        ``(values - low) / (high - low)``, the shape of ``values``.
    """
    if bounds is not None:
        low, high = bounds
    elif dims is None:
        low, high = values.min(), values.max()
    else:
        low, high = values.amin(dim=dims, keepdim=True), values.amax(dim=dims, keepdim=True)
    return safe_divide(values - low, (high - low).expand_as(values))
