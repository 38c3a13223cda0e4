"""Channel weights of perturbation CAMs, computed once per image across several maps.

Score-CAM's weights cost one forward pass per channel (1280 at the offline model's
``head_activation``). The paper tables explain the same image with the same base CAM
many times: Table I's Score-CAM, then FG-Score-CAM and FG-Score-CAM-D at three depths and
at the input, all from the same weights at the same layer. A :class:`WeightsCache`
handed to several :func:`~captum_fdcam.evaluation.explain` calls computes them once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from captum_fdcam._core.base import CamState, WeightedLayerCam


def digest(value: Any) -> str:
    """A hash of tensors' shapes, dtypes and values (nested in tuples / lists), or of
    the ``repr`` of anything else."""
    h = hashlib.blake2b(digest_size=16)

    def add(v: Any) -> None:
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            # numpy has no bfloat16: its values are exact in float32
            h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        elif isinstance(v, tuple | list):
            h.update(f"S{len(v)}".encode())
            for x in v:
                add(x)
        else:
            h.update(repr(v).encode())

    add(value)
    return h.hexdigest()


class WeightsCache:
    """The channel weights of perturbation CAMs, memoized per method, layer, options,
    inputs, feature map and target, keeping the ``maxsize`` latest.

    Scoped to whoever creates it: pass one to the :func:`explain` calls of one run
    (the benchmark makes one per run); nothing is cached between runs or processes.
    A hit returns a copy of what the method computed for the same key, so the maps are
    bit for bit those computed without it.
    """

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be positive, got {maxsize}.")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[tuple[Hashable, ...], Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def attach(self, cam: WeightedLayerCam[Any], tag: Hashable) -> None:
        """Memoize ``cam.weights`` on this instance only (its class is untouched).
        ``tag`` names the method, its layer and its options: weights are shared only
        between CAMs of the same tag."""
        compute = cam.weights

        def weights(state: CamState) -> Tensor:
            key = (
                tag,
                digest(state.inputs),
                digest(state.additional_forward_args),
                digest(state.activation),
                digest(state.target),
            )
            found = self._store.get(key)
            if found is not None:
                self.hits += 1
                self._store.move_to_end(key)
                return found.clone()
            self.misses += 1
            value = compute(state)
            self._store[key] = value.detach().clone()
            while len(self._store) > self.maxsize:
                self._store.popitem(last=False)
            return value

        # An instance attribute shadows the method for this object only.
        cam.weights = weights  # type: ignore[method-assign]
