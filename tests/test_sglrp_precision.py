"""SGLRP in float32 on confidently classified inputs (issue 14).

SGLRP starts from the softmax gradient, :math:`R_t = p_t (1 - p_t)` and
:math:`R_k = -p_t p_k`, whose total is exactly 0. When :math:`1 - p_t` is close to
float32's spacing near 1 (6e-8), forming it as ``1 - p_t`` leaves mostly rounding
error, and the start relevance no longer sums to 0: the propagated leftover total
then swamps the small contrastive difference the map should show.

The references here compute the start relevance from the float64 model's logits in
log space, written out in the test (exact also where float64 itself would round
:math:`p_t` to 1), and propagate it through a float64 copy of the model with the
generic engine, not through :class:`SGLRP`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import Tensor, nn

from captum_fdcam import SGLRP, ZBoxRule
from captum_fdcam.propagation import RuleAssignment, propagate

TARGET = 2
CLASSES = 6


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, CLASSES),
    )


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=CLASSES)


def _randomise_batch_norm(model: nn.Module) -> None:
    # Fresh BatchNorm statistics are the identity; random ones make the check
    # cover a BatchNorm that changes the values its relevance passes through.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def _confident(build: Callable[[], nn.Module], x: Tensor, gap: float) -> nn.Module:
    """The model with its last layer's bias raised so that every example's target
    logit is ``gap`` above its largest other logit (float64 forward pass)."""
    model = build().eval()
    _randomise_batch_norm(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(x.double())
        others = logits.clone()
        others[:, TARGET] = -math.inf
        needed = (others.amax(dim=1) - logits[:, TARGET] + gap).max()
        last.bias[TARGET] += needed.float()
    return model


def _start_relevance_float64(logits: Tensor) -> Tensor:
    """The softmax gradient of the target, in float64, in log space: exact also
    where ``1 - p_t`` is below float64's own spacing near 1."""
    log_p = logits.double().log_softmax(dim=1)
    others = log_p.clone()
    others[:, TARGET] = -math.inf
    log_rest = others.logsumexp(dim=1)  # log(1 - p_t), without forming 1 - p_t
    p_target = log_p[:, TARGET].exp()
    relevance = -p_target[:, None] * log_p.exp()
    relevance[:, TARGET] = (log_p[:, TARGET] + log_rest).exp()
    return relevance


def _reference(model: nn.Module, x: Tensor) -> Tensor:
    """SGLRP in float64: the start relevance above through a float64 copy."""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    with torch.no_grad():
        start = _start_relevance_float64(model64(x64))
    (relevance,) = propagate(
        model64, RuleAssignment(None, ZBoxRule()), (x64,), None, start_relevance=lambda _: start
    )
    return relevance


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double().flatten(1), b.double().flatten(1)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


BUILDS = {"small-cnn": _small_cnn, "resnet18": _resnet}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDS))
@pytest.mark.parametrize("gap", [16.0, 20.0])
def test_float32_agrees_with_float64_when_p_is_close_to_1(name: str, gap: float) -> None:
    # gap 16: 1 - p_t ~ 1e-7, float32's rounding of p_t is a large part of it;
    # gap 20: 1 - p_t ~ 2e-9, below that rounding, so float32 p_t is exactly 1.
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    model = _confident(BUILDS[name], x, gap)
    with torch.no_grad():
        p = model.double()(x.double()).softmax(dim=1)[:, TARGET]
    model.float()
    assert bool((1 - p < 1e-5).all()), p  # the situation of the issue, and beyond
    expected = _reference(model, x)
    got32 = SGLRP(model).attribute(x, target=TARGET)
    assert got32.dtype == torch.float32
    cosine = _cosine(got32, expected)
    assert bool((cosine >= 0.99).all()), cosine
    # In float64 the class computes what the reference computes.
    got64 = SGLRP(copy.deepcopy(model).double()).attribute(x.double(), target=TARGET)
    torch.testing.assert_close(got64, expected, rtol=1e-6, atol=1e-9 * expected.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beyond_float64s_spacing_near_1(dtype: torch.dtype) -> None:
    # 1 - p_t ~ 1e-22: p_t is 1 in float64 too, so the textbook formula gives
    # R_t = 0 in both dtypes; the map must still be the softmax gradient's.
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    model = _confident(_small_cnn, x, 50.0)
    expected = _reference(model, x)
    got = SGLRP(copy.deepcopy(model).to(dtype)).attribute(x.to(dtype), target=TARGET)
    assert bool((_cosine(got, expected) >= 0.99).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gap", [2.0, 14.0, 20.0])
def test_input_relevance_sums_to_the_softmax_gradients_total(
    dtype: torch.dtype, gap: float
) -> None:
    # The softmax gradient sums to 0 (adding a constant to every logit leaves p_t
    # unchanged), and the rules conserve relevance here: z+ and z^B distribute all of
    # it (bias left out of both), max-pooling, BatchNorm and ReLU pass it on. So the
    # input relevance must sum to 0, up to rounding of the relevance that flows.
    torch.manual_seed(3)
    x = torch.randn(3, 3, 32, 32)
    model = _confident(_small_cnn, x, gap).to(dtype)
    x = x.to(dtype)
    with torch.no_grad():
        p = model(x).double().softmax(dim=1)
    flowing = 2 * p[:, TARGET] * (1 - p[:, TARGET])  # sum of |R| at the output
    total = SGLRP(model).attribute(x, target=TARGET).double().sum(dim=(1, 2, 3))
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    assert bool((total.abs() <= tolerance * flowing).all()), (total / flowing).tolist()
