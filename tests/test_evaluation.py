"""The Quantus adapter and metrics, against computations written out in the tests."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
import torchvision
from captum.attr import IntegratedGradients, LayerAttribution
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam import FGCam, LayerFDCam, LayerGradCam
from captum_fdcam.evaluation import (
    AverageDrop,
    AverageIncrease,
    Deletion,
    GridPointingGame,
    Insertion,
    explain,
    grid_mosaics,
)

SIZE = 8
REGION = (slice(2, 4), slice(5, 8))  # rows 2-3, columns 5-7: 6 pixels


class RegionModel(nn.Module):
    """Class 0's logit reads the mean of one region's pixels; class 1's logit is 0."""

    def forward(self, x: Tensor) -> Tensor:
        region = 4 * x[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3)) - 2
        return torch.stack([region, torch.zeros_like(region)], dim=1)


def _region_map(reverse: bool) -> np.ndarray:
    """A saliency map ranking the region's pixels first (or last), others in order."""
    a = np.arange(SIZE * SIZE, 0, -1, dtype=np.float32).reshape(SIZE, SIZE) / 100
    a[REGION] += 10
    return (a.max() + 1 - a if reverse else a)[None, None]


def _softmax0(x: np.ndarray) -> float:
    with torch.no_grad():
        return float(RegionModel().eval()(torch.from_numpy(x)).softmax(dim=1)[0, 0])


def _naive_curve(x: np.ndarray, a: np.ndarray, start: np.ndarray, end: np.ndarray, step: int):
    order = sorted(range(SIZE * SIZE), key=lambda i: (-a.reshape(-1)[i], i))
    scores = [_softmax0(start[None])]
    current = start.copy()
    for i in range(0, SIZE * SIZE, step):
        for p in order[i : i + step]:
            r, c = divmod(p, SIZE)
            current[:, r, c] = end[:, r, c]
        scores.append(_softmax0(current[None]))
    return np.array(scores)


@pytest.fixture(scope="module")
def bright() -> np.ndarray:
    torch.manual_seed(0)
    return (torch.rand(1, 3, SIZE, SIZE) + 0.5).numpy()


@pytest.mark.parametrize("reverse", [False, True])
def test_deletion_matches_a_naive_loop(bright: np.ndarray, reverse: bool) -> None:
    a = _region_map(reverse)
    metric = Deletion(pixels_per_step=5, disable_warnings=True)
    (score,) = metric(RegionModel().eval(), bright, np.array([0]), a_batch=a)
    expected = _naive_curve(bright[0], a[0], bright[0], np.zeros_like(bright[0]), 5)
    np.testing.assert_allclose(metric.curves[0], expected, rtol=1e-6)
    # 64 pixels in steps of 5: the last step moves 4, and the AUC weighs it by 4 / 64.
    x = np.minimum(np.arange(len(expected)) * 5, SIZE * SIZE) / (SIZE * SIZE)
    assert x[-1] - x[-2] == 4 / 64
    np.testing.assert_allclose(metric.fractions[0], x)
    assert score == pytest.approx(np.trapezoid(expected, x), rel=1e-6)


def test_deletion_and_insertion_rank_the_perfect_map_first(bright: np.ndarray) -> None:
    model, y = RegionModel().eval(), np.array([0])
    perfect, reverse = _region_map(False), _region_map(True)
    deletion = Deletion(pixels_per_step=0.1, disable_warnings=True)
    insertion = Insertion(pixels_per_step=0.1, substrate="zeros", disable_warnings=True)
    assert (
        deletion(model, bright, y, a_batch=perfect)[0]
        < deletion(model, bright, y, a_batch=reverse)[0]
    )
    assert (
        insertion(model, bright, y, a_batch=perfect)[0]
        > insertion(model, bright, y, a_batch=reverse)[0]
    )


def test_insertion_starts_from_the_blurred_image(bright: np.ndarray) -> None:
    a = _region_map(False)
    metric = Insertion(pixels_per_step=7, blur_kernel_size=3, blur_sigma=1.0, disable_warnings=True)
    metric(RegionModel().eval(), bright, np.array([0]), a_batch=a)
    blurred = gaussian_blur(torch.from_numpy(bright), [3, 3], [1.0, 1.0]).numpy()[0]
    expected = _naive_curve(bright[0], a[0], blurred, bright[0], 7)
    np.testing.assert_allclose(metric.curves[0], expected, rtol=1e-6)


