"""FG-CAM, its propagation rules and the LRP baselines.

The references here are written from the paper's formulas with plain tensor
operations (``F.conv2d`` and its input gradient, explicit max-unpooling), layer
by layer over hand-written model structure: they share no code with the
library's hook-and-autograd engine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LRP
from captum.attr import LayerGradCam as CaptumLayerGradCam
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, IdentityRule
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from captum_fdcam import (
    CLRP,
    METHODS,
    SGLRP,
    FGCam,
    LayerFGCam,
    LayerGradCam,
    LayerLayerCam,
    PropagationLRP,
    ZBoxRule,
    ZPlusRule,
)
from captum_fdcam.methods.fine_grained import denoise_components
from captum_fdcam.propagation import RuleAssignment, propagate
from tests.conftest import SmallCNN, assert_same_snapshot, model_snapshot

# ----------------------------------------------------------------- reference rules


def _safe_ratio(r: Tensor, z: Tensor) -> Tensor:
    out = torch.zeros_like(r)
    nonzero = z != 0
    out[nonzero] = r[nonzero] / z[nonzero]
    return out


def _conv_kwargs(conv: nn.Conv2d) -> dict:
    return dict(
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups
    )


def ref_conv_zplus(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    kw = _conv_kwargs(conv)
    z = F.conv2d(xp, wp, **kw) + F.conv2d(xn, wn, **kw)
    s = _safe_ratio(r, z)
    return xp * conv2d_input(x.shape, wp, s, **kw) + xn * conv2d_input(x.shape, wn, s, **kw)


def ref_conv_zbox(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    kw = _conv_kwargs(conv)
    z = F.conv2d(x, w, **kw) - F.conv2d(low, wp, **kw) - F.conv2d(high, wn, **kw)
    s = _safe_ratio(r, z)
    return (
        x * conv2d_input(x.shape, w, s, **kw)
        - low * conv2d_input(x.shape, wp, s, **kw)
        - high * conv2d_input(x.shape, wn, s, **kw)
    )


def ref_maxpool(pool: nn.MaxPool2d, x: Tensor, r: Tensor) -> Tensor:
    xp = x.clamp(min=0)
    z, index = F.max_pool2d(xp, pool.kernel_size, pool.stride, return_indices=True)
    s = _safe_ratio(r, z)
    return xp * F.max_unpool2d(s, index, pool.kernel_size, pool.stride, output_size=x.shape[-2:])


def ref_avgpool(pool: nn.AvgPool2d, x: Tensor, r: Tensor) -> Tensor:
    k = pool.kernel_size
    xp = x.clamp(min=0)
    s = _safe_ratio(r, F.avg_pool2d(xp, k))
    spread = s.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3) / (k * k)
    return xp * spread


def ref_linear_zplus(linear: nn.Linear, x: Tensor, r: Tensor) -> Tensor:
    w = linear.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = _safe_ratio(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def ref_step(module: nn.Module, x: Tensor, r: Tensor, first: bool) -> Tensor:
    """One layer of FG-CAM's rules, from the relevance at the output to the input."""
    if isinstance(module, nn.Conv2d):
        return (ref_conv_zbox if first else ref_conv_zplus)(module, x, r)
    if isinstance(module, nn.MaxPool2d):
        return ref_maxpool(module, x, r)
    if isinstance(module, nn.AvgPool2d):
        return ref_avgpool(module, x, r)
    if isinstance(module, nn.Linear):
        return ref_linear_zplus(module, x, r)
    if isinstance(module, nn.Flatten):
        return r.reshape(x.shape)
    assert isinstance(module, (nn.ReLU, nn.BatchNorm2d, nn.Dropout)), module
    return r


def ref_sequential(
    modules: list[nn.Module], x: Tensor, r_out: Tensor, stop: int, first_is_input: bool = True
) -> Tensor:
    """Relevance at the output of ``modules[stop]`` (``stop = -1``: at ``x``)."""
    inputs = []
    with torch.no_grad():
        h = x
        for m in modules:
            inputs.append(h)
            h = m(h.clone())
    r = r_out
    for i in range(len(modules) - 1, stop, -1):
        r = ref_step(modules[i], inputs[i], r, first=first_is_input and i == 0)
    return r


