"""A WeightsCache shared by explain calls: perturbation CAMs compute their channel
weights once per image, and the maps are bit for bit those computed without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SmallCNN
from torch import nn

from captum_fdcam.evaluation import Job, MapCache, WeightsCache, explain, score

LAYER = "features.3"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(image_size=16).eval()


def _image(seed: int) -> np.ndarray:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).numpy()


class _Counter:
    """Counts the model's forward calls (one per batch of perturbed copies)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1


#: Table I's Score-CAM, then FG-Score-CAM(-D) at the input and at a shallower layer:
#: what the benchmark computes for one image, all over Score-CAM at LAYER.
CALLS = [
    {"method": "Score-CAM"},
    {"method": "FG-Score-CAM"},
    {"method": "FG-Score-CAM", "fg_kwargs": {"denoise": True}},
    {"method": "FG-Score-CAM", "fg_layer": "features.0"},
    {"method": "FG-Score-CAM", "fg_layer": "features.0", "fg_kwargs": {"denoise": True}},
]


def test_the_maps_are_those_without_the_cache_and_the_weights_are_computed_once() -> None:
    model, x, y = _model(), _image(1), np.array([2])
    options = {"perturbations_per_eval": 1}  # one forward call per channel: countable
    common = {"layer": LAYER, "attribute_kwargs": options}
    alone = [explain(model, x, y, **common, **c) for c in CALLS]
    cache = WeightsCache()
    counter = _Counter(model)
    try:
        shared = []
        for c in CALLS:
            before = counter.calls
            shared.append(explain(model, x, y, **common, weights_cache=cache, **c))
            if c is CALLS[0]:
                first = counter.calls - before
            else:
                # the FG-CAMs run the model once (their forward pass), not once per channel
                assert counter.calls - before == 1, c
    finally:
        counter.handle.remove()
    assert first > 12  # Score-CAM's own pass plus one per channel (12 at LAYER)
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (cache.misses, cache.hits) == (1, len(CALLS) - 1)


def test_another_image_target_layer_or_option_is_another_entry() -> None:
    model, cache = _model(), WeightsCache()
    x, other = _image(1), _image(2)
    runs = [
        (x, 2, LAYER, {}),
        (other, 2, LAYER, {}),  # another image
        (x, 3, LAYER, {}),  # another target
        (x, 2, "features.0", {}),  # another layer
        (x, 2, LAYER, {"baseline": 0.5}),  # another option
    ]
    for image, target, layer, options in runs:
        got = explain(
            model,
            image,
            np.array([target]),
            method="Score-CAM",
            layer=layer,
            method_kwargs=options,
            weights_cache=cache,
        )
        expected = explain(
            model, image, np.array([target]), method="Score-CAM", layer=layer, method_kwargs=options
        )
        np.testing.assert_array_equal(got, expected)
    assert (cache.misses, cache.hits) == (len(runs), 0)


def test_gradient_cams_are_left_alone_and_the_cache_is_bounded() -> None:
    model, cache = _model(), WeightsCache(maxsize=2)
    explain(model, _image(1), [2], method="Grad-CAM", layer=LAYER, weights_cache=cache)
    assert len(cache) == 0 and cache.misses == 0  # one backward pass: nothing to share
    for seed in range(4):
        explain(model, _image(seed), [1], method="FD-CAM", layer=LAYER, weights_cache=cache)
    assert len(cache) == 2 and cache.misses == 4
    with pytest.raises(ValueError, match="maxsize"):
        WeightsCache(maxsize=0)


def test_the_cache_changes_no_score() -> None:
    model, x, y = _model(), _image(3), np.array([1])
    cache = WeightsCache()
    job = Job("FG-Score-CAM", "FG-Score-CAM", LAYER, metrics=("insertion", "deletion"))
    base = Job("Score-CAM", "Score-CAM", LAYER, metrics=("insertion", "deletion"))
    score(model, base, x, y, weights_cache=cache)
    assert score(model, job, x, y, weights_cache=cache) == score(model, job, x, y)
    assert cache.hits == 1
    # another model (other weights) gives another feature map: no entry is reused
    torch.manual_seed(5)
    other = SmallCNN(image_size=16).eval()
    assert score(other, base, x, y, weights_cache=cache) == score(other, base, x, y)
    assert cache.hits == 1


def test_a_map_cache_computes_a_map_once_for_several_metrics() -> None:
    model, cache = _model(), MapCache()
    x, other, y = _image(4), _image(5), np.array([0])
    ins = Job("FD-CAM", "FD-CAM", LAYER, metrics=("insertion",))
    dele = Job("FD-CAM", "FD-CAM", LAYER, metrics=("deletion",))
    grouped = Job("FD-CAM", "FD-CAM", LAYER, {"group_fraction": 0.5}, metrics=("deletion",))
    assert score(model, ins, x, y, map_cache=cache) == score(model, ins, x, y)
    assert score(model, dele, x, y, map_cache=cache) == score(model, dele, x, y)
    assert (cache.misses, cache.hits) == (1, 1)
    # another image, another class, other options: other maps
    assert score(model, dele, other, y, map_cache=cache) == score(model, dele, other, y)
    assert score(model, dele, x, y + 1, map_cache=cache) == score(model, dele, x, y + 1)
    assert score(model, grouped, x, y, map_cache=cache) == score(model, grouped, x, y)
    assert (cache.misses, cache.hits) == (4, 1)
    # a hit is a copy: changing what was returned changes no later hit
    a = cache.lookup("k", lambda: np.zeros(3))
    a[:] = 1
    assert cache.lookup("k", lambda: np.ones(3)).sum() == 0


def test_two_models_with_one_trunk_share_nothing() -> None:
    """A fine-tuned head over the same trunk: equal inputs, activations and targets,
    other weights and other maps. Neither cache may hand one model's result to the
    other."""
    first = _model()
    second = _model()
    with torch.no_grad():
        second.head[-1].weight.mul_(-1.0)  # the same trunk, another head
    x, y = _image(6), np.array([1])
    weights, maps = WeightsCache(), MapCache()
    job = Job("Score-CAM", "Score-CAM", LAYER, metrics=("deletion",))
    for model in (first, second):
        got = explain(model, x, y, method="Score-CAM", layer=LAYER, weights_cache=weights)
        np.testing.assert_array_equal(got, explain(model, x, y, method="Score-CAM", layer=LAYER))
        assert score(model, job, x, y, map_cache=maps) == score(model, job, x, y)
    assert weights.hits == 0 and weights.misses == 2
    assert maps.hits == 0 and maps.misses == 2