def test_average_drop_and_increase(bright: np.ndarray) -> None:
    model, y = RegionModel().eval(), np.array([0, 0])
    x = np.concatenate([bright, bright])
    a = np.concatenate([_region_map(False), _region_map(True)])
    drop = AverageDrop(blur_kernel_size=3, blur_sigma=1.0, disable_warnings=True)
    increase = AverageIncrease(blur_kernel_size=3, blur_sigma=1.0, disable_warnings=True)
    drops, increases = drop(model, x, y, a_batch=a), increase(model, x, y, a_batch=a)
    # The perfect map keeps the region: nothing the model reads changes.
    assert drops[0] == pytest.approx(0.0, abs=1e-9) and increases[0] == 0.0
    # The reversed map keeps the other half: the region is blurred.
    blurred = gaussian_blur(torch.from_numpy(bright), [3, 3], [1.0, 1.0]).numpy()[0]
    masked = bright[0].copy()
    masked[:, REGION[0], REGION[1]] = blurred[:, REGION[0], REGION[1]]
    y0, o = _softmax0(bright), _softmax0(masked[None])
    assert drops[1] == pytest.approx(100 * max(0.0, y0 - o) / y0, rel=1e-6)
    assert increases[1] == (100.0 if o > y0 else 0.0)


class ColourModel(nn.Module):
    """Predicts the channel with the largest mean: class k = images of colour k."""

    def forward(self, x: Tensor) -> Tensor:
        return 10 * x.mean(dim=(2, 3))


def test_grid_mosaics_put_each_class_in_its_cell() -> None:
    classes = 6
    images = torch.zeros(12, classes, 4, 4)
    labels = torch.arange(12) % classes
    for i, k in enumerate(labels):
        images[i, k] = 1.0 + i / 100  # each image is distinguishable
    mosaics = grid_mosaics(ColourModel().eval(), images, labels, n_mosaics=2, threshold=0.5)
    assert mosaics.x_batch.shape == (8, classes, 8, 8)
    for m, quad in enumerate(mosaics.sources):
        assert len({int(labels[i]) for i in quad}) == 4
        for cell, index in enumerate(quad):
            row, col = divmod(cell, 2)
            entry = 4 * m + cell
            block = mosaics.x_batch[entry][:, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]
            np.testing.assert_array_equal(block, images[index].numpy())
            assert mosaics.y_batch[entry] == labels[index]
            assert mosaics.s_batch[entry, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4].all()
            assert mosaics.s_batch[entry].sum() == 16


def test_grid_pointing_game_scores() -> None:
    classes = 5
    images = torch.zeros(8, classes, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for i, k in enumerate(labels):
        images[i, k] = 1.0
    mosaics = grid_mosaics(ColourModel().eval(), images, labels, n_mosaics=1)
    metric = GridPointingGame(disable_warnings=True)
    perfect = metric(
        ColourModel().eval(),
        mosaics.x_batch,
        mosaics.y_batch,
        a_batch=mosaics.s_batch,
        s_batch=mosaics.s_batch,
    )
    assert perfect == [1.0] * 4
    # Half of the attribution in the right cell, half in the next one.
    other = mosaics.s_batch.reshape(-1, 4, *mosaics.s_batch.shape[1:])
    other = np.roll(other, 1, axis=1).reshape(mosaics.s_batch.shape)
    half = metric(
        ColourModel().eval(),
        mosaics.x_batch,
        mosaics.y_batch,
        a_batch=mosaics.s_batch + other,
        s_batch=mosaics.s_batch,
    )
    np.testing.assert_allclose(half, 0.5)


def test_too_few_confident_classes() -> None:
    images = torch.zeros(3, 5, 4, 4)
    for i in range(3):
        images[i, i] = 1
    with pytest.raises(ValueError, match="Fewer than four classes"):
        grid_mosaics(ColourModel().eval(), images, torch.arange(3), n_mosaics=1)


# --------------------------------------------------------------------- explain


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64).numpy(), np.array([1, 4, 7])


