"""From a layer's output to the (N, C, h, w) feature map a CAM explains, and back.

A CAM weighs the channels of a 4-D feature map. A vision transformer's layer gives
tokens (N, 1 + h w, C) and Swin's gives a channels-last map (N, h, w, C): a
``reshape_transform`` (the convention of ``pytorch-grad-cam``) says how they become
(N, C, h, w). Here the transform is read once per call as an *index map*: applied to
a tensor holding each value's own position, it tells which value of the layer's
output lands at each position of the feature map. Then

* the feature map and its gradient are gathers of the layer's output and of its
  gradient (the gradient of the target with respect to the map is the gradient with
  respect to the values it was taken from, which needs the transform to move values
  without combining them);
* a channel-switched copy of the map goes back through the inverse layout by a
  scatter into the layer's own output: values the transform drops (the class token)
  keep their value, so Ablation-CAM and FD-CAM can still run only the network after
  the layer.

A transform that combines values (averaging heads, scaling) has no such inverse and
is refused with an error that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Union

import torch
from torch import Tensor

from captum_fdcam.errors import FeatureMapError
from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

MOVES_ONLY = (
    "does more than move values (its output must be some of its input's values, each "
    "used once, rearranged: not scaled, combined or duplicated)"
)

#: The ready transforms of :mod:`captum_fdcam.reshape`, whose ``inverse`` from_map uses.
_KNOWN = (ChannelsLastToFirst, TokensToGrid)

#: A callable from the layer's output (or input) to an (N, C, h, w) feature map.
ReshapeTransform = Callable[[Tensor], Tensor]
#: What the CAMs' ``reshape_transform`` takes: a transform, ``"auto"`` (read from the
#: model, see :mod:`captum_fdcam.architectures`) or ``None`` (the output is the map).
ReshapeSpec = Union[ReshapeTransform, Literal["auto"], None]  # noqa: UP007 - a runtime alias


class FeatureLayout:
    """The layer's own layout and the feature map's, for one ``attribute`` call.

    Args:
        transform: the user's ``reshape_transform``; ``None`` when the layer already
            gives (N, C, h, w) maps.
        layer_name: used in error messages.
    """

    def __init__(self, transform: ReshapeTransform | None, layer_name: str) -> None:
        self.transform = transform
        self.layer_name = layer_name
        #: For each value of an example's feature map (flattened), the position of
        #: the layer-output value it is (flattened); set by :meth:`check`.
        self._source: Tensor | None = None
        self._map_shape: tuple[int, ...] | None = None
        self._raw_shape: tuple[int, ...] | None = None

    def _fail(self, problem: str) -> FeatureMapError:
        return FeatureMapError(
            f"reshape_transform of layer {self.layer_name} {problem}. It must take the "
            "layer's output (N, ...) to an (N, C, h, w) feature map by moving values only "
            "(reshape, permute, transpose, slicing, dropping tokens), as "
            "captum_fdcam.reshape.TokensToGrid and ChannelsLastToFirst do."
        )

    def check(self, raw: Tensor, where: str) -> None:
        """Checks that ``raw`` (the layer's output or input) gives a 4-D feature map.

        With a transform, the first call also derives the index map and checks that
        the transform moves values without changing them.
        """
        resolve = getattr(self.transform, "resolve", None)
        if callable(resolve) and self._source is None:
            # reshape_transform="auto": the layout read from the model, for this output.
            self.transform = resolve(tuple(raw.shape))
        if self.transform is None:
            if raw.dim() != 4:
                raise FeatureMapError(
                    f"The {where} of layer {self.layer_name} has shape {tuple(raw.shape)}; "
                    "CAM methods need a 4-D (N, C, H, W) feature map: choose a "
                    "convolutional layer, or pass reshape_transform='auto' (the layout read "
                    "from the model: a vision transformer's tokens, Swin's channels-last "
                    "maps) or an explicit one such as captum_fdcam.reshape.TokensToGrid()."
                )
            return
        if raw.dim() == 0:
            raise self._fail(f"got a scalar {where}")
        shape = tuple(raw.shape[1:])
        if self._source is not None and shape == self._raw_shape:
            return
        per_example = 1
        for size in shape:
            per_example *= size
        # Positions are exact in float64 up to 2**53 values per example; MPS has no float64.
        dtype = torch.float32 if raw.device.type == "mps" else torch.float64
        if dtype == torch.float32 and per_example > 2**24:
            raise self._fail("cannot be traced on this device for so large an output")
        positions = torch.arange(per_example, dtype=dtype, device=raw.device).view(1, *shape)
        try:
            mapped = self.transform(positions)
        except Exception as err:  # the user's code: say where it failed
            raise self._fail(
                f"failed on a 1-example tensor of shape {(1, *shape)} ({err})"
            ) from err
        if not isinstance(mapped, Tensor) or mapped.dim() != 4 or mapped.shape[0] != 1:
            got = tuple(mapped.shape) if isinstance(mapped, Tensor) else type(mapped).__name__
            raise self._fail(f"returned {got} for an input of shape {(1, *shape)}")
        source = mapped.flatten()
        index = source.round().long()
        if (
            not torch.equal(index.to(dtype), source)
            or index.numel() == 0
            or bool((index < 0).any())
            or bool((index >= per_example).any())
            or torch.unique(index).numel() != index.numel()
        ):
            raise self._fail(MOVES_ONLY)
        self._source = index
        self._map_shape = tuple(mapped.shape[1:])
        self._raw_shape = shape
        # The index map says where values go; the real output confirms the transform
        # does nothing else to them (no scaling, no arithmetic).
        try:
            actual = self.transform(raw.detach())
        except Exception as err:
            raise self._fail(f"failed on the layer's {where} ({err})") from err
        if not isinstance(actual, Tensor) or not torch.equal(actual, self.to_map(raw.detach())):
            raise self._fail(MOVES_ONLY)

    def to_map(self, raw: Tensor) -> Tensor:
        """The (N, C, h, w) feature map of ``raw`` (N, ...): the layer's output or its
        gradient, in the layer's layout."""
        if self.transform is None:
            return raw
        assert self._source is not None and self._map_shape is not None
        return raw.flatten(1)[:, self._source].view(raw.shape[0], *self._map_shape)

    def from_map(self, raw: Tensor, maps: Tensor) -> Tensor:
        """``raw`` (1 or M, ...) with the values the map was taken from replaced by
        ``maps`` (M, C, h, w): switched copies in the layer's own layout."""
        if self.transform is None:
            return maps
        if isinstance(self.transform, _KNOWN):
            # The ready transforms know their inverse: a concatenation or a permute,
            # cheaper than the index map's scatter (the same values: tested).
            return self.transform.inverse(raw, maps)
        assert self._source is not None
        rows = maps.shape[0]
        out = raw.flatten(1).expand(rows, -1).clone()
        out[:, self._source] = maps.reshape(rows, -1).to(out.dtype)
        return out.view(rows, *raw.shape[1:])

    def switched(self, raw: Tensor, activation: Tensor, keep: Tensor) -> Tensor:
        """Channel-switched copies in the layer's own layout: ``raw`` (1, ...), the layer's
        output of one example, whose map is ``activation`` (K, h, w), with the map's
        channels kept where ``keep`` (M, K) is True and 0 elsewhere; (M, ...)."""
        if isinstance(self.transform, _KNOWN):
            # Masked where the channels are, in the layer's layout: no map to build and
            # scatter back (a permute's copy cost Swin-T as much as its head).
            return self.transform.switch_channels(raw, keep)
        copies = activation[None] * keep[:, :, None, None].to(activation.dtype)
        return self.from_map(raw, copies)

    def scatter(self, maps: Tensor, like: Tensor) -> Tensor:
        """``maps`` (N, C, h, w) put back in the layer's layout, 0 where the transform
        takes nothing (relevance of dropped tokens): shaped like ``like``."""
        return self.from_map(torch.zeros_like(like), maps) if self.transform else maps
