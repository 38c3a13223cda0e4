"""Quantus's own metrics, run through :func:`captum_fdcam.evaluation.explain`.

The model reads its class-0 logit from one region of the image through a 1x1 conv, so
Layer-CAM at that conv is known in closed form: at each region pixel p it is exactly
the share of the logit that pixel carries, ``4 f_p / |R|`` with ``f_p`` the mean of
its channels, and 0 elsewhere. Every expected value below is worked out from that.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import quantus
import torch
from quantus.functions.similarity_func import correlation_spearman, ssim
from torch import Tensor, nn

from captum_fdcam.evaluation import ROAD, explain

SIZE = 8
REGION = (slice(2, 4), slice(5, 8))  # rows 2-3, columns 5-7: 6 pixels
N_REGION = 6
LAYER_CAM = {"method": "Layer-CAM", "layer": "conv"}


def _inside() -> Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[REGION] = True
    return inside


class SpotModel(nn.Module):
    """Class 0 reads the region's features, class 1 the rest; the features are the
    channel means of the pixels (a 1x1 conv with weights 1/channels, then ReLU)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        f = self.relu(self.conv(x))
        inside = _inside()
        logit0 = 4 * f[:, :, inside].mean(dim=(1, 2)) - 2
        logit1 = 2 * f[:, :, ~inside].mean(dim=(1, 2)) - 1
        return torch.stack([logit0, logit1], dim=1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return SpotModel().eval()


@pytest.fixture(scope="module")
def spots() -> tuple[np.ndarray, np.ndarray]:
    """Dark photos (0.05-0.15) with a bright region (0.8-1.2): all of class 0."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.15, (3, 3, SIZE, SIZE)).astype(np.float32)
    x[:, :, REGION[0], REGION[1]] = rng.uniform(0.8, 1.2, (3, 3, 2, 3))
    return x, np.zeros(3, dtype=np.int64)


def _pixel_shares(x: np.ndarray) -> np.ndarray:
    """(N, H, W): each pixel's part of the class-0 logit above its -2 offset."""
    shares = 4 * x.mean(axis=1) / N_REGION
    shares[:, ~_inside().numpy()] = 0
    return shares


def test_layer_cam_is_the_closed_form(model: nn.Module, spots) -> None:
    x, y = spots
    a = explain(model, x, y, **LAYER_CAM)
    np.testing.assert_allclose(a[:, 0], _pixel_shares(x), rtol=1e-5, atol=1e-7)
    assert (model(torch.from_numpy(x)).argmax(1) == 0).all()


def test_pointing_game_and_attribution_localisation(model: nn.Module, spots) -> None:
    x, y = spots
    region = np.zeros((3, 1, SIZE, SIZE), dtype=np.float32)
    region[:, :, REGION[0], REGION[1]] = 1
    elsewhere = np.zeros_like(region)
    elsewhere[:, :, 5:8, 0:3] = 1
    call = {"explain_func": explain, "explain_func_kwargs": LAYER_CAM, "device": "cpu"}
    pointing = quantus.PointingGame(disable_warnings=True)
    assert pointing(model, x, y, s_batch=region, **call) == [True] * 3
    assert pointing(model, x, y, s_batch=elsewhere, **call) == [False] * 3
    localisation = quantus.AttributionLocalisation(disable_warnings=True)
    np.testing.assert_allclose(localisation(model, x, y, s_batch=region, **call), 1.0)
    np.testing.assert_allclose(localisation(model, x, y, s_batch=elsewhere, **call), 0.0)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_the_patch_drops(model: nn.Module, spots, order) -> None:
    """On logits (``softmax=False``), zeroing a 2x2 patch lowers the logit by the sum of
    its pixels' shares; MoRF takes the patches in decreasing order of that sum, LeRF in
    increasing order."""
    x, y = spots
    metric = quantus.RegionPerturbation(
        patch_size=2,
        order=order,
        regions_evaluation=16,
        perturb_baseline=0.0,  # Quantus's "black" is the image's minimum, not 0
        disable_warnings=True,
    )
    curves = metric(model, x, y, explain_func=explain, explain_func_kwargs=LAYER_CAM, softmax=False)
    shares = _pixel_shares(x)
    for curve, s in zip(curves, shares, strict=True):
        patch_drops = s.reshape(SIZE // 2, 2, SIZE // 2, 2).sum(axis=(1, 3)).reshape(-1)
        patch_drops = np.sort(patch_drops)[::-1] if order == "morf" else np.sort(patch_drops)
        np.testing.assert_allclose(curve, np.cumsum(patch_drops), rtol=1e-5, atol=1e-6)


def test_faithfulness_correlation_is_one_for_the_exact_shares(model: nn.Module, spots) -> None:
    """The class-0 logit is linear in the region's pixels. Quantus zeroes single channel
    values and scores them with the map broadcast over the channels; on grey images
    each value carries a third of its pixel's share, so the drop for any subset is a
    third of its summed Layer-CAM values: Pearson correlation 1."""
    x, y = spots
    x = np.repeat(x.mean(axis=1, keepdims=True), 3, axis=1)
    np.random.seed(0)  # noqa: NPY002 - Quantus draws its subsets from numpy's global generator
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=30,
        subset_size=8,
        perturb_baseline=0.0,
        return_aggregate=False,
        disable_warnings=True,
    )
    scores = metric(model, x, y, explain_func=explain, explain_func_kwargs=LAYER_CAM, device="cpu")
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)
    reversed_map = -explain(model, x, y, **LAYER_CAM)
    np.random.seed(0)  # noqa: NPY002
    scores = metric(model, x, y, a_batch=reversed_map, device="cpu")
    np.testing.assert_allclose(scores, -1.0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_road_flips_the_class_once_the_region_is_imputed(spots, channels: int) -> None:
    """ROAD imputes the most relevant pixels from their neighbours: the class holds while
    half the region's 6 pixels (5 % of 64) are imputed, and flips once all of them
    (10 %) are filled in from the dark surroundings. On one-channel images Quantus's own
    ROAD ranks pixels too, and agrees."""
    x, y = spots
    x = x[:, :channels]
    model = SpotModel(channels).eval()
    metrics = [ROAD(percentages=[5, 10, 50], disable_warnings=True)]
    if channels == 1:
        metrics.append(quantus.ROAD(percentages=[5, 10, 50], disable_warnings=True))
    for metric in metrics:
        np.random.seed(0)  # noqa: NPY002 - the imputation's noise
        result = metric(
            model, x, y, explain_func=explain, explain_func_kwargs=LAYER_CAM, device="cpu"
        )
        assert result == {5: 1.0, 10: 0.0, 50: 0.0}


def test_random_logit_explains_the_other_class(model: nn.Module, spots) -> None:
    """With two classes the random other class is the other one: the score is the
    similarity of the class-0 map (region) to the class-1 map (everything else)."""
    x, y = spots
    metric = quantus.RandomLogit(num_classes=2, normalise=False, disable_warnings=True)
    scores = metric(model, x, y, explain_func=explain, explain_func_kwargs=LAYER_CAM, device="cpu")
    a0 = explain(model, x, y, **LAYER_CAM)
    a1 = explain(model, x, 1 - y, **LAYER_CAM)
    assert (a1[:, :, REGION[0], REGION[1]] == 0).all() and (a1.sum(axis=(1, 2, 3)) > 0).all()
    expected = ssim(a0.reshape(3, -1), a1.reshape(3, -1), batched=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert max(scores) < 0.6  # the same map scores 1


def test_mprt_explains_the_randomised_copies(spots) -> None:
    """MPRT re-initialises layers of a deep copy of the model; explaining the copy needs
    the layer by name (a module of the original is refused, since it would explain the
    original and score a perfect 1)."""
    x, y = spots
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()
    kwargs = {"method": "Layer-CAM", "layer": "3", "relu_attributions": False}
    metric = quantus.MPRT(normalise=False, disable_warnings=True)
    scores = metric(model, x, y, explain_func=explain, explain_func_kwargs=kwargs, device="cpu")
    original = explain(model, x, y, **kwargs)
    randomised = copy.deepcopy(model)
    flat = original.reshape(3, -1)
    expected = {"original": correlation_spearman(flat, flat, batched=True)}
    for name in ("6", "2", "0"):  # top down, cascading, as Quantus does
        torch.manual_seed(metric.seed + 1)
        randomised.get_submodule(name).reset_parameters()
        got = explain(randomised, x, y, **kwargs)
        expected[name] = correlation_spearman(flat, got.reshape(3, -1), batched=True)
    assert list(scores) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(scores[name], value, rtol=1e-6)
    assert np.mean(scores["2"]) < 0.99
    with pytest.raises(ValueError, match="pass the layer by name"):
        metric(model, x, y, explain_func=explain, explain_func_kwargs={"layer": model[2]})
