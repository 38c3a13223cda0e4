"""FG-CAM and LRP through squeeze-and-excitation and other gate blocks (timm, transformers).

A gate block returns its input times a gate computed from that input, ``x * g(x)``.
Held constant, the gate makes the block a diagonal linear map, through which relevance
passes unchanged. The references here compute the rules of the layers around a block
from their formulas (``F.conv2d`` and its input gradient) and pass the relevance
through the block untouched; the comparisons with torchvision's ``SqueezeExcitation``
run a copy of the network in which every block is swapped for torchvision's, with the
weights copied.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr._utils.lrp_rules import IdentityRule
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from captum_fdcam import FGCam, LayerGradCam, PropagationLRP, ZBoxRule
from captum_fdcam.errors import UnsupportedModuleError
from captum_fdcam.propagation import RuleAssignment, default_rules, propagate
from captum_fdcam.propagation.assignment import (
    GATED_BLOCKS,
    OPTIONAL_ACTIVATIONS,
    OPTIONAL_NORMS_AND_DROPOUT,
    OPTIONAL_POOLS,
    loaded_classes,
)
from tests.conftest import assert_same_snapshot, model_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------- reference rules


def _safe_ratio(r: Tensor, z: Tensor) -> Tensor:
    out = torch.zeros_like(r)
    nonzero = z != 0
    out[nonzero] = r[nonzero] / z[nonzero]
    return out


def ref_conv_zplus(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    """Signed z+ (FG-CAM's hidden-layer rule), bias ignored."""
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    kw = dict(stride=conv.stride, padding=conv.padding, groups=conv.groups)
    s = _safe_ratio(r, F.conv2d(xp, wp, **kw) + F.conv2d(xn, wn, **kw))
    return xp * conv2d_input(x.shape, wp, s, **kw) + xn * conv2d_input(x.shape, wn, s, **kw)


def ref_conv_zbox(conv: nn.Conv2d, x: Tensor, r: Tensor) -> Tensor:
    """z^B with each image's minimum and maximum as bounds, bias ignored."""
    w = conv.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    kw = dict(stride=conv.stride, padding=conv.padding, groups=conv.groups)
    z = F.conv2d(x, w, **kw) - F.conv2d(low, wp, **kw) - F.conv2d(high, wn, **kw)
    s = _safe_ratio(r, z)
    return (
        x * conv2d_input(x.shape, w, s, **kw)
        - low * conv2d_input(x.shape, wp, s, **kw)
        - high * conv2d_input(x.shape, wn, s, **kw)
    )


# ---------------------------------------------------------------------- helpers


def _randomize(model: nn.Module, seed: int = 0, bias: bool = True) -> nn.Module:
    """Random weights large enough that every gate varies; float64, eval mode.

    BatchNorm scales are drawn positive: timm zero-initialises the last BatchNorm of
    each residual branch, which would make the branch, and its gate, carry nothing.
    """
    shift = 0.2 if bias else 0.0
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            nn.init.kaiming_normal_(p)
        elif name.endswith("bias"):
            nn.init.uniform_(p, -shift, shift)
        else:
            nn.init.uniform_(p, 0.5, 1.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.uniform_(-shift, shift)
            m.running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def _output_of(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


def _relevance_ratio(
    model: nn.Module, start: nn.Module, x: Tensor, end: nn.Module | None = None
) -> float:
    """Input relevance (or ``end``'s) over the start relevance at ``start``: the
    activation there times a random factor in [1, 2), positive where it is."""
    torch.manual_seed(9)
    a = _output_of(model, start, x)
    relevance = a * (1 + torch.rand_like(a))
    assignment = RuleAssignment(None, ZBoxRule())
    (r,) = propagate(model, assignment, (x,), None, lambda _: relevance, start, end)
    return (r.sum() / relevance.sum()).item()


def _swap_for_torchvision(
    model: nn.Module, kind: type[nn.Module], convert: Callable[[nn.Module], nn.Module]
) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``kind`` block replaced by ``convert(block)``."""
    twin = copy.deepcopy(model)
    swapped = 0
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, convert(child))
                swapped += 1
    return twin, swapped


def _torchvision_se(
    fc1: nn.Conv2d, activation: nn.Module, fc2: nn.Conv2d
) -> torchvision.ops.SqueezeExcitation:
    se = torchvision.ops.SqueezeExcitation(
        fc1.in_channels, fc1.out_channels, activation=type(activation)
    )
    se.fc1.load_state_dict(fc1.state_dict())
    se.fc2.load_state_dict(fc2.state_dict())
    return se.to(fc1.weight.dtype).eval()


# --------------------------------------------------- timm gate blocks, one at a time


def _timm_gate(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    from timm.layers import cbam, coord_attn, eca, gather_excite, squeeze_excite
    from timm.models import senet
    from timm.models._efficientnet_blocks import SqueezeExcite

    # timm's GatherExcite cannot build its MLP (a bug in its constructor): without it.
    makers: dict[str, Callable[[], nn.Module]] = {
        "SqueezeExcite": lambda: SqueezeExcite(8, act_layer=nn.SiLU),
        "SEModule": lambda: squeeze_excite.SEModule(8, rd_ratio=0.5),
        "EffectiveSEModule": lambda: squeeze_excite.EffectiveSEModule(8),
        "SqueezeExciteCl": lambda: squeeze_excite.SqueezeExciteCl(8, rd_ratio=0.5),
        "EcaModule": lambda: eca.EcaModule(8),
        "CecaModule": lambda: eca.CecaModule(8),
        "GatherExcite": lambda: gather_excite.GatherExcite(8, extent=2, use_mlp=False),
        "ChannelAttn": lambda: cbam.ChannelAttn(8),
        "LightChannelAttn": lambda: cbam.LightChannelAttn(8),
        "SpatialAttn": lambda: cbam.SpatialAttn(),
        "LightSpatialAttn": lambda: cbam.LightSpatialAttn(),
        "CoordAttn": lambda: coord_attn.CoordAttn(8),
        "SimpleCoordAttn": lambda: coord_attn.SimpleCoordAttn(8),
        "EfficientLocalAttn": lambda: coord_attn.EfficientLocalAttn(8),
        "StripAttn": lambda: coord_attn.StripAttn(8),
        "senet.SEModule": lambda: senet.SEModule(8, reduction=2),
    }
    assert timm is not None
    block = makers[name]()
    if name == "SqueezeExciteCl":  # channels last
        permute = torchvision.ops.misc.Permute
        return nn.Sequential(permute([0, 2, 3, 1]), block, permute([0, 3, 1, 2]))
    return block


TIMM_GATES = [
    "SqueezeExcite",
    "SEModule",
    "EffectiveSEModule",
    "SqueezeExciteCl",
    "EcaModule",
    "CecaModule",
    "GatherExcite",
    "ChannelAttn",
    "LightChannelAttn",
    "SpatialAttn",
    "LightSpatialAttn",
    "CoordAttn",
    "SimpleCoordAttn",
    "EfficientLocalAttn",
    "StripAttn",
    "senet.SEModule",
]


class GatedNet(nn.Module):
    """conv -> ReLU -> gate block -> conv -> ReLU -> pooled linear head."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block = block
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv2(self.block(self.act(self.conv1(x)))))


def _reference(model: GatedNet, x: Tensor, r_out: Tensor) -> Tensor:
    """Input relevance from ``r_out`` at conv2's output, the gate held constant:
    conv2's z+ reads the block's output; the block and the ReLU pass it unchanged."""
    with torch.no_grad():
        gated = model.block(model.act(model.conv1(x)))
    return ref_conv_zbox(model.conv1, x, ref_conv_zplus(model.conv2, gated, r_out))


@pytest.mark.parametrize("name", TIMM_GATES)
def test_a_timm_gate_block_passes_relevance_unchanged(name: str) -> None:
    model = _randomize(GatedNet(_timm_gate(name)))
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a = model.act(model.conv1(x))
        # The gate varies: relevance through the block would differ if it followed it.
        ratio = _safe_ratio(model.block(a), a)[a > 0]
        assert ratio.max() - ratio.min() > 1e-3
    r_out = torch.rand(2, 6, 8, 8, dtype=torch.float64) + 0.5
    before = model_snapshot(model)
    assignment = RuleAssignment(None, ZBoxRule())
    (got,) = propagate(model, assignment, (x,), None, lambda _: r_out, model.conv2)
    assert_same_snapshot(before, model_snapshot(model))
    torch.testing.assert_close(got, _reference(model, x, r_out), rtol=1e-9, atol=1e-12)
    # z+ and z^B ignore biases: the start relevance reaches the input whole.
    assert got.sum().item() == pytest.approx(r_out.sum().item(), rel=1e-6)


# ------------------------------------------------ gate blocks this library does not know


class ToyGate(nn.Module):
    """Squeeze-and-excitation written by a user: ``x * sigmoid(W2 relu(W1 mean(x)))``."""

    def __init__(self, channels: int = 8, nested: bool = False) -> None:
        super().__init__()
        layers = [nn.Conv2d(channels, 8, 1), nn.ReLU(), nn.Conv2d(8, channels, 1), nn.Sigmoid()]
        # Hugging Face's RegNet keeps its gate's layers in a Sequential.
        self.excite = nn.Sequential(*layers) if nested else None
        self.fc1, self.relu, self.fc2, self.gate = (None,) * 4 if nested else layers

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean((2, 3), keepdim=True)
        if self.excite is not None:
            return x * self.excite(squeezed)
        return x * self.gate(self.fc2(self.relu(self.fc1(squeezed))))


@pytest.mark.parametrize("nested", [False, True])
def test_an_unknown_gate_block_is_named_with_the_rule_to_give_it(nested: bool) -> None:
    model = _randomize(GatedNet(ToyGate(nested=nested)), bias=False)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gate = "block.excite.3" if nested else "block.gate"
    with pytest.raises(UnsupportedModuleError) as caught:
        PropagationLRP(model).attribute(x, target=1)
    message = str(caught.value)
    assert message.startswith(
        f"No LRP rule for '{gate}' (Sigmoid), a gate inside 'block' (ToyGate)."
    )
    assert "rules={ToyGate: IdentityRule}" in message
    assert "Do not give the Sigmoid itself IdentityRule" in message
    assert "\n" not in message

    # The suggested rule holds the gate constant, as the reference does.
    r_out = torch.rand(2, 6, 8, 8, dtype=torch.float64) + 0.5
    assignment = RuleAssignment({ToyGate: IdentityRule}, ZBoxRule())
    (got,) = propagate(model, assignment, (x,), None, lambda _: r_out, model.conv2)
    expected = _reference(model, x, r_out)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert got.sum().item() == pytest.approx(r_out.sum().item(), rel=1e-6)

    # What the message warns against: IdentityRule on the sigmoid would send all the
    # relevance into both factors of x * gate (up to twice the relevance). That product
    # of two activations outside a module with a rule is refused, naming the block.
    assignment = RuleAssignment({nn.Sigmoid: IdentityRule}, ZBoxRule())
    with pytest.raises(UnsupportedModuleError) as doubled:
        propagate(model, assignment, (x,), None, lambda _: r_out, model.conv2)
    message = str(doubled.value)
    assert message.startswith("'block' (ToyGate) multiplies two activations element-wise")
    assert "ProductRule()" in message and "IdentityRule()" in message


def test_other_leaves_without_rule_inside_a_block_mention_the_block() -> None:
    class Odd(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * 2

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.odd = Odd()

        def forward(self, x: Tensor) -> Tensor:
            return self.odd(self.conv(x))

    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(48, 2))
    with pytest.raises(UnsupportedModuleError) as caught:
        PropagationLRP(model).attribute(torch.randn(1, 3, 4, 4), target=0)
    message = str(caught.value)
    assert message.startswith("No LRP rule for '0.odd' (Odd), inside '0' (Block).")
    assert "module.rule = IdentityRule()" in message
    assert "rules={Block: IdentityRule}" in message
    # At the top level there is no block to name.
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Odd(), nn.Flatten(), nn.Linear(48, 2))
    with pytest.raises(UnsupportedModuleError) as caught:
        PropagationLRP(model).attribute(torch.randn(1, 3, 4, 4), target=0)
    assert "inside" not in str(caught.value) and "rules={type: rule}" in str(caught.value)


# ------------------------------------------------------------- timm EfficientNet


def _tiny_efficientnet(act: type[nn.Module], bias: bool = True) -> nn.Module:
    """Three stages of EfficientNet blocks with SE, TF "same" padding (``Conv2dSame``),
    stochastic depth (``DropPath``) and timm's fast global pooling."""
    pytest.importorskip("timm")
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [
        ["ds_r1_k3_s1_e1_c16_se0.25"],
        ["ir_r2_k3_s2_e4_c12_se0.25"],
        ["ir_r1_k5_s2_e4_c16_se0.25"],
    ]
    model = EfficientNet(
        decode_arch_def(arch),
        num_classes=5,
        stem_size=32,
        num_features=24,
        act_layer=act,
        pad_type="same",
        drop_path_rate=0.2,
        global_pool="fast",
    )
    return _randomize(model, bias=bias)


def test_timm_efficientnet_equals_its_twin_with_torchvision_squeeze_excitation() -> None:
    from timm.layers import DropPath
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    from timm.layers.conv2d_same import Conv2dSame
    from timm.models._efficientnet_blocks import SqueezeExcite

    model = _tiny_efficientnet(nn.SiLU)
    kinds = {type(m) for m in model.modules()}
    assert {DropPath, FastAdaptiveAvgPool, Conv2dSame} <= kinds  # what this model covers
    twin, swapped = _swap_for_torchvision(
        model,
        SqueezeExcite,
        lambda se: _torchvision_se(se.conv_reduce, se.act1, se.conv_expand),
    )
    assert swapped == 4
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-12, atol=1e-12)
    before = model_snapshot(model)
    for attribution in (
        lambda m: FGCam(LayerGradCam(m, m.bn2)),
        lambda m: PropagationLRP(m),
    ):
        got = attribution(model).attribute(x, target=[1, 3])
        expected = attribution(twin).attribute(x, target=[1, 3])
        assert torch.isfinite(got).all() and got.std() > 0
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-14)
    assert_same_snapshot(before, model_snapshot(model))


