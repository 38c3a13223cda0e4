"""Ready ``reshape_transform`` callables for transformer layers.

Every CAM here takes ``reshape_transform=``, a callable from the layer's output to
an (N, C, h, w) feature map (the convention of ``pytorch-grad-cam``). It must only
move values (reshape, permute, slicing): the channel-switching methods put their
switched copies back through the inverse layout. Two layouts cover the common
vision transformers::

    from captum_fdcam import LayerFDCam
    from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

    # torchvision / timm ViT, DeiT (prefix_tokens=2), ViT with registers (1 + R)
    cam = LayerFDCam(vit, vit.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid())
    # torchvision Swin: (N, h, w, C) feature maps
    cam = LayerFDCam(swin, swin.norm, reshape_transform=ChannelsLastToFirst())
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import Tensor

from captum_fdcam._core.validation import check_integer, python_scalar
from captum_fdcam.errors import FeatureMapError


class TokensToGrid:
    """ViT-style tokens (N, P + h w, C) to a feature map (N, C, h, w).

    The first ``prefix_tokens`` tokens (the class token; DeiT's distillation token;
    registers) are dropped, and the patch tokens, in row-major order as patch
    embeddings produce them, are laid out on the grid.

    Args:
        prefix_tokens: tokens before the patch tokens. Default: 1 (the class token)
        grid_size: (h, w) of the patch grid, or one int for a square grid; ``None``
            (the default) takes the square root of the number of patch tokens.
    """

    def __init__(self, prefix_tokens: int = 1, grid_size: int | tuple[int, int] | None = None):
        self.prefix_tokens = check_integer("prefix_tokens", prefix_tokens, minimum=0)
        if grid_size is None:
            self.grid_size: tuple[int, int] | None = None
        else:
            single = isinstance(python_scalar(grid_size), Integral)
            sides = (grid_size, grid_size) if single else tuple(grid_size)
            if len(sides) != 2:
                raise ValueError(f"grid_size must be one int or (h, w), got {grid_size!r}.")
            h, w = (check_integer("grid_size", side) for side in sides)
            self.grid_size = (h, w)

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise FeatureMapError(
                f"TokensToGrid expects tokens of shape (N, tokens, C), got {tuple(tokens.shape)}."
            )
        n, count, channels = tokens.shape
        patches = count - self.prefix_tokens
        if self.grid_size is None:
            side = math.isqrt(max(patches, 0))
            if patches < 1 or side * side != patches:
                raise FeatureMapError(
                    f"{count} tokens less {self.prefix_tokens} prefix token(s) leave {patches} "
                    "patch tokens, not a square grid: pass grid_size=(h, w) or the right "
                    "prefix_tokens."
                )
            h = w = side
        else:
            h, w = self.grid_size
            if h * w != patches:
                raise FeatureMapError(
                    f"grid_size {h}x{w} needs {h * w} patch tokens, got {patches} "
                    f"({count} tokens less {self.prefix_tokens} prefix token(s))."
                )
        grid = tokens[:, self.prefix_tokens :].reshape(n, h, w, channels)
        return grid.permute(0, 3, 1, 2)

    def switch_channels(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """(M, P + h w, C) copies of ``tokens`` (1, P + h w, C) with the channels of the
        patch tokens kept where ``keep`` (M, C) is True and 0 elsewhere; the prefix
        tokens keep their values (as :meth:`inverse` of the switched map gives them)."""
        rows = keep.shape[0]
        prefix = tokens[:, : self.prefix_tokens].expand(rows, -1, -1)
        patches = tokens[:, self.prefix_tokens :] * keep[:, None, :].to(tokens.dtype)
        return torch.cat([prefix, patches], dim=1)

    def inverse(self, tokens: Tensor, grid: Tensor) -> Tensor:
        """``tokens`` (1 or M, P + h w, C) repeated for each map of ``grid`` (M, C, h, w),
        the patch tokens replaced by the map's values; the prefix tokens keep theirs."""
        rows = grid.shape[0]
        prefix = tokens[:, : self.prefix_tokens].expand(rows, -1, -1)
        patches = grid.flatten(2).transpose(1, 2).to(tokens.dtype)
        return torch.cat([prefix, patches], dim=1)

    def __repr__(self) -> str:
        return f"TokensToGrid(prefix_tokens={self.prefix_tokens}, grid_size={self.grid_size})"


class ChannelsLastToFirst:
    """A channels-last feature map (N, h, w, C), as Swin's stages give, to (N, C, h, w)."""

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise FeatureMapError(
                f"ChannelsLastToFirst expects (N, h, w, C), got shape {tuple(x.shape)}."
            )
        return x.permute(0, 3, 1, 2)

    def switch_channels(self, x: Tensor, keep: Tensor) -> Tensor:
        """(M, h, w, C) copies of ``x`` (1, h, w, C) with the channels kept where ``keep``
        (M, C) is True and 0 elsewhere: made in the layer's own layout, with no permute."""
        return x * keep[:, None, None, :].to(x.dtype)

    def inverse(self, x: Tensor, grid: Tensor) -> Tensor:
        """Maps ``grid`` (M, C, h, w) back to the layer's (M, h, w, C) layout (``x``, the
        layer's own output, gives the dtype)."""
        return grid.permute(0, 2, 3, 1).to(x.dtype).contiguous()

    def __repr__(self) -> str:
        return "ChannelsLastToFirst()"


__all__ = ["ChannelsLastToFirst", "TokensToGrid"]
