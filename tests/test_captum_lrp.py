"""This library's rules inside Captum's own ``LRP``, residual additions, transformers.

The references are written here from the rules' formulas, layer by layer over the
models' hand-listed structure, with ``F.conv2d`` / ``F.linear`` and autograd on
those alone: they share no code with the rules, the engine or Captum's hooks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LRP, LayerLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from conftest import small_swin, small_vit
from torch import Tensor, nn

from captum_fdcam import FGCam, LayerFGCam, LayerGradCam, PropagationLRP, ZBoxRule, ZPlusRule
from captum_fdcam.propagation import RuleAssignment, propagate
from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

# ----------------------------------------------------------------- reference rules


def _ratio(r: Tensor, z: Tensor) -> Tensor:
    return torch.where(z != 0, r / torch.where(z != 0, z, 1), 0)


def _parts(layer: nn.Module) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``x, w -> layer(x)`` with the weight replaced, bias dropped (pooling: no weight)."""
    if isinstance(layer, nn.Conv2d):
        kw = dict(stride=layer.stride, padding=layer.padding)
        return lambda x, w: F.conv2d(x, w, **kw)
    if isinstance(layer, nn.Linear):
        return lambda x, w: F.linear(x, w)
    return lambda x, w: layer(x)


def ref_zplus(layer: nn.Module, x: Tensor, r: Tensor) -> Tensor:
    """Signed z+: (x+ w+ + x- w-) / z * R; pooling: in proportion to x+."""
    f = _parts(layer)
    xp = x.clamp(min=0).requires_grad_()
    xn = x.clamp(max=0).requires_grad_()
    w = getattr(layer, "weight", None)
    if w is None:
        z = f(xp, None)
        (gp,) = torch.autograd.grad(z, xp, _ratio(r, z.detach()))
        return xp.detach() * gp
    w = w.detach()
    z = f(xp, w.clamp(min=0)) + f(xn, w.clamp(max=0))
    gp, gn = torch.autograd.grad(z, (xp, xn), _ratio(r, z.detach()))
    return xp.detach() * gp + xn.detach() * gn


def ref_zbox(layer: nn.Module, x: Tensor, r: Tensor) -> Tensor:
    """z^B with each image's minimum and maximum as bounds."""
    f = _parts(layer)
    w = layer.weight.detach()
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    terms = ((x, w), (low, w.clamp(min=0)), (high, w.clamp(max=0)))
    with torch.no_grad():
        z = f(x, w) - f(low, w.clamp(min=0)) - f(high, w.clamp(max=0))
    s = _ratio(r, z)
    # J^T s for each term: the gradient of a linear map is its transpose.
    x_g, low_g, high_g = (
        v * torch.autograd.grad(f(leaf, wt), leaf, s)[0]
        for v, wt in terms
        for leaf in (v.clone().requires_grad_(),)
    )
    return x_g - low_g - high_g


def vgg_layers(model: nn.Module) -> list[nn.Module]:
    """torchvision VGG's forward: features, avgpool, flatten, classifier."""
    return [*model.features, model.avgpool, nn.Flatten(), *model.classifier]


def ref_vgg_relevance(model: nn.Module, x: Tensor, targets: list[int], first: str) -> list[Tensor]:
    """Relevance at the input of every layer of :func:`vgg_layers` (the last: R at
    the logits), z^B or z+ at the first conv, z+ at the other convs, linears and
    pools, ReLU and dropout passing it on."""
    layers = vgg_layers(model)
    inputs = [x]
    with torch.no_grad():
        for layer in layers:
            inputs.append(layer(inputs[-1].clone()))
    logits = inputs[-1]
    r = F.one_hot(torch.tensor(targets), logits.shape[1]).to(x.dtype) * logits
    relevances = [r]
    for i in range(len(layers) - 1, -1, -1):
        layer, a = layers[i], inputs[i]
        if isinstance(layer, (nn.ReLU, nn.Dropout)):
            pass
        elif isinstance(layer, nn.Flatten):
            r = r.reshape(a.shape)
        elif i == 0 and first == "zbox":
            r = ref_zbox(layer, a, r)
        else:
            r = ref_zplus(layer, a, r)
        relevances.insert(0, r)
    return relevances


