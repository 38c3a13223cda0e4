"""``show_progress`` of the perturbation CAMs: Captum's progress bar, once in the engine.

* the bar's total is the number of perturbed copies the method really evaluates (with
  ``perturbations_per_eval=1``: the model's forward calls after the reference pass) and
  it ends full, whatever ``perturbations_per_eval`` (it counts copies, not calls);
* the maps are the same with and without the bar;
* it is off by default: nothing is written;
* it goes to stderr, titled with the method's name, its postfix naming the copies;
* FG-CAM passes it to a perturbation base CAM (one bar, the base CAM's), ignores it over
  a gradient base CAM; FD-CAM's ``channel_scores`` takes it too;
* weights found in a ``WeightsCache`` evaluate nothing and show no bar;
* the gradient CAMs keep Captum's ``LayerGradCam`` signature, without it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import SmallCNN
from torch import Tensor

from captum_fdcam import (
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerFGCam,
    LayerGradCam,
    LayerGroupCam,
    LayerScoreCam,
)
from captum_fdcam.evaluation.memo import WeightsCache

N, K = 2, 12  # examples; channels of SmallCNN's features[3]
TARGETS = [1, 3]

#: name -> (class, constructor options, the bar's postfix). Group-CAM's blur fits 8 px.
METHODS: dict[str, tuple[type, dict[str, Any], str]] = {
    "Score-CAM": (LayerScoreCam, {}, "masked inputs and baseline"),
    "Group-CAM": (LayerGroupCam, {"groups": 4, "blur_kernel_size": 5}, "masked and blurred"),
    "Ablation-CAM": (LayerAblationCam, {}, "switched copies"),
    "FD-CAM": (LayerFDCam, {}, "switched copies"),
}
#: Copies each method evaluates on this model: no two masks or switched copies coincide
#: (Score-CAM: K masks and the baseline per example; Ablation-CAM: K; FD-CAM: 2K, its
#: 5% groups being single channels at K = 12). Group-CAM's are counted by the hook only.
EXPECTED = {"Score-CAM": N * (K + 1), "Ablation-CAM": N * K, "FD-CAM": N * 2 * K}


@pytest.fixture
def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def x() -> Tensor:
    torch.manual_seed(2)  # Group-CAM's maps are not constant for these targets
    return torch.randn(N, 3, 8, 8)


def make(name: str, model: SmallCNN) -> Any:
    cls, options, _ = METHODS[name]
    return cls(model, model.features[3], **options)


class _Calls:
    """Counts the model's forward calls (each a batch of copies of one example)."""

    def __init__(self, model: SmallCNN) -> None:
        self.model, self.count = model, 0

    def __enter__(self) -> _Calls:
        self.handle = self.model.register_forward_hook(lambda *_: self._add())
        return self

    def _add(self) -> None:
        self.count += 1

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def run(cam: Any, x: Tensor, **kwargs: Any) -> Tensor:
    return cam.attribute(x, TARGETS, **kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_the_bar_counts_the_forward_passes_that_run(
    name: str, model: SmallCNN, x: Tensor, bars: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with _Calls(model) as calls:
        run(make(name, model), x, perturbations_per_eval=1, show_progress=True)
    (bar,) = bars
    # One copy per call; the first call is the reference pass (and backward), not counted.
    # (Ablation-CAM's and FD-CAM's first call per example also carries the unswitched
    # activation, checking that running only the network after the layer reproduces it.)
    assert bar.total == calls.count - 1
    assert bar.n == bar.total, f"the bar ends at {bar.n}/{bar.total}"
    assert bar.total == EXPECTED.get(name, bar.total)
    if name == "Group-CAM":
        assert N + 1 < bar.total <= N * (4 + 1)  # the blurred input and at most G masks
    assert bar.desc == name
    err = capsys.readouterr().err
    assert f"{bar.total}/{bar.total}" in err and "100%" in err and METHODS[name][2] in err


@pytest.mark.parametrize("name", METHODS)
def test_maps_and_total_do_not_depend_on_the_bar_or_the_batching(
    name: str, model: SmallCNN, x: Tensor, bars: list[Any]
) -> None:
    cam = make(name, model)
    plain = run(cam, x, perturbations_per_eval=5)
    assert not bars
    shown = run(cam, x, perturbations_per_eval=5, show_progress=True)
    assert torch.equal(plain, shown)
    run(cam, x, perturbations_per_eval=1, show_progress=True)
    batched, single = bars
    assert batched.total == single.total, "the bar counts copies, not forward calls"
    assert batched.n == batched.total


@pytest.mark.parametrize("name", METHODS)
def test_off_by_default_and_on_stderr(
    name: str, model: SmallCNN, x: Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    cam = make(name, model)
    run(cam, x)
    run(cam, x, show_progress=False)
    assert capsys.readouterr() == ("", "")
    run(cam, x, show_progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{name}:" in err and "100%" in err


@pytest.mark.parametrize("name", ["Score-CAM", "FD-CAM"])
@pytest.mark.parametrize("at_input", [True, False], ids=["FGCam", "LayerFGCam"])
def test_fg_cam_shows_its_base_cams_bar(
    name: str, at_input: bool, model: SmallCNN, x: Tensor, bars: list[Any]
) -> None:
    base = make(name, model)
    fg_cam = FGCam(base) if at_input else LayerFGCam(base, model.features[0])
    plain = fg_cam.attribute(x, TARGETS)
    assert not bars
    shown = fg_cam.attribute(x, TARGETS, show_progress=True)
    (bar,) = bars
    assert bar.desc == name and bar.total == EXPECTED[name] and bar.n == bar.total
    assert torch.equal(plain, shown)


def test_fg_cam_over_a_gradient_cam_ignores_it(
    model: SmallCNN, x: Tensor, bars: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fg_cam = FGCam(LayerGradCam(model, model.features[3]))
    assert torch.equal(
        fg_cam.attribute(x, TARGETS), fg_cam.attribute(x, TARGETS, show_progress=True)
    )
    assert not bars and capsys.readouterr().err == ""


def test_gradient_cams_keep_captums_signature(model: SmallCNN, x: Tensor) -> None:
    with pytest.raises(TypeError, match="show_progress"):
        LayerGradCam(model, model.features[3]).attribute(x, TARGETS, show_progress=True)


def test_fd_cam_channel_scores(model: SmallCNN, x: Tensor, bars: list[Any]) -> None:
    cam = make("FD-CAM", model)
    plain = cam.channel_scores(x, TARGETS)
    shown = cam.channel_scores(x, TARGETS, show_progress=True)
    (bar,) = bars
    assert bar.desc == "FD-CAM" and bar.total == bar.n == EXPECTED["FD-CAM"]
    assert torch.equal(plain, shown)


@pytest.mark.parametrize("name", ["Score-CAM", "Ablation-CAM", "FD-CAM"])
def test_a_weights_cache_hit_shows_no_bar(
    name: str,
    model: SmallCNN,
    x: Tensor,
    bars: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cam = make(name, model)
    cache = WeightsCache()
    cache.attach(cam, name)
    first = run(cam, x, show_progress=True)
    (bar,) = bars
    assert bar.n == bar.total == EXPECTED[name] and cache.misses == 1
    capsys.readouterr()
    again = run(cam, x, show_progress=True)
    assert cache.hits == 1
    assert len(bars) == 1 and capsys.readouterr().err == "", "a hit evaluates nothing"
    assert torch.equal(first, again)
