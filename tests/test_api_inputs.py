"""What the Python API accepts (issue 14, items 5 and 7).

* a batch of 0 is a clear error for every method;
* float16 and bfloat16 models work, with maps close to the float32 model's;
* options are checked in the constructor (type, finiteness, range), and Score-CAM's
  baseline against the inputs before the model runs;
* numpy integers (scalars, 0-d and 1-d arrays) work wherever Python ints do;
* the perturbation methods' progress bars count the passes that really run and end full.

Already covered elsewhere, so not repeated here: non-finite and non-floating inputs
(``test_robustness.py``, ``test_gradient_cams.py::test_non_floating_input``), bad targets
(``test_gradient_cams.py::test_bad_target``), the string options and ``groups=0``
(``test_perturbation_cams.py::test_bad_options``), ``singular_values`` out of range
(``test_fg_cam.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr._utils.lrp_rules import IdentityRule
from conftest import SmallCNN
from torch import Tensor, nn

import captum_fdcam._core.perturbation as perturbation
from captum_fdcam import (
    CLRP,
    METHODS,
    SGLRP,
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerFGCam,
    LayerGradCam,
    LayerGroupCam,
    LayerScoreCam,
    PropagationLRP,
)
from captum_fdcam.methods.switching import similarity_groups
from captum_fdcam.registry import cam_names

pytestmark = pytest.mark.usefixtures("one_thread")

PERTURBATION = list(cam_names("perturbation", "gradient+perturbation"))


def small_model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def make_cam(name: str, model: nn.Module, layer: nn.Module, **options: Any) -> Any:
    if name == "Group-CAM":  # the default blur (kernel 51) needs images of 26 px or more
        options = {"blur_kernel_size": 5, "blur_sigma": 2.0, **options}
    return METHODS[name](model, layer, **options)


# ================================================================== batch of 0

EVERY_ATTRIBUTION: dict[str, Callable[[nn.Module], Any]] = {
    **{name: (lambda m, n=name: make_cam(n, m, m.features[3])) for name in METHODS},
    "FG-CAM": lambda m: FGCam(LayerGradCam(m, m.features[3])),
    "LayerFG-CAM": lambda m: LayerFGCam(LayerGradCam(m, m.features[3]), m.features[0]),
    # SmallCNN's Tanh has no default LRP rule: relevance passes it unchanged.
    **{
        cls.__name__: (lambda m, c=cls: c(m, rules={nn.Tanh: IdentityRule}))
        for cls in (PropagationLRP, CLRP, SGLRP)
    },
}


@pytest.mark.parametrize("name", EVERY_ATTRIBUTION)
def test_batch_of_zero_is_a_clear_error(name: str) -> None:
    model = small_model()
    attribution = EVERY_ATTRIBUTION[name](model)
    with pytest.raises(ValueError, match=r"inputs have no examples \(batch of 0"):
        attribution.attribute(torch.randn(0, 3, 8, 8), target=0)


# ============================================================ float16, bfloat16


def _half_model(dtype: torch.dtype) -> tuple[SmallCNN, SmallCNN, Tensor]:
    """A model in ``dtype``, the same weights in float32, and inputs in ``dtype``."""
    model = small_model(0).to(dtype)
    x = torch.randn(2, 3, 8, 8).to(dtype)
    try:
        model(x)
    except RuntimeError as err:  # older PyTorch builds lack some half kernels on CPU
        pytest.skip(f"{dtype} not supported on this CPU build: {err}")
    # Cast back from the low precision: both models hold exactly the same numbers.
    return model, copy.deepcopy(model).float(), x


def _assert_close_to_float32(
    name: str, dtype: torch.dtype, low: SmallCNN, full: SmallCNN, x: Tensor
) -> None:
    got = make_cam(name, low, low.features[3]).attribute(x, [0, 3])
    assert got.dtype == dtype
    # The float32 terms w_k A^k: the error of a sum is bounded by its terms, not by the
    # (possibly cancelling) sum.
    terms = make_cam(name, full, full.features[3]).attribute(
        x.float(), [0, 3], attr_dim_summation=False
    )
    scale = terms.abs().sum(dim=1).max().item()
    assert scale > 0
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(
        got.float(), terms.sum(dim=1, keepdim=True), rtol=0, atol=8 * eps * scale
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fd_cam_in_half_precision_is_the_float32_map(dtype: torch.dtype) -> None:
    low, full, x = _half_model(dtype)
    _assert_close_to_float32("FD-CAM", dtype, low, full, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_similarity_groups_in_half_precision(dtype: torch.dtype) -> None:
    # torch.quantile refuses half dtypes; the groups are those of the same values in float32.
    torch.manual_seed(1)
    activation = torch.randn(40, 5, 5).relu().to(dtype)
    expected = similarity_groups(activation.float(), 0.1)
    assert torch.equal(similarity_groups(activation, 0.1), expected)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_cam_in_bfloat16_is_close_to_float32(name: str) -> None:
    low, full, x = _half_model(torch.bfloat16)
    _assert_close_to_float32(name, torch.bfloat16, low, full, x)


# ============================================================ constructor checks

NAN, INF = float("nan"), float("inf")


def _fd(**options: Any) -> Callable[[nn.Module], Any]:
    return lambda m: LayerFDCam(m, m.features[3], **options)


def _group(**options: Any) -> Callable[[nn.Module], Any]:
    return lambda m: LayerGroupCam(m, m.features[3], **options)


def _score(**options: Any) -> Callable[[nn.Module], Any]:
    return lambda m: LayerScoreCam(m, m.features[3], **options)


def _fg(**options: Any) -> Callable[[nn.Module], Any]:
    return lambda m: FGCam(LayerGradCam(m, m.features[3]), **options)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (_fd(bias=NAN), ValueError, "bias must be finite"),
        (_fd(bias=INF), ValueError, "bias must be finite"),
        (_fd(bias=True), TypeError, "bias must be a real number, got bool"),
        (_fd(bias="0.5"), TypeError, "bias must be a real number, got str"),
        (_fd(group_fraction=True), TypeError, "group_fraction must be a real number"),
        (_fd(group_fraction="0.1"), TypeError, "group_fraction must be a real number"),
        (_group(groups=3.0), TypeError, r"groups must be an integer, got float \(3.0\)"),
        (_group(groups=True), TypeError, "groups must be an integer, got bool"),
        (_group(groups=np.float64(4)), TypeError, "groups must be an integer"),
        (_group(blur_kernel_size=5.0), TypeError, "blur_kernel_size must be an integer"),
        (_group(blur_sigma=NAN), ValueError, "blur_sigma must be finite"),
        (_group(blur_sigma=INF), ValueError, "blur_sigma must be finite"),
        (_group(blur_sigma=0.0), ValueError, "blur_sigma must be positive"),
        (_group(blur_sigma=True), TypeError, "blur_sigma must be a real number"),
        (_score(baseline=NAN), ValueError, "baseline must be finite"),
        (_score(baseline=True), TypeError, "baseline must be None, a number, or a tensor"),
        (_score(baseline="zero"), TypeError, "baseline must be None, a number, or a tensor"),
        (_score(baseline=torch.tensor([0.0, NAN, 0.0])), ValueError, "NaN or infinite"),
        (_score(baseline=torch.zeros(3, 1, 1, dtype=torch.bool)), TypeError, "torch.bool"),
        (_fg(denoise="no"), TypeError, "denoise must be True or False"),
    ],
)
def test_options_are_checked_in_the_constructor(
    make: Callable[[nn.Module], Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make(small_model())


@pytest.mark.parametrize("value", [2.0, True], ids=repr)
def test_perturbations_per_eval_must_be_an_integer(value: object) -> None:
    model = small_model()
    with pytest.raises(TypeError, match="perturbations_per_eval must be an integer"):
        LayerAblationCam(model, model.features[3]).attribute(
            torch.randn(1, 3, 8, 8), 0, perturbations_per_eval=value
        )


@pytest.mark.parametrize("shape", [(5, 8, 8), (2, 3, 8, 8), (3, 4, 1)], ids=str)
def test_score_cam_baseline_that_does_not_fit_one_example(shape: tuple[int, ...]) -> None:
    model = small_model()
    calls = []
    model.features[0].register_forward_hook(lambda *_: calls.append(1))
    cam = LayerScoreCam(model, model.features[3], baseline=torch.zeros(shape))
    with pytest.raises(
        ValueError, match=rf"baseline of shape {re.escape(str(shape))}.*\(3, 8, 8\)"
    ):
        cam.attribute(torch.randn(2, 3, 8, 8), [0, 1])
    assert not calls, "the model ran before the baseline was checked"


# ================================================ numpy integers as Python ints


@pytest.mark.parametrize(
    "target, expected",
    [
        (np.array(3), [3, 3]),
        (np.array([3, 1]), [3, 1]),
        (np.array([3, 1], dtype=np.int32), [3, 1]),
        (np.array([3, 1], dtype=np.uint8), [3, 1]),
        ([np.array(3), np.array(1)], [3, 1]),
    ],
    ids=repr,
)
@pytest.mark.parametrize("name", ["Grad-CAM", "Ablation-CAM", "PropagationLRP"])
def test_numpy_targets(name: str, target: object, expected: list[int]) -> None:
    model = small_model(2)
    attribution = EVERY_ATTRIBUTION[name](model)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(attribution.attribute(x, target), attribution.attribute(x, expected))


def test_numpy_target_of_floats_names_the_dtype() -> None:
    model = small_model()
    with pytest.raises(TypeError, match="target array must hold integers, got dtype float64"):
        LayerGradCam(model, model.features[3]).attribute(
            torch.randn(2, 3, 8, 8), np.array([0.0, 1.0])
        )


def test_numpy_integer_options() -> None:
    model = small_model(3)
    x = torch.randn(2, 3, 8, 8)
    layer = model.features[3]
    for value in (np.int64(5), np.int32(5), np.array(5)):
        expected = LayerAblationCam(model, layer).attribute(x, [0, 1], perturbations_per_eval=5)
        got = LayerAblationCam(model, layer).attribute(x, [0, 1], perturbations_per_eval=value)
        assert torch.equal(got, expected)
        group = LayerGroupCam(model, layer, groups=value, blur_kernel_size=value)
        assert group.groups == 5 and type(group.groups) is int
        assert group.blur_kernel_size == 5 and type(group.blur_kernel_size) is int
        fg = FGCam(LayerGradCam(model, layer), denoise=np.True_, singular_values=value)
        assert fg._fg.singular_values == 5 and fg._fg.denoise is True
    # numpy floats where floats go, and the map is the same as with Python floats.
    options = {"bias": 0.25, "group_fraction": 0.2}
    expected = LayerFDCam(model, layer, **options).attribute(x, [0, 1])
    numpy_options = {k: np.float32(v) for k, v in options.items()}
    assert torch.equal(LayerFDCam(model, layer, **numpy_options).attribute(x, [0, 1]), expected)


# ==================================================================== progress


class _Bar:
    """Stands in for Captum's tqdm bar, remembering what it was told."""

    def __init__(self, desc: str, total: int) -> None:
        self.desc, self.total, self.n, self.closed = desc, total, 0, False

    def update(self, count: int) -> None:
        self.n += count

    def close(self) -> None:
        self.closed = True