# --------------------------------------------------------------------- helpers


@contextmanager
def rules_on(model: nn.Module, assign: Callable[[nn.Module], None]) -> Iterator[None]:
    """The rules set as ``module.rule``; removed afterwards (Captum also deletes them)."""
    assign(model)
    try:
        yield
    finally:
        for m in model.modules():
            if hasattr(m, "rule"):
                del m.rule


def fg_cam_rules(first: str) -> Callable[[nn.Module], None]:
    def assign(model: nn.Module) -> None:
        weighted = [
            m
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d))
        ]
        for i, m in enumerate(weighted):
            m.rule = ZBoxRule() if i == 0 and first == "zbox" else ZPlusRule()

    return assign


def captum_lrp(model: nn.Module, x: Tensor, target: object) -> Tensor:
    with warnings.catch_warnings():
        # Captum warns that it switched on the inputs' gradients.
        warnings.simplefilter("ignore", UserWarning)
        return LRP(model).attribute(x.clone(), target=target).detach()


def _images(dtype: torch.dtype) -> Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)  # normalised: negative values
    x[:, :, 8:16, 8:16] = 0  # z^B gives relevance to zero pixels
    return x


@pytest.fixture(scope="module")
def vgg11() -> nn.Module:
    """torchvision's VGG11 with a narrower classifier (64 units, not 4096), in
    float64: the same layer types and forward, a fraction of the time."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )
    return model.double().eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return _images(torch.float64)


TARGETS = [3, 7]


@pytest.fixture(scope="module")
def references(vgg11: nn.Module, images: Tensor) -> dict[str, list[Tensor]]:
    """The relevance at every layer's input, computed once per first-layer rule."""
    return {first: ref_vgg_relevance(vgg11, images, TARGETS, first) for first in ("zbox", "zplus")}


# ------------------------------------------------------- our rules in Captum's LRP


@pytest.mark.slow
def test_captum_lrp_and_ours_agree_on_torchvision_vgg11() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10).eval()
    x = _images(torch.float32)[:1]
    with rules_on(model, fg_cam_rules("zbox")):
        ours = PropagationLRP(model).attribute(x, target=3)
    with rules_on(model, fg_cam_rules("zbox")):
        theirs = captum_lrp(model, x, 3)
    # float32: Captum's path passes R / x to autograd and multiplies by x again.
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-6 * ours.abs().max().item())
    assert torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1] > 0.999999


@pytest.mark.slow
@pytest.mark.parametrize("first", ["zbox", "zplus"])
def test_captum_lrp_applies_our_rules_as_our_engine_does(
    vgg11: nn.Module, images: Tensor, references: dict[str, list[Tensor]], first: str
) -> None:
    expected = references[first][0]
    with rules_on(vgg11, fg_cam_rules(first)):
        ours = PropagationLRP(vgg11).attribute(images, target=TARGETS)
    pointers = {n: p.data_ptr() for n, p in vgg11.named_parameters()}
    values = {n: p.detach().clone() for n, p in vgg11.named_parameters()}
    with rules_on(vgg11, fg_cam_rules(first)):
        theirs = captum_lrp(vgg11, images, TARGETS)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(theirs, expected, rtol=1e-9, atol=1e-15)
    if first == "zbox":
        # z^B gives relevance to zero pixels; Captum's x * grad alone would lose it.
        assert expected[:, :, 8:16, 8:16].abs().sum() > 1e-3 * expected.abs().sum()
    else:
        # The first conv sees negative inputs: the unsigned z+ that Captum's own
        # rewriting of the weights gives (ZPlusRule's base class) is another map.
        conv, leaf = vgg11.features[0], images.clone().requires_grad_()
        z = F.conv2d(leaf, conv.weight.detach().clamp(min=0), padding=1)
        (g,) = torch.autograd.grad(z, leaf, _ratio(references[first][1], z.detach()))
        assert not torch.allclose(images * g, expected, rtol=0.1, atol=0)
    # No weight was rewritten, not even for the time of the call.
    assert pointers == {n: p.data_ptr() for n, p in vgg11.named_parameters()}
    for name, p in vgg11.named_parameters():
        assert torch.equal(p, values[name]), name


