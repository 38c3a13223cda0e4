"""Several targets for one input: the perturbation CAMs' target-independent passes run once.

Score-CAM's masked inputs and baseline, Group-CAM's blurred input, Ablation-CAM's and
FD-CAM's switched copies give every class's score at once. A batch holding one image
several times with different targets (the rows of one image for several classes, a
GridPG mosaic for each of its cells' classes) evaluates them once, and so do calls
for the same image through one ``WeightsCache``:

* the maps are bit for bit those of one target at a time (``torch.equal``), for each
  method and ``score=`` option, on a small CNN and on ResNet-18, and through FG-CAM;
* the model runs on as many rows for 4 targets as for 1, plus what is per target
  (Group-CAM's masks, which come from the target's gradient; FG-CAM's propagation);
* different images, or the same image with different additional arguments, in one
  batch are not merged;
* the progress bar counts the passes that run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from conftest import SmallCNN
from torch import Tensor, nn

import captum_fdcam._core.perturbation as perturbation
from captum_fdcam import (
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerFGCam,
    LayerGroupCam,
    LayerScoreCam,
)
from captum_fdcam.errors import ConstantMapWarning
from captum_fdcam.evaluation import WeightsCache, explain

TARGETS = [0, 3, 4, 2]

#: name -> (class, constructor options). The papers' defaults (Group-CAM's blur too).
METHODS: dict[str, tuple[type, dict[str, Any]]] = {
    "Score-CAM": (LayerScoreCam, {}),
    "Group-CAM": (LayerGroupCam, {}),
    "Ablation-CAM": (LayerAblationCam, {}),
    "FD-CAM": (LayerFDCam, {}),
}


def _small() -> tuple[nn.Module, str, Tensor]:
    torch.manual_seed(0)
    model = SmallCNN(image_size=32).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, "features.3", x


def _resnet() -> tuple[nn.Module, str, Tensor]:
    """ResNet-18, random weights, 40 px: layer4 is 512 x 2 x 2."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    return model, "layer4", x


MODELS = {"small": _small, "resnet18": _resnet}
#: Every (model, method); Score-CAM on ResNet-18 (513 passes a set, ~3 s) is slow.
CASES = [
    pytest.param(
        model,
        name,
        id=f"{model}-{name}",
        marks=pytest.mark.slow if (model, name) == ("resnet18", "Score-CAM") else (),
    )
    for model in MODELS
    for name in METHODS
]


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def _cam(name: str, model: nn.Module, layer: str, **options: Any) -> Any:
    cls, defaults = METHODS[name]
    return cls(model, _layer(model, layer), **{**defaults, **options})