# ---------------------------------------------------------------------- models


class TinyVGG(nn.Module):
    """VGG-style: conv/(BN)/ReLU blocks, max- and average-pooling, an MLP head."""

    def __init__(self, batch_norm: bool = False, num_classes: int = 5) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            bn = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [nn.Conv2d(cin, cout, 3, padding=1), *bn, nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, 6),
            *block(6, 8),
            nn.MaxPool2d(2),
            *block(8, 10),
            nn.AvgPool2d(2),
            *block(10, 12),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(12 * 2 * 2, 16),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(16, num_classes),
        )
        if batch_norm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class TinyResNet(nn.Module):
    """A stem, one residual block written as ``out += identity`` with a ReLU module
    called three times, a pooled conv head and a linear classifier."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(6, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(6, 8, 3, padding=1)
        self.head_act = nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.stem(x))
        out = self.conv_b(self.relu(self.conv_a(h)))
        out += h
        out = self.pool(self.relu(out))
        return self.fc(torch.flatten(self.head_act(self.head(out)), 1))


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.normal_(0, 0.4)
    return model.double().eval()


def _grad_cam_components(pre: Callable, post: Callable, x: Tensor, targets: list[int]) -> Tensor:
    with torch.no_grad():
        a = pre(x)
    a = a.detach().requires_grad_()
    out = post(a)
    (g,) = torch.autograd.grad(out[torch.arange(len(targets)), targets].sum(), a)
    return g.mean(dim=(2, 3), keepdim=True) * a.detach()


@pytest.fixture(scope="module")
def tiny_vgg() -> TinyVGG:
    torch.manual_seed(0)
    return _seeded(TinyVGG(batch_norm=True))


@pytest.fixture(scope="module")
def images() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16, dtype=torch.float64)


# ------------------------------------------------------------ FG-CAM vs reference


@pytest.mark.parametrize("batch_norm", [False, True])
def test_fg_grad_cam_matches_layer_by_layer_reference(batch_norm: bool, images: Tensor) -> None:
    model = _seeded(TinyVGG(batch_norm=batch_norm))
    feats = list(model.features)
    base_index = len(feats) - 1  # the last max-pool, as in the paper's VGG
    targets = [0, 3, 4]
    components = _grad_cam_components(
        lambda x: model.features(x), lambda a: model.classifier(a), images, targets
    )
    base = LayerGradCam(model, model.features[base_index])
    for stop in range(base_index - 1, -2, -1):
        expected = ref_sequential(feats, images, components, stop).sum(dim=1, keepdim=True)
        if stop == -1:
            got = FGCam(base).attribute(images, target=targets)
        else:
            got = LayerFGCam(base, model.features[stop]).attribute(images, target=targets)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_fg_layer_cam_at_the_input_matches_reference(tiny_vgg: TinyVGG, images: Tensor) -> None:
    targets = [1, 1, 2]
    feats = list(tiny_vgg.features)
    with torch.no_grad():
        a = tiny_vgg.features(images)
    a = a.requires_grad_()
    (g,) = torch.autograd.grad(tiny_vgg.classifier(a)[torch.arange(3), targets].sum(), a)
    components = F.relu(g) * a.detach()
    expected = ref_sequential(feats, images, components, -1).sum(dim=1, keepdim=True)
    got = FGCam(LayerLayerCam(tiny_vgg, tiny_vgg.features[-1])).attribute(images, target=targets)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_residual_relevance_is_split_between_the_summands(images: Tensor) -> None:
    model = _seeded(TinyResNet())
    targets = [2, 0, 1]
    x = images

    def pre(x: Tensor) -> Tensor:
        h = model.relu(model.stem(x))
        out = model.conv_b(model.relu(model.conv_a(h))) + h
        return model.head_act(model.head(model.pool(model.relu(out))))

    components = _grad_cam_components(pre, lambda a: model.fc(torch.flatten(a, 1)), x, targets)
    with torch.no_grad():
        h = model.relu(model.stem(x))
        a_in = model.relu(model.conv_a(h))
        branch = model.conv_b(a_in)
        total = branch + h
        pooled = model.pool(model.relu(total))
    r = ref_conv_zplus(model.head, pooled, components)  # ReLU passes R unchanged
    r = ref_maxpool(model.pool, model.relu(total), r)
    r_branch = branch * _safe_ratio(r, total)  # R_a = a / (a + b) * R
    r_skip = h * _safe_ratio(r, total)
    r_h = ref_conv_zplus(model.conv_a, h, ref_conv_zplus(model.conv_b, a_in, r_branch)) + r_skip
    r_input = ref_conv_zbox(model.stem, x, r_h)

    base = LayerGradCam(model, model.head_act)
    got_h = LayerFGCam(base, model.stem).attribute(x, target=targets)
    torch.testing.assert_close(got_h, r_h.sum(dim=1, keepdim=True), rtol=1e-9, atol=1e-12)
    got = FGCam(base).attribute(x, target=targets)
    torch.testing.assert_close(got, r_input.sum(dim=1, keepdim=True), rtol=1e-9, atol=1e-12)
    # The split conserves: relevance at the block's output = relevance of both summands.
    torch.testing.assert_close((r_branch + r_skip).sum(), r.sum())


# ----------------------------------------------------------------- base CAMs


@pytest.fixture(scope="module")
def small() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().double().eval()


@pytest.mark.parametrize("name", list(METHODS))
def test_at_the_base_layer_fg_cam_is_the_base_map(small: SmallCNN, name: str) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # Group-CAM's default blur (kernel 51) needs images larger than 8x8.
    options = {"blur_kernel_size": 5, "blur_sigma": 2.0} if name == "Group-CAM" else {}
    base = METHODS[name](small, small.act, **options)
    expected = base.attribute(x, target=[1, 3])
    got = LayerFGCam(base, small.act).attribute(x, target=[1, 3])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # Propagating through the ReLU (its input) passes the relevance unchanged.
    through = LayerFGCam(base, small.act).attribute(x, target=[1, 3], attribute_to_layer_input=True)
    torch.testing.assert_close(through, expected, rtol=1e-9, atol=1e-12)
    at_input = FGCam(base).attribute(x, target=[1, 3])
    assert at_input.shape == (2, 1, 8, 8) and torch.isfinite(at_input).all()


def test_captum_layer_grad_cam_as_base(tiny_vgg: TinyVGG, images: Tensor) -> None:
    layer = tiny_vgg.features[-1]
    ours = FGCam(LayerGradCam(tiny_vgg, layer)).attribute(images, target=[0, 1, 2])
    theirs = FGCam(CaptumLayerGradCam(tiny_vgg, layer)).attribute(images, target=[0, 1, 2])
    assert torch.equal(ours, theirs)


def test_batch_equals_single_calls(tiny_vgg: TinyVGG, images: Tensor) -> None:
    fg = LayerFGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1]), tiny_vgg.features[3])
    batch = fg.attribute(images, target=torch.tensor([4, 0, 2]))
    singles = torch.cat(
        [fg.attribute(images[i : i + 1], target=t) for i, t in enumerate([4, 0, 2])]
    )
    torch.testing.assert_close(batch, singles, rtol=1e-9, atol=1e-12)


def test_relu_attributions(tiny_vgg: TinyVGG, images: Tensor) -> None:
    fg = FGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1]))
    raw = fg.attribute(images, target=1)
    assert (raw < 0).any()
    torch.testing.assert_close(fg.attribute(images, target=1, relu_attributions=True), F.relu(raw))


# ------------------------------------------------------------------- denoising


def test_denoising_with_every_singular_value_only_removes_row_means() -> None:
    torch.manual_seed(3)
    components = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    rows = components.reshape(2, 6, -1)
    expected = (rows - rows.mean(dim=2, keepdim=True)).reshape_as(components)
    torch.testing.assert_close(denoise_components(components, 1000), expected)
    torch.testing.assert_close(denoise_components(components, 1.0), expected)


def test_denoising_keeps_the_leading_singular_values() -> None:
    torch.manual_seed(4)
    components = torch.randn(2, 7, 3, 3, dtype=torch.float64)
    got = denoise_components(components, 2)
    for i in range(2):
        m = components[i].reshape(7, 9).numpy()
        m = m - m.mean(axis=1, keepdims=True)
        import numpy as np

        u, s, vt = np.linalg.svd(m, full_matrices=False)
        expected = (u[:, :2] * s[:2]) @ vt[:2]
        np.testing.assert_allclose(got[i].reshape(7, 9).numpy(), expected, atol=1e-12)
    # A fraction counts singular values (min(K, h w) = 7 here): int(0.3 * 7) = 2.
    torch.testing.assert_close(denoise_components(components, 0.3), got)


def test_denoised_fg_cam_at_the_base_layer(small: SmallCNN) -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    base = LayerGradCam(small, small.act)
    components = base.attribute(x, target=0, attr_dim_summation=False)
    fg = LayerFGCam(base, small.act, denoise=True, singular_values=10_000)
    expected = denoise_components(components, 10_000).sum(dim=1, keepdim=True)
    torch.testing.assert_close(fg.attribute(x, target=0), expected)
    assert not torch.allclose(expected, components.sum(dim=1, keepdim=True))


# ----------------------------------------------------------------- conservation


def _no_bias(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
    return model.double().eval()


def _efficientnet() -> nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch")
    from captum_fdcam.models import efficientnet_lite0

    return efficientnet_lite0(pretrained=False)


# (constructor, base layer, layers every path passes through, tolerance). MobileNet's
# and EfficientNet's linear bottlenecks have signed outputs: where every contribution
# to a projection is negative the z+ denominator is 0 and that neuron's relevance is
# dropped, as in the authors' code (up to 3e-3 of the total here, 1e-4 at 224x224).
CONSERVATION = {
    "vgg16_bn": (
        lambda: torchvision.models.vgg16_bn(num_classes=10),
        lambda m: m.features[-1],
        lambda m: [m.features[i] for i in (40, 33, 23, 13, 6, 2, 0)],
        1e-9,
    ),
    "resnet18": (
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda m: m.layer4,
        lambda m: [m.layer3, m.layer2[1], m.layer2, m.layer1, m.maxpool, m.relu, m.conv1],
        1e-9,
    ),
    "resnet50": (
        lambda: torchvision.models.resnet50(num_classes=10),
        lambda m: m.layer4,
        lambda m: [m.layer3, m.layer2, m.layer1[0], m.maxpool, m.conv1],
        1e-9,
    ),
    "mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10),
        lambda m: m.features[-1],
        lambda m: [m.features[i] for i in (17, 13, 7, 3, 1, 0)],
        1e-3,
    ),
    "efficientnet_lite0": (
        _efficientnet,
        lambda m: m.head_activation,
        lambda m: [m._bn1, m._blocks[12], m._blocks[5], m._blocks[1], m._conv_stem],
        5e-3,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONSERVATION))
def test_positive_relevance_is_conserved_without_bias(name: str) -> None:
    make, base_layer, layers, tolerance = CONSERVATION[name]
    torch.manual_seed(5)
    model = _no_bias(make())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    start = base_layer(model)
    captured: list[Tensor] = []
    handle = start.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    # Positive wherever the (non-negative) activation is.
    relevance = captured[0] * (1 + torch.rand_like(captured[0]))
    total = relevance.sum()
    assignment = RuleAssignment(None, ZBoxRule())
    for layer in [*layers(model), None]:
        (r,) = propagate(model, assignment, (x,), None, lambda _: relevance, start, layer)
        ratio = (r.sum() / total).item()
        assert ratio == pytest.approx(1.0, abs=tolerance), (name, layer)
        assert ratio <= 1 + 1e-9  # no rule creates relevance


def test_signed_zplus_rule_conserves_where_denominators_are_nonzero() -> None:
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 5, 3, padding=1).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)  # signed inputs
    r = torch.rand(2, 5, 6, 6, dtype=torch.float64)
    (got,) = ZPlusRule().relevance(conv, (x,), conv(x), r)
    torch.testing.assert_close(got, ref_conv_zplus(conv, x, r))
    torch.testing.assert_close(got.sum(), r.sum())
    assert (got >= 0).all()  # positive relevance stays positive


def test_zbox_rule_with_given_bounds_and_padding() -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    r = torch.rand(1, 4, 5, 5, dtype=torch.float64)
    (got,) = ZBoxRule(low=0.0, high=1.0).relevance(conv, (x,), conv(x), r)
    w = conv.weight.detach()
    low, high = torch.zeros_like(x), torch.ones_like(x)
    z = F.conv2d(x, w, padding=1) - F.conv2d(low, w.clamp(min=0), padding=1)
    z = z - F.conv2d(high, w.clamp(max=0), padding=1)
    s = r / z
    expected = x * conv2d_input(x.shape, w, s, padding=1) - conv2d_input(
        x.shape, w.clamp(max=0), s, padding=1
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(), r.sum())


# ------------------------------------------------------------------ LRP baselines


def _lrp_reference(model: TinyVGG, x: Tensor, r_out: Tensor) -> Tensor:
    modules = list(model.features) + list(model.classifier)
    return ref_sequential(modules, x, r_out, -1)


def test_lrp_matches_reference(tiny_vgg: TinyVGG, images: Tensor) -> None:
    targets = [0, 2, 4]
    with torch.no_grad():
        logits = tiny_vgg(images)
    r_out = torch.zeros_like(logits)
    r_out[torch.arange(3), targets] = logits[torch.arange(3), targets]
    got = PropagationLRP(tiny_vgg).attribute(images, target=targets)
    assert got.shape == images.shape
    torch.testing.assert_close(got, _lrp_reference(tiny_vgg, images, r_out), rtol=1e-9, atol=1e-12)


def _per_class_lrp(model: nn.Module, x: Tensor, classes: int) -> list[Tensor]:
    lrp = PropagationLRP(model)
    return [lrp.attribute(x, target=k) for k in range(classes)]


def test_clrp_is_lrp_of_the_target_minus_lrp_of_the_dual(tiny_vgg: TinyVGG, images: Tensor) -> None:
    class DualLRP(PropagationLRP):
        def output_relevance(self, output: Tensor, target: object) -> Tensor:
            mask = F.one_hot(torch.as_tensor(target), output.shape[1]).to(output.dtype)
            score = (mask * output).sum(dim=1, keepdim=True)
            return (1 - mask) * score / (output.shape[1] - 1)

    targets = [1, 2, 3]
    lrp = PropagationLRP(tiny_vgg).attribute(images, target=targets)
    dual = DualLRP(tiny_vgg).attribute(images, target=targets)
    clrp = CLRP(tiny_vgg).attribute(images, target=targets)
    torch.testing.assert_close(clrp, lrp - dual)
    # Linearity: the dual is the per-class LRPs rescaled to y_t / (C - 1).
    with torch.no_grad():
        logits = tiny_vgg(images)
    per_class = _per_class_lrp(tiny_vgg, images, 5)
    for i, t in enumerate(targets):
        expected = sum(
            per_class[k][i] * (logits[i, t] / 4) / logits[i, k] for k in range(5) if k != t
        )
        torch.testing.assert_close(dual[i], expected)


def test_sglrp_starts_from_the_softmax_gradient(tiny_vgg: TinyVGG, images: Tensor) -> None:
    targets = [4, 0, 1]
    with torch.no_grad():
        logits = tiny_vgg(images)
    p = logits.softmax(dim=1)
    per_class = _per_class_lrp(tiny_vgg, images, 5)
    got = SGLRP(tiny_vgg).attribute(images, target=targets)
    for i, t in enumerate(targets):
        coefficient = [
            (p[i, t] * (1 - p[i, t]) if k == t else -p[i, t] * p[i, k]) / logits[i, k]
            for k in range(5)
        ]
        expected = sum(per_class[k][i] * coefficient[k] for k in range(5))
        torch.testing.assert_close(got[i], expected)


@pytest.mark.slow
def test_lrp_conserves_the_logit_on_resnet_where_captum_does_not() -> None:
    torch.manual_seed(8)
    model = _no_bias(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        logit = model(x)[0, 3]
    ours = PropagationLRP(model).attribute(x, target=3).sum()
    assert ours.item() == pytest.approx(logit.item(), rel=1e-6)
    # Captum's LRP copies the relevance to both summands of every residual addition.
    with pytest.warns(UserWarning):
        theirs = LRP(model).attribute(x.clone(), target=3).sum()
    assert abs(theirs.item()) > 10 * abs(logit.item())


# ---------------------------------------------------------- rules and overrides


def test_a_module_rule_attribute_overrides_the_default(tiny_vgg: TinyVGG, images: Tensor) -> None:
    feats = list(tiny_vgg.features)
    conv = tiny_vgg.features[3]  # the second conv
    base = LayerGradCam(tiny_vgg, tiny_vgg.features[-1])
    default = LayerFGCam(base, tiny_vgg.features[2]).attribute(images, target=0)
    conv.rule = EpsilonRule(epsilon=1e-6)
    try:
        before = model_snapshot(tiny_vgg)
        pointers = {n: p.data_ptr() for n, p in tiny_vgg.named_parameters()}
        got = LayerFGCam(base, tiny_vgg.features[2]).attribute(images, target=0)
        assert_same_snapshot(before, model_snapshot(tiny_vgg))
        assert pointers == {n: p.data_ptr() for n, p in tiny_vgg.named_parameters()}
    finally:
        del conv.rule
    assert not torch.allclose(got, default)
    # Reference: FG-CAM's rules, but Captum's epsilon rule (bias included) at the conv.
    components = _grad_cam_components(
        lambda x: tiny_vgg.features(x), lambda a: tiny_vgg.classifier(a), images, [0, 0, 0]
    )
    with torch.no_grad():
        inputs = [images]
        for m in feats:
            inputs.append(m(inputs[-1].clone()))
    r = components
    for i in range(len(feats) - 1, 2, -1):
        if i == 3:
            x = inputs[3].detach().requires_grad_()
            z = conv(x)
            denominator = z.detach() + torch.where(z >= 0, 1.0, -1.0) * 1e-6
            (g,) = torch.autograd.grad(z, x, r / denominator)
            r = x.detach() * g
        else:
            r = ref_step(feats[i], inputs[i], r, first=False)
    torch.testing.assert_close(got, r.sum(dim=1, keepdim=True), rtol=1e-9, atol=1e-12)


def test_captum_gamma_rule_by_type_restores_the_weights(tiny_vgg: TinyVGG, images: Tensor) -> None:
    before = model_snapshot(tiny_vgg)
    fg = FGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1]), rules={nn.Conv2d: GammaRule})
    got = fg.attribute(images, target=2)
    assert torch.isfinite(got).all()
    assert_same_snapshot(before, model_snapshot(tiny_vgg))


def test_model_restored_when_a_rule_raises(tiny_vgg: TinyVGG, images: Tensor) -> None:
    class Failing(GammaRule):
        def _manipulate_weights(self, module: nn.Module, inputs: object, outputs: object) -> None:
            super()._manipulate_weights(module, inputs, outputs)  # rewrites in place
            raise RuntimeError("rule failed")

    before = model_snapshot(tiny_vgg)
    fg = FGCam(
        LayerGradCam(tiny_vgg, tiny_vgg.features[-1]), rules={tiny_vgg.features[4]: Failing()}
    )
    with pytest.raises(RuntimeError, match="rule failed"):
        fg.attribute(images, target=2)
    assert_same_snapshot(before, model_snapshot(tiny_vgg))


def test_model_and_input_unchanged(tiny_vgg: TinyVGG, images: Tensor) -> None:
    before = model_snapshot(tiny_vgg)
    x = images.clone()
    for attribution in (
        FGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1]), denoise=True),
        LayerFGCam(METHODS["FD-CAM"](tiny_vgg, tiny_vgg.features[-1]), tiny_vgg.features[5]),
        SGLRP(tiny_vgg),
    ):
        with torch.no_grad():  # gradients are switched on inside, as Captum does
            attribution.attribute(x, target=1)
    assert torch.equal(x, images)
    assert_same_snapshot(before, model_snapshot(tiny_vgg))


# ---------------------------------------------------------------------- errors


def test_errors(tiny_vgg: TinyVGG, images: Tensor) -> None:
    base = LayerGradCam(tiny_vgg, tiny_vgg.features[7])
    with pytest.raises(ValueError, match="not called before"):
        LayerFGCam(base, tiny_vgg.features[10]).attribute(images, target=0)
    with pytest.raises(ValueError, match="not a submodule"):
        LayerFGCam(base, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="base_cam must be"):
        FGCam(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="singular_values"):
        FGCam(base, denoise=True, singular_values=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        FGCam(base, denoise=True, singular_values=1.5)
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        FGCam(LayerGradCam(lambda x: tiny_vgg(x), tiny_vgg.features[7]))
    with pytest.raises(NotImplementedError, match="Captum's LRP"):
        ZBoxRule()._manipulate_weights(tiny_vgg.features[0], None, None)


def test_a_module_without_rule_is_named() -> None:
    class Odd(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Odd(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    with pytest.raises(TypeError, match=r"No LRP rule for '1' \(Odd\)"):
        PropagationLRP(model).attribute(torch.randn(1, 3, 6, 6), target=0)
    model[1].rule = IdentityRule()
    assert torch.isfinite(PropagationLRP(model).attribute(torch.randn(1, 3, 6, 6), target=0)).all()
    del model[1].rule


def test_lrp_target_errors(tiny_vgg: TinyVGG, images: Tensor) -> None:
    with pytest.raises(ValueError, match="target is required"):
        PropagationLRP(tiny_vgg).attribute(images)
    with pytest.raises(IndexError, match="out of range"):
        CLRP(tiny_vgg).attribute(images, target=7)


def test_a_rule_attribute_that_is_not_a_rule(tiny_vgg: TinyVGG, images: Tensor) -> None:
    tiny_vgg.features[0].rule = "z+"
    try:
        with pytest.raises(TypeError, match="not a Captum PropagationRule"):
            FGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1])).attribute(images, target=0)
    finally:
        del tiny_vgg.features[0].rule


@pytest.mark.parametrize("name", ["Grad-CAM", "FD-CAM"])
def test_one_forward_pass_serves_the_base_cam_and_the_propagation(
    tiny_vgg: TinyVGG, images: Tensor, name: str
) -> None:
    # Images the first conv computes on (FD-CAM's replay of the pre-layer network
    # for the switched copies calls it on empty batches).
    calls: list[int] = []
    handle = tiny_vgg.features[0].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        FGCam(METHODS[name](tiny_vgg, tiny_vgg.features[-1])).attribute(images, target=0)
    finally:
        handle.remove()
    assert sum(calls) == len(images)


@pytest.mark.slow
def test_no_memory_is_kept_between_calls(tiny_vgg: TinyVGG, images: Tensor) -> None:
    import gc

    def live_tensors() -> int:
        gc.collect()
        return sum(issubclass(type(o), Tensor) for o in gc.get_objects())

    for attribution in (
        FGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1])),
        LayerFGCam(LayerGradCam(tiny_vgg, tiny_vgg.features[-1]), tiny_vgg.features[5]),
        PropagationLRP(tiny_vgg),
    ):
        attribution.attribute(images, target=1)
        before = live_tensors()
        for _ in range(3):
            attribution.attribute(images, target=1)
        assert live_tensors() == before, type(attribution).__name__