def test_captum_rewrites_weights_where_ours_does_not(vgg11: nn.Module, images: Tensor) -> None:
    # What the pointer check above tells apart: Captum's own z+ replaces the data.
    conv = vgg11.features[3]
    before = conv.weight.data_ptr()
    with rules_on(vgg11, fg_cam_rules("zplus")):
        conv.rule = Alpha1_Beta0_Rule(set_bias_to_zero=True)
        captum_lrp(vgg11, images, 0)
    assert conv.weight.data_ptr() != before


@pytest.mark.parametrize("to_input", [False, True])
def test_captum_layer_lrp_reads_our_rules_relevance(
    vgg11: nn.Module, images: Tensor, references: dict[str, list[Tensor]], to_input: bool
) -> None:
    index = 3  # the second conv
    layer = vgg11.features[index]
    expected = references["zbox"][index if to_input else index + 1]
    with rules_on(vgg11, fg_cam_rules("zbox")), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        theirs = LayerLRP(vgg11, layer).attribute(
            images.clone(), target=TARGETS, attribute_to_layer_input=to_input
        )
    with rules_on(vgg11, fg_cam_rules("zbox")):
        mask = F.one_hot(torch.tensor(TARGETS), 10).double()
        (ours,) = propagate(
            vgg11,
            RuleAssignment(),
            (images,),
            None,
            lambda logits: mask * logits,
            end=layer,
            end_input=to_input,
        )
    torch.testing.assert_close(theirs.detach(), expected, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-15)


