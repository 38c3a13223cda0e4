"""Grad-CAM, Grad-CAM++, XGrad-CAM and Layer-CAM against their papers' formulas."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from captum.attr import LayerAttribution
from captum.attr import LayerGradCam as CaptumLayerGradCam
from conftest import (
    SmallCNN,
    SplitModel,
    assert_same_snapshot,
    model_snapshot,
    reference_activations_and_gradients,
)
from torch import Tensor, nn

from captum_fdcam import (
    GradientLayerCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerLayerCam,
    LayerXGradCam,
)

GRADIENT_METHODS = [LayerGradCam, LayerGradCamPlusPlus, LayerXGradCam, LayerLayerCam]


def naive_map(method: type, a: Tensor, g: Tensor) -> Tensor:
    """The paper's map for one example, with explicit loops. a, g: (K, h, w)."""
    k_channels, h, w = a.shape
    cam = torch.zeros(h, w, dtype=a.dtype)
    for k in range(k_channels):
        if method is LayerLayerCam:
            # M = sum_k ReLU(g^k) * A^k, pixel by pixel
            for i in range(h):
                for j in range(w):
                    cam[i, j] += max(g[k, i, j].item(), 0.0) * a[k, i, j]
            continue
        if method is LayerGradCam:
            weight = sum(g[k, i, j].item() for i in range(h) for j in range(w)) / (h * w)
        elif method is LayerXGradCam:
            total = sum(a[k, i, j].item() for i in range(h) for j in range(w))
            weight = 0.0
            if total != 0:
                for i in range(h):
                    for j in range(w):
                        weight += a[k, i, j].item() / total * g[k, i, j].item()
        elif method is LayerGradCamPlusPlus:
            total = sum(a[k, i, j].item() for i in range(h) for j in range(w))
            weight = 0.0
            for i in range(h):
                for j in range(w):
                    gij = g[k, i, j].item()
                    denominator = 2 * gij**2 + total * gij**3
                    alpha = gij**2 / denominator if denominator != 0 else 0.0
                    weight += alpha * max(gij, 0.0)
        else:
            raise AssertionError(method)
        cam += weight * a[k]
    return cam


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_matches_formula(split_model: SplitModel, method: type) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, *split_model.input_shape, dtype=torch.float64)
    targets = [1, 4, 2]
    a, g = reference_activations_and_gradients(split_model, x, targets)
    expected = torch.stack([naive_map(method, a[n], g[n]) for n in range(len(targets))])

    cam = method(split_model.model, split_model.layer)
    signed = cam.attribute(x, target=targets)
    assert signed.shape == (3, 1, *a.shape[2:])
    torch.testing.assert_close(signed[:, 0], expected, rtol=1e-9, atol=1e-12)
    relu = cam.attribute(x, target=targets, relu_attributions=True)
    torch.testing.assert_close(relu[:, 0], expected.clamp(min=0), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_per_channel_maps_sum_to_the_map(split_model: SplitModel, method: type) -> None:
    x = torch.randn(2, *split_model.input_shape, dtype=torch.float64)
    cam = method(split_model.model, split_model.layer)
    per_channel = cam.attribute(x, target=[0, 3], attr_dim_summation=False)
    summed = cam.attribute(x, target=[0, 3])
    assert per_channel.shape[:2] == (2, split_model.layer(split_model.pre(x)).shape[1])
    torch.testing.assert_close(per_channel.sum(dim=1, keepdim=True), summed)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name, layer_path",
    [("resnet18", "layer4"), ("vgg11", "features.18"), ("vgg11", "features.20")],
)
def test_grad_cam_equals_captum_exactly(model_name: str, layer_path: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(num_classes=10).eval()
    layer = model.get_submodule(layer_path)
    x = torch.randn(4, 3, 64, 64)
    targets = [0, 9, 3, 3]
    for relu in (False, True):
        ours = LayerGradCam(model, layer).attribute(x, targets, relu_attributions=relu)
        theirs = CaptumLayerGradCam(model, layer).attribute(x, targets, relu_attributions=relu)
        assert torch.equal(ours, theirs)
    upsampled = LayerAttribution.interpolate(ours, (64, 64))
    assert upsampled.shape == (4, 1, 64, 64)


def test_is_a_captum_layer_attribution() -> None:
    model = SmallCNN()
    for method in GRADIENT_METHODS:
        cam = method(model, model.features[3])
        assert isinstance(cam, LayerAttribution)
        assert isinstance(cam, GradientLayerCam)
        assert cam.layer is model.features[3]
        assert not cam.has_convergence_delta()


class _GridOutput(nn.Module):
    """Scores shaped (N, 2, 3): targets are tuples, as Captum's TargetType allows."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(num_classes=6)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(-1, 2, 3)


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "target, per_sample",
    [
        (2, [2, 2, 2]),
        ([4, 0, 2], [4, 0, 2]),
        (torch.tensor([1, 3, 0]), [1, 3, 0]),
        (torch.tensor(3), [3, 3, 3]),
    ],
    ids=["int", "list", "tensor", "scalar-tensor"],
)
def test_batch_equals_single_calls(method: type, target: object, per_sample: list) -> None:
    torch.manual_seed(2)
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    cam = method(model, model.features[3])
    batched = cam.attribute(x, target=target)
    singles = torch.cat([cam.attribute(x[i : i + 1], target=t) for i, t in enumerate(per_sample)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_tuple_targets_for_multidimensional_outputs(method: type) -> None:
    torch.manual_seed(3)
    model = _GridOutput().eval()
    x = torch.randn(2, 3, 8, 8)
    cam = method(model, model.net.features[3])
    batched = cam.attribute(x, target=[(0, 2), (1, 1)])
    singles = torch.cat([cam.attribute(x[:1], target=(0, 2)), cam.attribute(x[1:], target=(1, 1))])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)
    # the same as explaining the flat output's class 3 * row + column
    flat = method(model.net, model.net.features[3]).attribute(x, target=[2, 4])
    torch.testing.assert_close(batched, flat)


def test_in_place_relu_after_the_layer_does_not_change_the_activations() -> None:
    torch.manual_seed(4)
    plain = SmallCNN(inplace=False).eval()
    inplace = SmallCNN(inplace=True).eval()
    inplace.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        conv_out = plain.features(x)
    assert (conv_out < 0).any(), "the test needs negative activations to be meaningful"
    for method in GRADIENT_METHODS:
        a = method(plain, plain.features[3]).attribute(x, [0, 1], attr_dim_summation=False)
        b = method(inplace, inplace.features[3]).attribute(x, [0, 1], attr_dim_summation=False)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Grad-CAM's per-channel map is w_k * A^k: recover A^k where w_k != 0
    per_channel = LayerGradCam(inplace, inplace.features[3]).attribute(
        x, [0, 1], attr_dim_summation=False
    )
    weights = per_channel.flatten(2).sum(-1) / conv_out.flatten(2).sum(-1)
    torch.testing.assert_close(per_channel, weights[..., None, None] * conv_out)


def test_works_under_no_grad_and_with_frozen_parameters() -> None:
    torch.manual_seed(5)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = LayerXGradCam(model, model.features[3]).attribute(x, [1, 2])
    with torch.no_grad():
        under_no_grad = LayerXGradCam(model, model.features[3]).attribute(x, [1, 2])
    torch.testing.assert_close(under_no_grad, expected)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = LayerXGradCam(model, model.features[3]).attribute(x, [1, 2])
    torch.testing.assert_close(frozen, expected)
    assert not any(p.requires_grad for p in model.parameters())


def test_additional_forward_args_and_layer_input() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN()

        def forward(self, x: Tensor, scale: float) -> Tensor:
            return self.net(x) * scale

    torch.manual_seed(6)
    model = Scaled().eval()
    x = torch.randn(2, 3, 8, 8)
    layer = model.net.features[3]
    once = LayerGradCam(model, layer).attribute(x, 1, additional_forward_args=(1.0,))
    twice = LayerGradCam(model, layer).attribute(x, 1, additional_forward_args=2.0)
    torch.testing.assert_close(twice, 2 * once)
    # the input of the last conv is the output of the max-pool before it
    to_input = LayerGradCam(model, layer).attribute(
        x, 1, additional_forward_args=1.0, attribute_to_layer_input=True
    )
    at_pool = LayerGradCam(model, model.net.features[2]).attribute(
        x, 1, additional_forward_args=1.0
    )
    torch.testing.assert_close(to_input, at_pool)


class _Exploding(nn.Module):
    """Raises in the forward pass after the target layer has run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN()
        self.net.head[0].register_forward_hook(self._explode)

    @staticmethod
    def _explode(*_: object) -> None:
        raise RuntimeError("boom")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_model_and_input_unchanged(method: type) -> None:
    torch.manual_seed(7)
    model = SmallCNN()
    model.train()  # train mode must survive; SmallCNN has no dropout or batch norm
    model.head[1].weight.requires_grad_(False)
    x = torch.randn(3, 3, 8, 8)
    x_before = x.clone()
    before = model_snapshot(model)
    method(model, model.features[3]).attribute(x, target=[0, 1, 2])
    assert_same_snapshot(before, model_snapshot(model))
    assert torch.equal(x, x_before)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_model_unchanged_when_the_forward_pass_raises(method: type) -> None:
    model = _Exploding().eval()
    before = model_snapshot(model)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):
        method(model, model.net.features[3]).attribute(x, target=0)
    after = model_snapshot(model)
    # the model's own hook stays, ours is gone
    assert before["hooks"] == after["hooks"]
    assert len(model.net.features[3]._forward_hooks) == 0
    # a failing check inside our hook (output not 4-D) also cleans up
    plain = SmallCNN()
    with pytest.raises(ValueError, match="4-D"):
        method(plain, plain.head[1]).attribute(x, target=0)
    assert all(v == (0, 0, 0, 0) for v in model_snapshot(plain)["hooks"].values())