class _Rows:
    """Counts the rows (images, copies) the model runs on, call by call."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rows: list[int] = []

    @contextmanager
    def counting(self) -> Iterator[list[int]]:
        """The rows of each forward call inside the block."""
        calls: list[int] = []
        handle = self.model.register_forward_pre_hook(
            lambda _m, args: calls.append(args[0].shape[0])
        )
        try:
            yield calls
        finally:
            handle.remove()


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # random weights at a small size: some maps are constant, which they say
        warnings.simplefilter("ignore", ConstantMapWarning)
        yield


def _alone_and_batched(
    attribute: Any, x: Tensor, rows: _Rows
) -> tuple[list[Tensor], list[int], Tensor, list[int]]:
    """The maps of one target per call and their rows run, then of all targets in one
    batch of copies of ``x`` and its rows run."""
    singles, single_rows = [], []
    with _quiet():
        for t in TARGETS:
            with rows.counting() as calls:
                singles.append(attribute(x, target=t))
            single_rows.append(sum(calls))
        with rows.counting() as calls:
            batched = attribute(x.repeat(len(TARGETS), 1, 1, 1), target=TARGETS)
    return singles, single_rows, batched, calls


def _per_target(name: str) -> bool:
    """Whether the method's perturbed copies depend on the target (Group-CAM's masks)."""
    return name == "Group-CAM"


@pytest.mark.parametrize(("model_name", "name"), CASES)
def test_one_batch_equals_one_target_at_a_time(model_name: str, name: str) -> None:
    model, layer, x = MODELS[model_name]()
    cam = _cam(name, model, layer)
    singles, single_rows, batched, calls = _alone_and_batched(cam.attribute, x, _Rows(model))
    assert torch.equal(batched, torch.cat(singles)), f"{name}: not bit for bit"
    assert len({tuple(m.flatten().tolist()) for m in singles}) > 1, "the targets differ"
    if _per_target(name):
        # One reference pass (1 row) and one blurred input for all; each target's masks.
        shared = 2
        assert sum(calls) == sum(single_rows) - shared * (len(TARGETS) - 1)
    else:
        assert len(set(single_rows)) == 1
        assert sum(calls) == single_rows[0], "4 targets run what 1 target runs"
    assert calls[0] == 1, "the reference pass runs once per distinct input"


@pytest.mark.parametrize(("model_name", "name"), CASES)
def test_explain_through_a_weights_cache_costs_one_target(model_name: str, name: str) -> None:
    model, layer, x = MODELS[model_name]()
    image, rows = x.numpy(), _Rows(model)
    common = {"method": name, "layer": layer}
    with _quiet():
        alone = [explain(model, image, [t], **common) for t in TARGETS]
        cache = WeightsCache()
        shared, counts = [], []
        for t in TARGETS:
            with rows.counting() as calls:
                shared.append(explain(model, image, [t], weights_cache=cache, **common))
            counts.append(sum(calls))
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a, b)
    if name == "Group-CAM":
        return  # explain shares the weights of weighted CAMs only: nothing to share here
    # The later calls run their reference pass (one row) and read the stored passes.
    assert counts[0] > 1 and counts[1:] == [1] * (len(TARGETS) - 1)
    kinds = 2 if name == "Score-CAM" else 1  # Score-CAM: masked inputs and baseline
    assert cache.passes.hits == kinds * (len(TARGETS) - 1)
    assert cache.misses == len(TARGETS) and cache.hits == 0  # the weights are per target


SCORES = [
    ("Score-CAM", "logit"),
    ("Score-CAM", "sigmoid"),
    ("Score-CAM", "probability"),
    ("Group-CAM", "logit"),
    ("Ablation-CAM", "probability"),
    ("Ablation-CAM", "sigmoid"),
    ("FD-CAM", "probability"),
    ("FD-CAM", "sigmoid"),
]


@pytest.mark.parametrize(("name", "score"), SCORES)
def test_every_score_unit_is_read_from_the_same_passes(name: str, score: str) -> None:
    """Probabilities of every class come from the same logits: still one set of passes.
    A repeated target, and ``perturbations_per_eval`` smaller than the copies."""
    model, layer, x = _small()
    cam = _cam(name, model, layer, score=score)
    targets = [1, 4, 1, 0]
    options = {"perturbations_per_eval": 5, "attr_dim_summation": False}
    singles = [cam.attribute(x, target=t, **options) for t in targets]
    batched = cam.attribute(x.expand(len(targets), -1, -1, -1), target=targets, **options)
    assert torch.equal(batched, torch.cat(singles))


@pytest.mark.parametrize("name", METHODS)
def test_different_images_are_not_merged(name: str) -> None:
    """Rows [A, B, A, B] for targets [s, s, t, t]: A's and B's passes run once each, and
    each row's map is that of a batch [A, B] for its target."""
    model, layer, a = _small()
    b = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pair = torch.cat([a, b])
    cam, rows = _cam(name, model, layer), _Rows(model)
    s, t = 1, 3
    with _quiet():
        with rows.counting() as first:
            by_s = cam.attribute(pair, target=[s, s])
        with rows.counting() as second:
            by_t = cam.attribute(pair, target=[t, t])
        with rows.counting() as calls:
            mixed = cam.attribute(torch.cat([pair, pair]), target=[s, s, t, t])
    assert torch.equal(mixed, torch.cat([by_s, by_t]))
    assert not torch.equal(mixed[0], mixed[1])
    assert calls[0] == 2, "the reference pass runs on A and B"
    if _per_target(name):
        # The blurred inputs and the reference pass of [A, B] once; the masks per target.
        assert sum(calls) == sum(first) + sum(second) - 2 - 2
    else:
        assert sum(calls) == sum(first) == sum(second)