class TwoBranches(nn.Module):
    """The input feeds two convolutions: their rules' hooks share one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(torch.cat([self.a(x), self.b(x)], 1)), 1))


def test_zero_input_relevance_next_to_a_captum_rule() -> None:
    torch.manual_seed(2)
    model = TwoBranches().double().eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    x[..., :2, :2] = 0

    def assign(zbox: nn.Module, epsilon: nn.Module) -> Callable[[nn.Module], None]:
        def rules(m: nn.Module) -> None:
            zbox.rule, epsilon.rule = ZBoxRule(), EpsilonRule()
            m.pool.rule, m.fc.rule = ZPlusRule(), ZPlusRule()

        return rules

    # z^B's conv called first: its hook carries the zero pixels' relevance too.
    with rules_on(model, assign(model.a, model.b)):
        ours = PropagationLRP(model).attribute(x, target=1)
    with rules_on(model, assign(model.a, model.b)):
        theirs = captum_lrp(model, x, 1)
    with torch.no_grad():
        a, b = model.a(x), model.b(x)
        pooled = torch.flatten(model.pool(torch.cat([a, b], 1)), 1)
        logit = model.fc(pooled)[:, 1:2]
    r = ref_zplus(model.fc, pooled, F.one_hot(torch.tensor([1]), 3).double() * logit)
    r = ref_zplus(model.pool, torch.cat([a, b], 1), r.reshape(1, 8, 1, 1))
    ra, rb = r[:, :4], r[:, 4:]
    eps_z = b + torch.where(b >= 0, 1e-9, -1e-9)
    xb = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model.b(xb), xb, rb / eps_z)
    expected = ref_zbox(model.a, x, ra) + x * g
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(theirs, expected, rtol=1e-9, atol=1e-15)
    # Captum's rule called first owns the tensor's hook: an error, not a silent loss.
    with rules_on(model, assign(model.b, model.a)):
        with pytest.raises(RuntimeError, match="entries of its input 0 that are 0"):
            captum_lrp(model, x, 1)


def test_rules_do_not_rewrite_weights_for_anyone(vgg11: nn.Module) -> None:
    for rule in (ZPlusRule(), ZBoxRule()):
        with pytest.raises(NotImplementedError, match="cannot be applied by rewriting"):
            rule._manipulate_weights(vgg11.features[0], None, None)


# -------------------------------------------------------------- residual additions


class Residual(nn.Module):
    """``relu(conv2(relu(conv1(a))) + a)`` with ``a = relu(conv0(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.relu0, self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu0(self.conv0(x))
        out = self.conv2(self.relu1(self.conv1(a))) + a
        return self.fc(torch.flatten(self.pool(self.relu2(out)), 1))


def test_residual_addition_split_by_us_copied_and_scaled_by_captum() -> None:
    torch.manual_seed(3)
    model = Residual().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)

    def assign(m: nn.Module) -> None:
        for layer in (m.conv0, m.conv1, m.conv2, m.pool, m.fc):
            layer.rule = ZPlusRule()

    with rules_on(model, assign):
        ours = PropagationLRP(model).attribute(x, target=1)
    with rules_on(model, assign):
        theirs = captum_lrp(model, x, 1)
    with torch.no_grad():
        a = model.relu0(model.conv0(x))
        h = model.relu1(model.conv1(a))
        c = model.conv2(h)
        out = c + a
        pooled = torch.flatten(model.pool(model.relu2(out)), 1)
        logit = model.fc(pooled)[0, 1]
    r = ref_zplus(model.fc, pooled, F.one_hot(torch.tensor([1]), 4).double() * logit)
    r_out = ref_zplus(model.pool, model.relu2(out), r.reshape(1, 6, 1, 1))

    def to_input(r_a: Tensor) -> Tensor:
        return ref_zplus(model.conv0, x, r_a)

    def block(r_c: Tensor) -> Tensor:
        return ref_zplus(model.conv1, a, ref_zplus(model.conv2, h, r_c))

    # Ours: in proportion to the summands, conserving the logit.
    split = to_input(block(r_out * _ratio(c, out)) + r_out * _ratio(a, out))
    torch.testing.assert_close(ours, split, rtol=1e-9, atol=1e-15)
    assert ours.sum().item() == pytest.approx(logit.item(), rel=1e-9)
    # Captum: R_out copied to both summands, and the skip's copy multiplied by `a`,
    # since conv1's input hook multiplies the whole gradient at `a` by `a`.
    copied = to_input(block(r_out) + a * r_out)
    torch.testing.assert_close(theirs, copied, rtol=1e-9, atol=1e-15)
    assert abs(theirs.sum().item() - logit.item()) > 0.1 * abs(logit.item())


# ---------------------------------------------------------------- transformers


def _vit() -> tuple[nn.Module, nn.Module, nn.Module, object]:
    model = small_vit()
    return model, model.encoder.layers[-1].ln_1, model.conv_proj, TokensToGrid()


def _swin() -> tuple[nn.Module, nn.Module, nn.Module, object]:
    model = small_swin()
    return model, model.norm, model.features[0][0], ChannelsLastToFirst()


TRANSFORMERS = {"vit": _vit, "swin": _swin}


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_transformers_propagate_and_leave_the_model_as_it_was(name: str) -> None:
    """LayerNorm and attention have rules now (std held constant, attention weights held
    constant): every propagating class runs through torchvision's ViT and Swin."""
    model, base_layer, shallow, reshape = TRANSFORMERS[name]()
    x = torch.randn(1, 3, 32, 32)
    base = LayerGradCam(model, base_layer, reshape_transform=reshape)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    maps = {
        "PropagationLRP": PropagationLRP(model).attribute(x, target=1),
        "FGCam": FGCam(base).attribute(x, target=1),
        "LayerFGCam": LayerFGCam(base, shallow).attribute(x, target=1),
    }
    for method, attr in maps.items():
        assert torch.isfinite(attr).all() and attr.abs().sum() > 0, method
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class _OwnMixer(nn.Module):
    """Attention written in a model whose class the library does not know as attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.mixer = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.mixer(self.embed(x).flatten(2).transpose(1, 2))
        weights = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1)
        return self.head((weights @ tokens).mean(1))


def test_a_softmax_outside_known_attention_is_an_error_naming_the_module() -> None:
    model = _OwnMixer().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match=r"_OwnMixer.*softmax.*AttentionRule"):
        PropagationLRP(model).attribute(x, target=1)
    # Told which module computes the attention, it propagates.
    from captum_fdcam.propagation import AttentionRule

    relevance = PropagationLRP(model, rules={_OwnMixer: AttentionRule()}).attribute(x, target=1)
    assert torch.isfinite(relevance).all()