def _half_dead_model() -> SmallCNN:
    """SmallCNN whose layer ``act`` has 6 of its 12 channels all zero: identical
    (all-zero) masks for Score-CAM and Group-CAM, switched copies equal to the unswitched
    activation for Ablation-CAM and FD-CAM, none of which costs a pass."""
    model = small_model(4)
    with torch.no_grad():
        model.features[3].weight[6:] = 0
        model.features[3].bias[6:] = -1
    return model


def _passes_through_the_head(model: SmallCNN, run: Callable[[], object]) -> int:
    """Rows reaching the model's head that are not an example's unswitched activation:
    each is one perturbed copy evaluated (a masked input's, or a switched activation)."""
    seen: list[Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    reference = seen[0]  # the reference pass comes first, one row per example
    rows = torch.cat(seen[1:])
    is_reference = (rows[:, None] == reference[None]).flatten(2).all(dim=2).any(dim=1)
    return int((~is_reference).sum())


@pytest.mark.parametrize("name", PERTURBATION)
def test_progress_bar_counts_the_passes_that_run(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _half_dead_model()
    x = torch.randn(2, 3, 8, 8)
    options = {"groups": 12} if name == "Group-CAM" else {}
    cam = make_cam(name, model, model.act, **options)
    bars: list[_Bar] = []
    monkeypatch.setattr(
        perturbation, "captum_progress", lambda **kw: bars.append(_Bar(**kw)) or bars[-1]
    )
    passes = _passes_through_the_head(
        model,
        lambda: cam.attribute(x, [0, 1], perturbations_per_eval=5, show_progress=True),
    )
    (bar,) = bars
    assert bar.desc == name and bar.closed
    assert bar.total == passes, "the total counts passes that do not run"
    assert bar.n == bar.total, f"the bar ends at {bar.n}/{bar.total}"
    # Copies skipped as duplicates or short-cuts: each method has some on this model.
    assert passes < len(x) * 12 * (2 if name == "FD-CAM" else 1)


def test_score_cam_tqdm_bar_ends_at_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    model = _half_dead_model()
    x = torch.randn(1, 3, 8, 8)
    passes = _passes_through_the_head(
        model, lambda: LayerScoreCam(model, model.act).attribute(x, 0, show_progress=True)
    )
    err = capsys.readouterr().err
    assert "100%" in err and f"{passes}/{passes}" in err