def test_timm_efficientnet_conserves_relevance_without_bias() -> None:
    # With ReLU every z+ denominator that is 0 belongs to a neuron the ReLU zeroes
    # anyway; SiLU's negative outputs would carry relevance that z+ drops there.
    model = _tiny_efficientnet(nn.ReLU, bias=False)
    torch.manual_seed(4)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for end in (model.blocks[2], model.blocks[1], model.blocks[0], model.bn1, None):
        assert _relevance_ratio(model, model.bn2, x, end) == pytest.approx(1.0, rel=1e-6), end
    # LRP from the logit: the classifier, the fast pooling and the rest conserve it.
    with torch.no_grad():
        logit = model(x)[0, 2]
    got = PropagationLRP(model).attribute(x, target=2)
    assert got.sum().item() == pytest.approx(logit.item(), rel=1e-6)


def _timm(name: str) -> nn.Module:
    """A timm model with its own random weights, biases and BatchNorm shifts zero."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    for m in model.modules():
        if isinstance(getattr(m, "bias", None), Tensor):
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)  # see _randomize
            m.running_mean.zero_()
    return model.double().eval()


@pytest.mark.parametrize(
    ("name", "base", "conserved"),
    [
        ("efficientnet_b0", "bn2", False),
        ("mobilenetv3_large_100", "blocks", False),
        ("seresnet18", "layer4", True),
        ("regnety_002", "s4", True),
        ("ecaresnet26t", "layer4", True),
        ("mixnet_s", "bn2", False),
    ],
)
def test_timm_cnns_with_gates_end_to_end(name: str, base: str, conserved: bool) -> None:
    model = _timm(name)
    torch.manual_seed(5)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    before = model_snapshot(model)
    layer = model.get_submodule(base)
    for got in (
        FGCam(LayerGradCam(model, layer)).attribute(x, target=1),
        PropagationLRP(model).attribute(x, target=1),
    ):
        assert torch.isfinite(got).all() and got.std() > 0
    assert_same_snapshot(before, model_snapshot(model))
    ratio = _relevance_ratio(model, layer, x)
    if conserved:  # ReLU networks
        assert ratio == pytest.approx(1.0, rel=1e-6)
    else:
        # SiLU / hard-swish: z+ drops what reaches a neuron whose denominator is 0,
        # mostly in depthwise convolutions on small maps (5-15% here, 4% at 224 px).
        assert 0.5 < ratio <= 1 + 1e-9


def test_squeeze_excitation_blocks_of_efficientnet_b0_conserve() -> None:
    model = _timm("efficientnet_b0")
    torch.manual_seed(6)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    a = _output_of(model, model.bn2, x)
    relevance = a * (1 + torch.rand_like(a))
    assignment = RuleAssignment(None, ZBoxRule())
    for block in (model.blocks[1][1], model.blocks[4][2]):
        sums = []
        for at_input in (False, True):
            (r,) = propagate(
                model, assignment, (x,), None, lambda _: relevance, model.bn2, block.se, at_input
            )
            sums.append(r.sum().item())
        assert sums[1] == pytest.approx(sums[0], rel=1e-12)


# --------------------------------------------------------------- optional packages


def test_optional_classes_are_found_without_importing_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.ModuleType("captum_fdcam_test_fake")

    class FakeGate(nn.Module):
        pass

    fake.FakeGate = FakeGate  # type: ignore[attr-defined]
    table = (("captum_fdcam_test_fake", ("FakeGate", "Missing")), ("not_a_package.x", ("Y",)))
    assert loaded_classes(table) == ()
    monkeypatch.setitem(sys.modules, "captum_fdcam_test_fake", fake)
    assert loaded_classes(table) == (FakeGate,)
    assert "not_a_package.x" not in sys.modules and "not_a_package" not in sys.modules
    # Without timm (or with its module unimportable) the defaults are the rest.
    pytest.importorskip("timm")
    from timm.models._efficientnet_blocks import SqueezeExcite

    assert default_rules()[SqueezeExcite] is IdentityRule
    monkeypatch.setitem(sys.modules, "timm.models._efficientnet_blocks", None)
    assert SqueezeExcite not in default_rules()


def test_the_timm_classes_named_exist() -> None:
    pytest.importorskip("timm")  # which imports every module named here
    for table in (GATED_BLOCKS, OPTIONAL_ACTIVATIONS, OPTIONAL_NORMS_AND_DROPOUT, OPTIONAL_POOLS):
        for module, names in table:
            if module.startswith("timm."):
                found = {kind.__name__ for kind in loaded_classes(((module, names),))}
                assert found == set(names), module


# ---------------------------------------------------------------- Hugging Face


class Logits(nn.Module):
    """A Hugging Face classifier as a module returning its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def _hf_efficientnet() -> tuple[nn.Module, type[nn.Module], Callable, nn.Module]:
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    from transformers.models.efficientnet.modeling_efficientnet import (
        EfficientNetSqueezeExciteLayer,
    )

    config = EfficientNetConfig(
        width_coefficient=0.25,
        depth_coefficient=0.5,
        image_size=32,
        hidden_dim=320,
        kernel_sizes=[3, 3, 5],
        in_channels=[32, 16, 24],
        out_channels=[16, 24, 40],
        depthwise_padding=[],
        strides=[1, 2, 2],
        num_block_repeats=[1, 2, 1],
        expand_ratios=[1, 6, 6],
        num_labels=5,
    )
    hf = EfficientNetForImageClassification(config)
    model = _randomize(Logits(hf))
    return (
        model,
        EfficientNetSqueezeExciteLayer,
        lambda se: _torchvision_se(se.reduce, se.act_reduce, se.expand),
        hf.efficientnet.encoder.top_activation,
    )


