"""Captum's tools around this library's attributions: NoiseTunnel, Captum's metrics, and
models whose output is not one score per class (a segmentation model).

Every expected value is computed here without the tool under test: NoiseTunnel's
SmoothGrad / SmoothGrad² / VarGrad from the method's own maps of the same noisy copies;
``infidelity`` and ``sensitivity_max`` from their formulas with deterministic
perturbations; the segmentation CAMs with hooks, autograd and channels zeroed by hand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, NoiseTunnel
from captum.attr._utils.lrp_rules import IdentityRule
from captum.metrics import infidelity, sensitivity_max
from conftest import SPLIT_MODELS, SplitModel
from torch import Tensor, nn
from torchvision.models.segmentation import fcn_resnet50

import captum_fdcam
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
    PropagationLRP,
    SegmentationTarget,
)
from captum_fdcam.evaluation import explain

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------- NoiseTunnel

#: Every exported attribution class, by a readable id.
ATTRIBUTIONS = [*METHODS, "LayerFGCam", "FGCam", "PropagationLRP", "CLRP", "SGLRP"]


@pytest.fixture(scope="module")
def small() -> SplitModel:
    # SmallCNN in double precision: 8x8 input, 12 channels of 4x4 at its layer.
    return SPLIT_MODELS["small_cnn"]()


def build(name: str, split: SplitModel) -> Any:
    model, layer = split.model, split.layer
    lrp_rules = {nn.Tanh: IdentityRule()}  # the small CNN's head has a Tanh
    if name == "Group-CAM":  # its default 51-pixel blur needs images of 26 pixels or more
        return LayerGroupCam(model, layer, groups=4, blur_kernel_size=5, blur_sigma=2.0)
    if name in METHODS:
        return METHODS[name](model, layer)
    if name == "LayerFGCam":
        return LayerFGCam(LayerGradCam(model, layer), model.features[0])
    if name == "FGCam":
        return FGCam(LayerGradCam(model, layer))
    return {"PropagationLRP": PropagationLRP, "CLRP": CLRP, "SGLRP": SGLRP}[name](
        model, rules=lrp_rules
    )


def test_every_exported_attribution_is_covered() -> None:
    exported = {
        name
        for name in captum_fdcam.__all__
        if isinstance(getattr(captum_fdcam, name), type)
        and hasattr(getattr(captum_fdcam, name), "attribute")
        # The base classes are abstract: only the methods are attributions to cover.
        and not inspect.isabstract(getattr(captum_fdcam, name))
    }
    covered = {METHODS[n].__name__ if n in METHODS else n for n in ATTRIBUTIONS}
    assert exported == covered


def noise_tunnel_draw(x: Tensor, n: int, stdev: float, seed: int) -> Tensor:
    """NoiseTunnel's noisy copies, drawn as Captum 0.9 draws them: one ``torch.normal``
    over the (N n, ...) copies with a float32 standard deviation, rows example-major."""
    torch.manual_seed(seed)
    std = torch.tensor(stdev).repeat((len(x) * n, *x.shape[1:]))
    return x.repeat_interleave(n, dim=0) + torch.normal(0, std)


def maps_of_copies(method: Any, noisy: Tensor, targets: list[int], n: int, **kwargs: Any) -> Tensor:
    """(N, n, ...) the method's maps, one call per noisy copy, each with its image's target."""
    return torch.stack(
        [
            torch.cat(
                [
                    method.attribute(noisy[i * n + j : i * n + j + 1], target=t, **kwargs)
                    for j in range(n)
                ]
            )
            for i, t in enumerate(targets)
        ]
    )


def smoothed(maps: Tensor, nt_type: str) -> Tensor:
    mean, mean_sq = maps.mean(dim=1), (maps**2).mean(dim=1)
    return {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean**2}[nt_type]


@pytest.mark.parametrize("name", ATTRIBUTIONS)
def test_noise_tunnel_is_the_mean_of_the_methods_maps(small: SplitModel, name: str) -> None:
    method = build(name, small)
    torch.manual_seed(1)
    x = torch.randn(2, *small.input_shape, dtype=torch.double)
    targets = [1, 3]  # one per image: NoiseTunnel repeats each for the image's copies
    n, stdev, seed = 3, 0.3, 11

    maps = maps_of_copies(method, noise_tunnel_draw(x, n, stdev, seed), targets, n)
    plain = method.attribute(x, target=targets)
    # The noise matters: the copies' maps differ from each other and from the plain map.
    assert (maps.var(dim=1) > 0).any()
    assert not torch.allclose(maps.mean(dim=1), plain)
    tunnel = NoiseTunnel(method)
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.manual_seed(seed)
        got = tunnel.attribute(x, nt_type=nt_type, nt_samples=n, stdevs=stdev, target=targets)
        expected = smoothed(maps, nt_type)
        assert got.shape == plain.shape
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * scale, msg=nt_type)


@pytest.mark.parametrize("name", ["Grad-CAM", "FD-CAM"])
def test_noise_tunnel_in_chunks_with_a_tensor_target_and_method_options(
    small: SplitModel, name: str
) -> None:
    """``nt_samples_batch_size`` splits the copies over several calls (two draws of the
    noise, two target expansions); options of ``attribute`` pass through."""
    method = build(name, small)
    torch.manual_seed(2)
    x = torch.randn(2, *small.input_shape, dtype=torch.double)
    targets = torch.tensor([4, 0])
    seed, stdev = 3, 0.3
    # NoiseTunnel draws 2 copies per image, then the remaining 1.
    first = noise_tunnel_draw(x, 2, stdev, seed)
    second = x + torch.normal(0, torch.tensor(stdev).repeat(x.shape))
    kwargs = {"relu_attributions": True}
    maps = torch.cat(
        [
            maps_of_copies(method, first, targets.tolist(), 2, **kwargs),
            maps_of_copies(method, second, targets.tolist(), 1, **kwargs),
        ],
        dim=1,
    )
    torch.manual_seed(seed)
    got = NoiseTunnel(method).attribute(
        x,
        nt_type="vargrad",
        nt_samples=3,
        nt_samples_batch_size=2,
        stdevs=stdev,
        target=targets,
        **kwargs,
    )
    expected = smoothed(maps, "vargrad")
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


# ----------------------------------------------------------------- Captum's metrics


def upsampled_explanation(method: Any) -> Callable[..., tuple[Tensor]]:
    """The recipe of docs/captum.md: the layer map upsampled to the input, (N, 1, H, W),
    in a tuple: sensitivity_max passes a tuple of inputs first and iterates over what
    comes back (a bare tensor would be iterated over its examples)."""

    def explanation_func(inputs: Tensor | tuple[Tensor, ...], target: Any = None) -> tuple[Tensor]:
        (x,) = inputs if isinstance(inputs, tuple) else (inputs,)
        attr = method.attribute(x, target=target, relu_attributions=True)
        return (LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear"),)

    return explanation_func


def fixed_patterns(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator, dtype=torch.double)


@pytest.mark.parametrize("name", ["Grad-CAM", "FD-CAM"])
def test_infidelity_of_an_upsampled_cam(small: SplitModel, name: str) -> None:
    model = small.model
    explanation_func = upsampled_explanation(build(name, small))
    torch.manual_seed(4)
    x = torch.randn(2, *small.input_shape, dtype=torch.double)
    targets = [2, 0]
    n = 4
    patterns = 0.1 * fixed_patterns(n, small.input_shape, seed=5)

    def perturb_func(inputs: Tensor) -> tuple[Tensor, Tensor]:
        # Captum repeats each image n times (rows example-major): copy j gets pattern j.
        perturbation = patterns.repeat(len(inputs) // n, 1, 1, 1)
        return perturbation, inputs - perturbation

    # infidelity wants attributions of the input's shape: the map on every channel.
    (upsampled,) = explanation_func(x, targets)
    attributions = upsampled.expand_as(x)
    assert attributions.shape == x.shape and attributions.abs().max() > 0
    got = infidelity(model, perturb_func, x, attributions, target=targets, n_perturb_samples=n)
    got_normalized = infidelity(
        model, perturb_func, x, attributions, target=targets, n_perturb_samples=n, normalize=True
    )

    expected, expected_normalized = [], []
    with torch.no_grad():
        for i, t in enumerate(targets):
            dots, diffs = [], []
            for j in range(n):
                drop = model(x[i : i + 1])[0, t] - model(x[i : i + 1] - patterns[j])[0, t]
                dots.append(float((attributions[i] * patterns[j]).sum()))
                diffs.append(float(drop))
            a, d = np.array(dots), np.array(diffs)
            expected.append(np.mean((a - d) ** 2))
            beta = np.mean(a * d) / np.mean(a**2)
            expected_normalized.append(np.mean((beta * a - d) ** 2))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(got_normalized.numpy(), expected_normalized, rtol=1e-9)
    assert all(v > 0 for v in expected)


@pytest.mark.parametrize("name", ["Grad-CAM", "FD-CAM"])
def test_sensitivity_max_of_an_upsampled_cam(small: SplitModel, name: str) -> None:
    method = build(name, small)
    explanation_func = upsampled_explanation(method)
    torch.manual_seed(6)
    x = torch.randn(2, *small.input_shape, dtype=torch.double)
    targets = [1, 4]
    n, radius = 3, 0.2
    directions = fixed_patterns(n, small.input_shape, seed=7).clamp(-1, 1)

    def perturb_func(inputs: Tensor, perturb_radius: float) -> Tensor:
        return inputs + perturb_radius * directions.repeat(len(inputs) // n, 1, 1, 1)

    got = sensitivity_max(
        explanation_func,
        x,
        perturb_func,
        perturb_radius=radius,
        n_perturb_samples=n,
        target=targets,
    )

    expected = []
    for i, t in enumerate(targets):
        # One image at a time, interpolated by hand: no part of the recipe above.
        def upsampled(image: Tensor, t: int = t) -> Tensor:
            attr = method.attribute(image, target=t, relu_attributions=True)
            return F.interpolate(attr, size=(8, 8), mode="bilinear", align_corners=False)

        reference = upsampled(x[i : i + 1])
        norm = reference.norm()
        ratios = [
            ((upsampled(x[i : i + 1] + radius * directions[j]) - reference).norm() / norm).item()
            for j in range(n)
        ]
        expected.append(max(ratios))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert all(0 < v < 10 for v in expected)


def test_explain_is_the_same_explanation_func(small: SplitModel) -> None:
    """captum_fdcam.evaluation.explain gives the recipe's maps (numpy, float32)."""
    torch.manual_seed(8)
    x = torch.randn(3, *small.input_shape, dtype=torch.double)
    targets = [0, 2, 4]
    (recipe,) = upsampled_explanation(LayerFDCam(small.model, small.layer))(x, targets)
    maps = explain(small.model, x, targets, method="FD-CAM", layer="features.3")
    np.testing.assert_allclose(maps, recipe.float().numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- segmentation


@pytest.fixture(scope="module")
def segmentation() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    x = torch.randn(2, 3, 64, 64, dtype=torch.double)
    return model.double().eval(), x


def region_masks(logits: Tensor) -> Tensor:
    """(N, C, H, W): 1 where the class has the largest logit, written as a loop."""
    masks = torch.zeros_like(logits)
    labels = logits.argmax(dim=1)
    for c in range(logits.shape[1]):
        masks[:, c] = (labels == c).to(logits.dtype)
    return masks


def largest_classes(masks: Tensor) -> list[int]:
    """Each image's class with the most pixels (a region that is not empty)."""
    return [int(m.sum(dim=(1, 2)).argmax()) for m in masks]


def region_score(logits: Tensor, masks: Tensor, targets: list[int]) -> Tensor:
    return torch.stack([(logits[i, t] * masks[i, t]).sum() for i, t in enumerate(targets)])


class Hook:
    """A forward hook by hand: records the module's output, optionally changes it."""

    def __init__(self, module: nn.Module, change: Callable[[Tensor], Tensor] | None = None) -> None:
        self.output: Tensor | None = None
        self.change = change
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        if self.change is not None:
            output = self.change(output)
        self.output = output
        return output

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_segmentation_target_scores(segmentation: tuple[nn.Module, Tensor]) -> None:
    model, x = segmentation
    seg = SegmentationTarget(model)
    with torch.no_grad():
        logits = model(x)["out"]
        masks = region_masks(logits)
        assert torch.equal(seg.predicted_masks(x), masks)
        scores = seg(x, masks)
        assert scores.shape == (2, 3)
        expected = np.zeros((2, 3))
        out = logits.numpy()
        for i in range(2):
            for h in range(64):
                for w in range(64):
                    c = out[i, :, h, w].argmax()
                    expected[i, c] += out[i, c, h, w]
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(seg(x), scores)  # no mask: the prediction's regions
        box = torch.zeros(2, 64, 64, dtype=torch.bool)
        box[:, 10:30, 20:50] = True  # one region for every class
        torch.testing.assert_close(seg(x, box), logits[:, :, 10:30, 20:50].sum(dim=(2, 3)))
    with pytest.raises(ValueError, match="mask must be"):
        seg(x, box[0])
    with pytest.raises(KeyError, match="output_key"):
        SegmentationTarget(model, output_key="logits")(x)


def test_grad_cam_on_a_segmentation_model(segmentation: tuple[nn.Module, Tensor]) -> None:
    model, x = segmentation
    layer = model.backbone.layer4
    with torch.no_grad():
        masks = region_masks(model(x)["out"])
    targets = largest_classes(masks)

    # Naive Grad-CAM: the layer's output by a hook, its gradient by autograd.
    with Hook(layer) as hook:
        logits = model(x)["out"]
    assert hook.output is not None
    activation = hook.output
    (gradient,) = torch.autograd.grad(region_score(logits, masks, targets).sum(), activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    expected = (weights * activation).sum(dim=1, keepdim=True).detach()  # (2, 1, 8, 8)

    seg = SegmentationTarget(model)
    cam = LayerGradCam(seg, layer)
    got = cam.attribute(x, target=targets, additional_forward_args=masks)
    assert got.shape == (2, 1, 8, 8) and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # Without masks the regions are the prediction's: the same map for a gradient CAM.
    torch.testing.assert_close(cam.attribute(x, target=targets), expected, rtol=1e-9, atol=1e-12)


def test_a_plain_function_as_forward_func(segmentation: tuple[nn.Module, Tensor]) -> None:
    """A closure works too (the wrapper being a module adds the layer-membership check,
    the train-mode warning and FG-CAM); with a fixed region it is one image at a time."""
    model, x = segmentation
    x = x[:1]
    with torch.no_grad():
        masks = region_masks(model(x)["out"])
    (target,) = largest_classes(masks)

    def region_logit(inputs: Tensor) -> Tensor:
        return (model(inputs)["out"] * masks).sum(dim=(2, 3))

    layer = model.backbone.layer4
    got = LayerGradCam(region_logit, layer).attribute(x, target=target)
    wrapped = LayerGradCam(SegmentationTarget(model), layer)
    torch.testing.assert_close(
        got, wrapped.attribute(x, target=target, additional_forward_args=masks)
    )
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        FGCam(LayerGradCam(region_logit, layer))
    fine = FGCam(wrapped).attribute(x, target=target, additional_forward_args=masks)
    assert fine.shape == (1, 1, 64, 64)


def test_noise_tunnel_expands_the_masks(segmentation: tuple[nn.Module, Tensor]) -> None:
    """NoiseTunnel repeats each image's mask for its noisy copies, as it does targets."""
    model, x = segmentation
    with torch.no_grad():
        masks = region_masks(model(x)["out"])
    targets = largest_classes(masks)
    cam = LayerGradCam(SegmentationTarget(model), model.backbone.layer4)
    n, stdev, seed = 2, 0.5, 13
    noisy = noise_tunnel_draw(x, n, stdev, seed)
    maps = torch.stack(
        [
            torch.cat(
                [
                    cam.attribute(
                        noisy[i * n + j : i * n + j + 1],
                        target=t,
                        additional_forward_args=masks[i : i + 1],
                    )
                    for j in range(n)
                ]
            )
            for i, t in enumerate(targets)
        ]
    )
    torch.manual_seed(seed)
    got = NoiseTunnel(cam).attribute(
        x, nt_samples=n, stdevs=stdev, target=targets, additional_forward_args=masks
    )
    torch.testing.assert_close(got, maps.mean(dim=1), rtol=1e-9, atol=1e-12)


def _scores_with(
    model: nn.Module,
    x: Tensor,
    layer: nn.Module,
    change: Callable[[Tensor], Tensor],
    masks: Tensor,
    targets: list[int],
) -> Tensor:
    with torch.no_grad(), Hook(layer, change):
        return region_score(model(x)["out"], masks, targets)


@pytest.mark.slow
def test_ablation_cam_on_a_segmentation_model(segmentation: tuple[nn.Module, Tensor]) -> None:
    """w_k = (y - y with channel k zeroed) / y for the region score, two channels by hand."""
    model, x = segmentation
    layer = model.classifier[2]  # the head's ReLU, 512 channels of 8x8
    with torch.no_grad():
        masks = region_masks(model(x)["out"])
    targets = largest_classes(masks)
    with torch.no_grad(), Hook(layer) as hook:
        y = region_score(model(x)["out"], masks, targets)
    assert hook.output is not None
    activation = hook.output

    cam = LayerAblationCam(SegmentationTarget(model), layer)
    terms = cam.attribute(
        x, target=targets, additional_forward_args=masks, attr_dim_summation=False
    )  # (2, 512, 8, 8): w_k A^k
    live = activation.flatten(2).ne(0).any(dim=2)
    for k in [int(torch.nonzero(live[0] & live[1])[j]) for j in (0, -1)]:

        def zero_k(out: Tensor, k: int = k) -> Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        y_off = _scores_with(model, x, layer, zero_k, masks, targets)
        w = (y - y_off) / y
        expected = w[:, None, None] * activation[:, k]
        assert expected.abs().max() > 0
        torch.testing.assert_close(terms[:, k], expected, rtol=1e-7, atol=1e-12)


@pytest.mark.slow
def test_fd_cam_on_a_segmentation_model(segmentation: tuple[nn.Module, Tensor]) -> None:
    """FD-CAM's switching score of two channels, groups and switches written by hand:
    s_k = ((y - y(group of k off)) + y(only the group of k on)) / 2."""
    model, x = segmentation
    layer = model.classifier[2]
    with torch.no_grad():
        masks = region_masks(model(x)["out"])
    targets = largest_classes(masks)
    with torch.no_grad(), Hook(layer) as hook:
        y = region_score(model(x)["out"], masks, targets)
    assert hook.output is not None
    activation = hook.output

    seg = SegmentationTarget(model)
    cam = LayerFDCam(seg, layer)  # groups of the 5% most similar channels
    scores = cam.channel_scores(x, target=targets, additional_forward_args=masks)  # (2, 512)
    attr = cam.attribute(x[:1], target=targets[0], additional_forward_args=masks[:1])
    assert attr.shape == (1, 1, 8, 8) and torch.isfinite(attr).all() and attr.abs().max() > 0
    channels = activation.shape[1]
    for i in range(2):
        flat = activation[i].flatten(1)
        for k in (3, 200):
            similarity = [
                float(flat[k] @ flat[m]) / float(flat[k].norm() * flat[m].norm())
                if flat[k].norm() > 0 and flat[m].norm() > 0
                else 0.0
                for m in range(channels)
            ]
            threshold = np.quantile(similarity, 0.95)  # linear interpolation, as the paper
            group = [m for m in range(channels) if similarity[m] > threshold or m == k]
            assert 1 < len(group) < channels

            def switch(out: Tensor, keep_group: bool, group: list[int] = group) -> Tensor:
                inside = torch.zeros(channels, dtype=torch.bool)
                inside[group] = True
                keep = inside if keep_group else ~inside
                return out * keep[None, :, None, None].to(out.dtype)

            xi, mi = x[i : i + 1], masks[i : i + 1]
            off = _scores_with(model, xi, layer, lambda o: switch(o, False), mi, [targets[i]])
            on = _scores_with(model, xi, layer, lambda o: switch(o, True), mi, [targets[i]])
            expected = ((y[i] - off[0]) + on[0]) / 2
            assert scores[i, k].item() == pytest.approx(expected.item(), rel=1e-7, abs=1e-9)