# ---------------------------------------------------------------- bad input


@pytest.fixture
def small() -> SmallCNN:
    torch.manual_seed(8)
    return SmallCNN().eval()


def test_layer_not_in_model(small: SmallCNN) -> None:
    with pytest.raises(ValueError, match="not a submodule"):
        LayerGradCamPlusPlus(small, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        LayerGradCamPlusPlus(small, "features.3")  # type: ignore[arg-type]


def test_layer_never_called(small: SmallCNN) -> None:
    small.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="not called during the forward pass"):
        LayerXGradCam(small, small.unused).attribute(torch.randn(1, 3, 8, 8), 0)


def test_layer_called_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    model = Twice()
    with pytest.raises(ValueError, match="called more than once"):
        LayerGradCam(model, model.conv).attribute(torch.randn(1, 3, 4, 4), 0)


def test_layer_output_not_4d(small: SmallCNN) -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 16\).*4-D"):
        LayerLayerCam(small, small.head[1]).attribute(torch.randn(2, 3, 8, 8), 0)


@pytest.mark.parametrize(
    "target, match",
    [
        (5, "out of range"),
        (-1, "out of range"),
        ([0, 7], "out of range"),
        (torch.tensor([0, 5]), "out of range"),
        ([0, 1, 2], "3 entries but the batch has 2"),
        ((0, 1), "2 index"),
        (1.5, "integers"),
        (torch.tensor([0.0, 1.0]), "integers"),
        (None, "pass target"),
    ],
)
def test_bad_target(small: SmallCNN, target: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        LayerGradCam(small, small.features[3]).attribute(torch.randn(2, 3, 8, 8), target)


def test_non_floating_input(small: SmallCNN) -> None:
    x = torch.randint(0, 255, (1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"torch.int64.*floating-point"):
        LayerXGradCam(small, small.features[3]).attribute(x, 0)


def test_layer_not_on_the_path_to_the_output() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            self.side(x)
            return self.fc(x.mean((2, 3)))

    model = Branch()
    with pytest.raises(ValueError, match="does not depend on layer"):
        LayerGradCam(model, model.side).attribute(torch.randn(1, 3, 4, 4), 0)


def test_no_graph_is_built_before_the_layer() -> None:
    # the part before the layer needs no autograd graph: it runs with gradients off,
    # the part after it with gradients on (what the backward pass to the layer needs)
    model = SmallCNN().eval()
    seen: dict[str, bool] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            seen[name] = torch.is_grad_enabled()

        return hook

    model.features[0].register_forward_hook(record("before"))
    model.head[1].register_forward_hook(record("after"))
    LayerGradCam(model, model.features[3]).attribute(torch.randn(1, 3, 8, 8), 0)
    assert seen == {"before": False, "after": True}
    assert torch.is_grad_enabled()
