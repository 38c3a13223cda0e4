"""Channel weights of perturbation CAMs, and maps, computed once per image.

Score-CAM's weights cost one forward pass per channel (1280 at the offline model's
``head_activation``). The paper tables explain the same image with the same base CAM
many times: Table I's Score-CAM, then FG-Score-CAM and FG-Score-CAM-D at three depths and
at the input, all from the same weights at the same layer. A :class:`WeightsCache`
handed to several :func:`~captum_fdcam.evaluation.explain` calls computes them once,
and computes the target-independent passes behind them once per image whatever the
targets (one image explained for each of a mosaic's cells, or for several labels); a
:class:`MapCache` handed to several :func:`~captum_fdcam.evaluation.score` calls
computes each map once for all the metrics that score it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import Tensor

from captum_fdcam._core.base import CamState, WeightedLayerCam
from captum_fdcam._core.perturbation import PassStore, digest

T = TypeVar("T")


class _Bounded:
    """The ``maxsize`` latest values by key; a hit returns a copy, so that what the
    caller does with it cannot change what a later hit returns."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be positive, got {maxsize}.")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[Hashable, Any] = OrderedDict()
        self._models: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._store)

    def model_key(self, model: Any) -> int:
        """A key part naming ``model``: two models never share entries, even with equal
        inputs, activations and targets (a fine-tuned head over a shared trunk). The
        cache keeps a reference to each model it has seen, so an id is never reused
        while the cache lives."""
        self._models.setdefault(id(model), model)
        return id(model)

    def lookup(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``, else ``compute()`` stored under it."""
        found = self._store.get(key)
        if found is not None:
            self.hits += 1
            self._store.move_to_end(key)
            return _copy(found)
        self.misses += 1
        value = compute()
        self._store[key] = _copy(value)
        while len(self._store) > self.maxsize:
            self._store.popitem(last=False)
        return value


def _copy(value: T) -> T:
    if isinstance(value, Tensor):
        return value.detach().clone()  # type: ignore[return-value]
    return value.copy()  # type: ignore[attr-defined]


class WeightsCache(_Bounded):
    """The channel weights of perturbation CAMs, memoized per method, layer, options,
    inputs, feature map, target and ``perturbations_per_eval``, keeping the ``maxsize``
    latest; and the outputs of the target-independent passes behind them
    (:attr:`passes`, up to ``pass_bytes`` bytes of them, the oldest dropped first).

    Weights are per target; the passes are not: Score-CAM's masked inputs and baseline,
    Ablation-CAM's and FD-CAM's switched copies give every class's score at once. A
    call for an image already explained for another target (same method, layer,
    options, model and ``perturbations_per_eval``, and the same feature map) reads its
    target's scores from the stored outputs instead of running the passes again: one
    image explained for 4 targets in 4 calls costs 4 reference passes and one set of
    perturbation passes.

    Scoped to whoever creates it: pass one to the :func:`explain` calls of one run
    (the benchmark makes one per run); nothing is cached between runs or processes.
    A hit returns a copy of what the method computed for the same key, and stored
    outputs are those the passes give, so the maps are bit for bit those computed
    without it.
    """

    def __init__(self, maxsize: int = 256, pass_bytes: int = 256 * 2**20) -> None:
        super().__init__(maxsize)
        #: The outputs of target-independent passes, shared across targets.
        self.passes = PassStore(pass_bytes)

    def attach(self, cam: WeightedLayerCam[Any], tag: Hashable) -> None:
        """Memoize ``cam.weights`` on this instance only (its class is untouched), and
        let its perturbation passes use :attr:`passes`. ``tag`` names the method, its
        layer and its options (and the model): weights and passes are shared only
        between CAMs of the same tag."""
        compute = cam.weights

        def weights(state: CamState) -> Tensor:
            engine = getattr(state, "engine", None)
            key = (
                tag,
                digest(state.inputs),
                digest(state.additional_forward_args),
                digest(state.activation),
                digest(state.target),
                None if engine is None else engine.perturbations_per_eval,
            )

            def computed() -> Tensor:
                if engine is not None:
                    engine.store, engine.store_tag = self.passes, tag
                return compute(state)

            return self.lookup(key, computed)

        # An instance attribute shadows the method for this object only.
        cam.weights = weights  # type: ignore[method-assign]


class MapCache(_Bounded):
    """Maps (numpy arrays) by what they explain, keeping the ``maxsize`` latest
    (``lookup(key, compute)``: the map stored under ``key``, else ``compute()``): tables
    that score the same method's map of the same image with different metrics (GridPG
    and Quantus's localisation metrics on the same mosaic cells) compute it once.

    Scoped to whoever creates it, as :class:`WeightsCache`.
    """

    def __init__(self, maxsize: int = 64) -> None:
        super().__init__(maxsize)