def _hf_regnet() -> tuple[nn.Module, type[nn.Module], Callable, nn.Module]:
    from transformers import RegNetConfig, RegNetForImageClassification
    from transformers.models.regnet.modeling_regnet import RegNetSELayer

    config = RegNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 2],
        groups_width=4,
        layer_type="y",
        hidden_act="silu",  # transformers' own SiLU module
        num_labels=5,
    )
    hf = RegNetForImageClassification(config)
    model = _randomize(Logits(hf))
    return (
        model,
        RegNetSELayer,
        lambda se: _torchvision_se(se.attention[0], se.attention[1], se.attention[2]),
        hf.regnet.encoder.stages[-1],
    )


@pytest.mark.slow  # importing transformers takes seconds
@pytest.mark.parametrize("make", [_hf_efficientnet, _hf_regnet], ids=["efficientnet", "regnet"])
def test_hugging_face_cnns_equal_their_twins_with_torchvision_squeeze_excitation(
    make: Callable[[], tuple[nn.Module, type[nn.Module], Callable, nn.Module]],
) -> None:
    pytest.importorskip("transformers")
    model, kind, convert, base = make()
    twin, swapped = _swap_for_torchvision(model, kind, convert)
    assert swapped >= 3
    twin_base = twin.get_submodule(next(n for n, m in model.named_modules() if m is base))
    torch.manual_seed(7)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-12, atol=1e-12)
    before = model_snapshot(model)
    for ours, theirs in (
        (FGCam(LayerGradCam(model, base)), FGCam(LayerGradCam(twin, twin_base))),
        (PropagationLRP(model), PropagationLRP(twin)),
    ):
        got = ours.attribute(x, target=[0, 4])
        assert torch.isfinite(got).all() and got.std() > 0
        torch.testing.assert_close(got, theirs.attribute(x, target=[0, 4]), rtol=1e-9, atol=1e-14)
    assert_same_snapshot(before, model_snapshot(model))
    # The Hugging Face model itself, unwrapped: its output's logits are explained.
    unwrapped = FGCam(LayerGradCam(model.model, base)).attribute(x, target=[0, 4])
    expected = FGCam(LayerGradCam(model, base)).attribute(x, target=[0, 4])
    torch.testing.assert_close(unwrapped, expected, rtol=0, atol=0)

    # Each gate block conserves: as much relevance reaches its input as its output.
    # (The whole network need not, at this width: see test_timm_cnns_with_gates_end_to_end.)
    a = _output_of(model, base, x)
    relevance = a * (1 + torch.rand_like(a))
    assignment = RuleAssignment(None, ZBoxRule())
    for block in [m for m in model.modules() if isinstance(m, kind)][-2:]:
        sums = [
            propagate(model, assignment, (x,), None, lambda _: relevance, base, block, at_input)[0]
            .sum()
            .item()
            for at_input in (False, True)
        ]
        assert sums[1] == pytest.approx(sums[0], rel=1e-12)


@pytest.mark.slow  # importing transformers' model modules takes seconds
def test_the_hugging_face_classes_named_exist() -> None:
    pytest.importorskip("transformers")
    import importlib

    for table in (GATED_BLOCKS, OPTIONAL_ACTIVATIONS):
        for module, names in table:
            if module.startswith("transformers."):
                importlib.import_module(module)
                found = {kind.__name__ for kind in loaded_classes(((module, names),))}
                assert found == set(names), module