class _Shifted(nn.Module):
    """A model with a per-example additional argument that shifts its output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, shift: Tensor) -> Tensor:
        return self.inner(x) + shift


@pytest.mark.parametrize("name", ["Score-CAM", "Ablation-CAM"])
def test_additional_arguments_are_part_of_the_input(name: str) -> None:
    """One image with two per-example arguments, each for two targets: two distinct
    inputs, each row's map that of the batch of both for its target."""
    inner, layer, x = _small()
    model = _Shifted(inner)
    cam = _cam(name, model, "inner." + layer)
    two = x.expand(2, -1, -1, -1)
    shifts = torch.tensor([[1.0], [2.0]])
    by_s = cam.attribute(two, target=[1, 1], additional_forward_args=(shifts,))
    by_t = cam.attribute(two, target=[3, 3], additional_forward_args=(shifts,))
    rows = _Rows(model)
    with rows.counting() as calls:
        batched = cam.attribute(
            torch.cat([two, two]),
            target=[1, 1, 3, 3],
            additional_forward_args=(torch.cat([shifts, shifts]),),
        )
    assert torch.equal(batched, torch.cat([by_s, by_t]))
    assert calls[0] == 2, "two distinct (input, argument) pairs"
    assert not torch.equal(batched[0], batched[1])


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("at_input", [True, False], ids=["FGCam", "LayerFGCam"])
def test_fg_cam_over_a_perturbation_cam(name: str, at_input: bool) -> None:
    model, layer, x = _small()
    base = _cam(name, model, layer)
    fg = FGCam(base) if at_input else LayerFGCam(base, model.features[0])
    singles, single_rows, batched, calls = _alone_and_batched(fg.attribute, x, _Rows(model))
    assert torch.equal(batched, torch.cat(singles)), f"FG-CAM over {name}: not bit for bit"
    # One forward pass per target (the propagation's, which the base CAM's reference pass
    # is); the base CAM's target-independent passes once.
    shared = single_rows[0] - 1 if not _per_target(name) else 1
    assert sum(calls) == sum(single_rows) - shared * (len(TARGETS) - 1)


@pytest.mark.parametrize("name", METHODS)
def test_the_bar_counts_the_passes_that_run(name: str, bars: list[Any]) -> None:
    model, layer, x = _small()
    cam, rows = _cam(name, model, layer), _Rows(model)
    with rows.counting() as calls:
        cam.attribute(
            x.expand(4, -1, -1, -1), TARGETS, perturbations_per_eval=1, show_progress=True
        )
    (bar,) = bars
    # One copy per call after the reference pass (a switched copy's first call also
    # carries the unswitched activation, checking the short-cut).
    assert bar.total == bar.n == len(calls) - 1
    if _per_target(name):
        return  # not a weighted CAM: the cache does not attach to it
    # Through a cache, a later target's passes are stored: nothing runs, no bar.
    cache = WeightsCache()
    cache.attach(cam, name)
    cam.attribute(x, 1, perturbations_per_eval=1, show_progress=True)
    assert len(bars) == 2 and bars[1].n == bars[1].total
    cam.attribute(x, 2, perturbations_per_eval=1, show_progress=True)
    assert len(bars) == 2 and cache.passes.hits > 0


def test_distinct_examples_compares_bits() -> None:
    x = torch.zeros(4, 3)
    x[1, 0] = -0.0  # equal to 0.0, other bits
    x[2] = torch.tensor([1.0, 2.0, 3.0])
    x[3] = torch.tensor([3.0, 2.0, 1.0])  # the same sum: a fingerprint collision
    assert perturbation.distinct_examples((x,)) == ([0, 1, 2, 3], [0, 1, 2, 3])
    assert perturbation.distinct_examples((x[[0, 2, 0, 2]],)) == ([0, 1], [0, 1, 0, 1])
    extra = (torch.tensor([1, 2, 1, 2]), "not per example")
    assert perturbation.distinct_examples((x[[0, 2, 0, 0]],), extra) == (
        [0, 1, 3],
        [0, 1, 0, 2],
    )


def test_a_model_in_training_mode_keeps_its_batch() -> None:
    """Batch statistics couple the rows: no example is merged (nor bit for bit)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 3, 6, 6))
    model.train()
    rows = _Rows(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with rows.counting() as calls:
            LayerAblationCam(model, model[1]).attribute(
                torch.randn(1, 3, 6, 6).expand(3, -1, -1, -1), [0, 1, 2]
            )
    assert calls[0] == 3


def test_the_stored_passes_are_bounded() -> None:
    store = perturbation.PassStore(max_bytes=100)
    small = perturbation.StoredPasses(torch.zeros(10))  # 40 bytes
    store.put("a", small)
    store.put("b", small)
    store.put("c", small)  # 120 bytes: the oldest goes
    assert len(store) == 2 and store.get("a") is None and store.get("c") is small
    store.put("d", perturbation.StoredPasses(torch.zeros(100)))  # larger than the store
    assert store.get("d") is None and store.nbytes == 80
    # A cache whose store takes nothing still gives the maps of one target at a time.
    model, layer, x = _small()
    cache = WeightsCache(pass_bytes=1)
    common = {"method": "Ablation-CAM", "layer": layer}
    for t in (1, 2):
        got = explain(model, x.numpy(), [t], weights_cache=cache, **common)
        np.testing.assert_array_equal(got, explain(model, x.numpy(), [t], **common))
    assert len(cache.passes) == 0 and cache.passes.hits == 0