def test_explain_equals_the_method_called_directly(resnet: nn.Module, photos) -> None:
    x, y = photos
    got = explain(resnet, x, y, method="FD-CAM", layer="layer4")
    direct = LayerFDCam(resnet, resnet.layer4).attribute(
        torch.from_numpy(x), target=torch.from_numpy(y), relu_attributions=True
    )
    expected = LayerAttribution.interpolate(direct, (64, 64), "bilinear").numpy()
    assert got.shape == (3, 1, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_explain_by_captum_name_class_and_fg_prefix(resnet: nn.Module, photos) -> None:
    x, y = photos
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    captum_map = explain(resnet, x, y, method="LayerGradCam", layer=resnet.layer4, batch_size=2)
    ours = LayerGradCam(resnet, resnet.layer4).attribute(xt, target=yt, relu_attributions=True)
    np.testing.assert_allclose(
        captum_map, LayerAttribution.interpolate(ours, (64, 64), "bilinear").numpy(), atol=1e-6
    )
    ig = explain(resnet, x, y, method=IntegratedGradients, attribute_kwargs={"n_steps": 4})
    expected = IntegratedGradients(resnet).attribute(xt, target=yt, n_steps=4).sum(1, keepdim=True)
    np.testing.assert_allclose(ig, expected.numpy(), rtol=1e-4, atol=1e-6)
    fg = explain(resnet, x, y, method="FG-Grad-CAM", layer="layer4")
    expected = FGCam(LayerGradCam(resnet, resnet.layer4)).attribute(
        xt, target=yt, relu_attributions=True
    )
    np.testing.assert_allclose(fg, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_explain_sums_the_channels_of_captum_layer_methods(resnet: nn.Module, photos) -> None:
    """Captum layer methods that return one map per channel (LayerGradientXActivation)
    give one map, the channel sum, as the docstring says (the first channel before)."""
    from captum.attr import LayerGradientXActivation

    x, y = photos
    got = explain(resnet, x, y, method="LayerGradientXActivation", layer="layer4")
    per_channel = LayerGradientXActivation(resnet, resnet.layer4).attribute(
        torch.from_numpy(x), target=torch.from_numpy(y)
    )
    assert per_channel.shape[1] == 512
    summed = LayerAttribution.interpolate(per_channel, (64, 64), "bilinear").sum(1, keepdim=True)
    assert got.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(got, summed.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_explain_errors(resnet: nn.Module, photos) -> None:
    x, y = photos
    with pytest.raises(ValueError, match="Unknown method"):
        explain(resnet, x, y, method="Grad-CAM+++")
    with pytest.raises(ValueError, match="no module named"):
        explain(resnet, x, y, layer="layer9")
    with pytest.raises(ValueError, match="2 targets for 3 inputs"):
        explain(resnet, x, y[:2])


def test_quantus_metrics_run_through_explain(resnet: nn.Module, photos) -> None:
    x, y = photos
    kwargs = {"method": "XGrad-CAM", "layer": "layer4"}
    pixel_flipping = quantus.PixelFlipping(features_in_step=64 * 16, disable_warnings=True)
    curves = pixel_flipping(
        resnet, x, y, explain_func=explain, explain_func_kwargs=kwargs, device="cpu"
    )
    assert len(curves) == 3 and all(len(c) == 3 * 64 * 64 // (64 * 16) for c in curves)
    results = quantus.evaluate(
        metrics={
            "deletion": Deletion(pixels_per_step=0.25, disable_warnings=True),
            "avg_drop": AverageDrop(blur_kernel_size=5, disable_warnings=True),
        },
        xai_methods={"XGrad-CAM": explain},
        explain_func_kwargs={"layer": "layer4"},  # Quantus sets method from the key
        model=resnet,
        x_batch=x,
        y_batch=y,
        call_kwargs={"set_1": {"device": "cpu"}},
    )
    scores = results["XGrad-CAM"]["deletion"]  # one call_kwargs set: no extra level
    a = explain(resnet, x, y, method="XGrad-CAM", layer="layer4")
    expected = Deletion(pixels_per_step=0.25, disable_warnings=True)(resnet, x, y, a_batch=a)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    with pytest.warns(UserWarning, match=r"ignores the keyword arguments \['XGrad-CAM'\]"):
        explain(resnet, x, y, **{"XGrad-CAM": kwargs})


def test_metric_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Deletion(pixels_per_step=1.5)
    with pytest.raises(ValueError, match="positive"):
        Insertion(pixels_per_step=0)
    with pytest.raises(ValueError, match="keep"):
        AverageDrop(keep=0.0)
    with pytest.raises(ValueError, match="odd"):
        Insertion(blur_kernel_size=4, pixels_per_step=1)(
            RegionModel().eval(),
            np.ones((1, 3, SIZE, SIZE), np.float32),
            np.array([0]),
            a_batch=_region_map(False),
        )
