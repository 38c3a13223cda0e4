"""One value per pixel from attributions: the channel sum every metric ranks by."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")


def channel_sum(a: Array) -> Array:
    """Attributions summed over their channel axis, kept as a size-one axis.

    Args:
        a: (..., C, H, W) attributions, numpy or torch (input methods give one map per
            colour channel, some of Captum's layer methods one per feature channel), or an
            (H, W) map.

    Returns:
        (..., 1, H, W) of ``a``'s type and dtype; ``a`` itself when C is 1 or ``a`` is
        (H, W).
    """
    if a.ndim < 3 or a.shape[-3] == 1:
        return a
    return a.sum(axis=-3, keepdims=True)
