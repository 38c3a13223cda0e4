"""Relevance through attention: LRP and FG-CAM on vision transformers, Swin and ConvNeXt.

- The rules against an independent computation: a torchvision ViT whose LayerNorms,
  attention and GELUs are swapped, in the test, for modules written here (the standard
  deviation detached; the attention weights detached, CP-LRP, or AttnLRP's halved
  products; GELU's gradient replaced by f(x) / x, the identity rule), whose plain
  gradient x input is the relevance the library's rules must give (with the linear
  layers' rule set to gradient x input too).
- Conservation on every architecture of the issue (float64, random weights): with the
  biases, position embeddings and class tokens zeroed, the input relevance is the logit
  (LRP) or the CAM's mass at its layer (FG-CAM); with them, the reported shares and the
  input's sum to it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import EpsilonRule
from conftest import small_vit
from torch import Tensor, nn

from captum_fdcam import CLRP, SGLRP, FGCam, LayerFGCam, LayerGradCam, LayerScoreCam, PropagationLRP
from captum_fdcam.architectures import default_layer

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

#: Parameters that keep relevance when they are not zero.
KEEPERS = (
    "class_token",
    "cls_token",
    "dist_token",
    "reg_token",
    "pos_embedding",
    "pos_embed",
    "position_embeddings",
    "absolute_pos_embed",
)


def zeroed(model: nn.Module) -> nn.Module:
    """``model`` with every bias, class token and position embedding at 0 (in place)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if "bias" in last or last in KEEPERS:
                parameter.zero_()
    return model


# ------------------------------------------------------------ the naive reference


class _NaiveNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + self.norm.eps).detach()
        return (x - mean) / std * self.norm.weight + self.norm.bias


class _NaiveAttention(nn.Module):
    """nn.MultiheadAttention (batch first, self-attention) written out."""

    def __init__(self, attention: nn.MultiheadAttention, mode: str) -> None:
        super().__init__()
        self.attention, self.mode = attention, mode

    def forward(self, q: Tensor, k: Tensor, v: Tensor, need_weights: bool = False) -> tuple:
        a = self.attention
        n, length, embed = q.shape
        heads, head = a.num_heads, embed // a.num_heads
        wq, wk, wv = a.in_proj_weight.chunk(3)
        bq, bk, bv = a.in_proj_bias.chunk(3)

        def split(t: Tensor) -> Tensor:
            return t.reshape(n, length, heads, head).transpose(1, 2)

        q, k, v = split(F.linear(q, wq, bq)), split(F.linear(k, wk, bk)), split(F.linear(v, wv, bv))
        if self.mode == "attnlrp":
            q, k = _halve(q), _halve(k)
        weights = torch.softmax(q @ k.transpose(-1, -2) / head**0.5, dim=-1)
        if self.mode == "cp":
            out = weights.detach() @ v
        else:
            out = _halve(weights) @ _halve(v)
        out = out.transpose(1, 2).reshape(n, length, embed)
        return F.linear(out, a.out_proj.weight, a.out_proj.bias), None


class _Halve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad / 2


def _halve(x: Tensor) -> Tensor:
    return _Halve.apply(x)


class _IdentityGelu(nn.Module):
    """GELU whose gradient is f(x) / x: gradient x input passes relevance unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(x)
        factor = torch.where(x != 0, y / x, torch.zeros_like(x)).detach()
        return x * factor


def naive_copy(model: nn.Module, mode: str) -> nn.Module:
    """A copy of a torchvision ViT with the modules above in place of its own."""
    import copy

    naive = copy.deepcopy(model)
    for block in naive.encoder.layers:
        block.ln_1, block.ln_2 = _NaiveNorm(block.ln_1), _NaiveNorm(block.ln_2)
        block.self_attention = _NaiveAttention(block.self_attention, mode)
        block.mlp[1] = _IdentityGelu()
    naive.encoder.ln = _NaiveNorm(naive.encoder.ln)
    return naive


GRADIENT_X_INPUT = {nn.Linear: lambda: EpsilonRule(epsilon=0), nn.Conv2d: lambda: EpsilonRule(0)}


@pytest.mark.parametrize("mode", ["cp", "attnlrp"])
def test_vit_rules_are_gradient_x_input_of_the_changed_graph(mode: str) -> None:
    model = small_vit().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = [1, 3]
    ours = PropagationLRP(
        model, rules=GRADIENT_X_INPUT, input_rule=EpsilonRule(0), attention=mode
    ).attribute(x, target=targets)
    naive = naive_copy(model, mode)
    leaf = x.clone().requires_grad_()
    logits = naive(leaf)
    (grad,) = torch.autograd.grad(logits[[0, 1], targets].sum(), leaf)
    torch.testing.assert_close(ours, leaf.detach() * grad, rtol=1e-6, atol=1e-10)
    # and the modules were really changed: plain gradient x input differs
    plain = x.clone().requires_grad_()
    (plain_grad,) = torch.autograd.grad(model(plain)[[0, 1], targets].sum(), plain)
    assert not torch.allclose(ours, plain.detach() * plain_grad, rtol=1e-3)


# ------------------------------------------------------------------ conservation


def _timm(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _unfused(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def _swiglu() -> type[nn.Module]:
    from timm.layers import SwiGLUPacked

    return SwiGLUPacked


def _hf_vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config)


def _tv_swin() -> nn.Module:
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=32,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[2, 2],
        num_classes=5,
    )


#: name -> (model, image size)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "torchvision-vit": (small_vit, 32),
    "torchvision-swin": (_tv_swin, 32),
    "timm-vit": (lambda: _timm("vit_tiny_patch16_224", **_VIT), 32),
    "timm-vit-unfused": (lambda: _unfused(_timm("vit_tiny_patch16_224", **_VIT)), 32),
    "timm-deit": (lambda: _timm("deit_tiny_distilled_patch16_224", **_VIT), 32),
    "timm-vit-registers": (lambda: _timm("vit_tiny_patch16_224", reg_tokens=2, **_VIT), 32),
    "timm-swin": (
        lambda: _timm(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            embed_dim=32,
            depths=(1, 1),
            num_heads=(2, 2),
            window_size=4,
        ),
        32,
    ),
    "timm-convnext": (
        lambda: _timm("convnext_atto", dims=(32, 32, 32, 32), depths=(1, 1, 1, 1)),
        32,
    ),
    "timm-efficientnet": (lambda: _timm("efficientnet_b0"), 64),
    # gated MLPs (ProductRule) and EVA-02 (SwiGLU, rotary position embedding)
    "timm-vit-swiglu": (
        lambda: _timm("vit_tiny_patch16_224", mlp_layer=_swiglu(), act_layer=nn.SiLU, **_VIT),
        32,
    ),
    "timm-eva02": (
        lambda: _timm(
            "eva02_tiny_patch14_224",
            img_size=28,
            patch_size=14,
            embed_dim=32,
            depth=2,
            num_heads=2,
        ),
        28,
    ),
    "huggingface-vit": (_hf_vit, 32),
}

_built: dict[str, nn.Module] = {}


def built(name: str) -> nn.Module:
    if name not in _built:
        _built[name] = ARCHITECTURES[name][0]().double().eval()
    return _built[name]


def images(name: str, n: int = 2) -> Tensor:
    torch.manual_seed(7)
    size = ARCHITECTURES[name][1]
    return torch.randn(n, 3, size, size, dtype=torch.float64)


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, Tensor) else out.logits


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_lrp_conserves_the_logit_with_the_keepers_at_zero(name: str) -> None:
    import copy

    model = zeroed(copy.deepcopy(built(name)))
    x = images(name)
    targets = [1, 2]
    for cls in (PropagationLRP, CLRP, SGLRP):
        shares = cls(model).relevance_shares(x, target=targets)
        torch.testing.assert_close(shares["end"], shares["start"], rtol=1e-6, atol=1e-12)
    start = logits(model, x)[[0, 1], targets]
    shares = PropagationLRP(model).relevance_shares(x, target=targets)
    torch.testing.assert_close(shares["start"], start, rtol=1e-9, atol=0)
    # the map is what relevance_shares summed
    lrp = PropagationLRP(model).attribute(x, target=targets)
    torch.testing.assert_close(lrp.flatten(1).sum(1), shares["end"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_shares_sum_with_the_input_to_the_logit(name: str) -> None:
    model = built(name)
    x = images(name)
    shares = PropagationLRP(model).relevance_shares(x, target=[0, 4])
    kept = sum(v for k, v in shares.items() if k not in ("start", "end", "other"))
    torch.testing.assert_close(shares["end"] + kept, shares["start"], rtol=1e-6, atol=1e-12)
    assert shares["other"].abs().max() <= 1e-6 * shares["start"].abs().max() + 1e-12
    if name.endswith(("vit", "deit", "registers", "unfused")) and name != "torchvision-swin":
        # ViTs add position embeddings: some relevance ends there, and is reported
        assert shares["position embeddings"].abs().max() > 0


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fg_cam_conserves_the_cam_mass_at_its_layer(name: str) -> None:
    import copy

    model = zeroed(copy.deepcopy(built(name)))
    x = images(name)
    layer = model.get_submodule(default_layer(model).name)
    base = LayerGradCam(model, layer, reshape_transform="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant CAM map of random weights
        cam = base.attribute(x, target=[1, 2])
        fine = FGCam(base).attribute(x, target=[1, 2])
    assert fine.shape == (2, 1, *x.shape[-2:])
    torch.testing.assert_close(fine.flatten(1).sum(1), cam.flatten(1).sum(1), rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------- FG-CAM on transformers


def test_fg_cam_to_the_patch_embedding_a_stage_and_the_pixels() -> None:
    """From the last block's first norm of a timm ViT down to the patch embedding's
    output, and from a Swin's final norm to its first stage; FG-CAM-D too; the sums are
    the CAM's mass less what the parameters keep (as reported)."""
    vit = built("timm-vit")
    x = images("timm-vit")
    base = LayerGradCam(vit, vit.blocks[1].norm1, reshape_transform="auto")
    for attribution, shape in (
        (LayerFGCam(base, vit.patch_embed), (2, 1, 4, 4)),  # tokens before the class token
        (LayerFGCam(base, vit.blocks[0]), (2, 1, 4, 4)),  # after it: read as a 4 x 4 map
        (FGCam(base), (2, 1, 32, 32)),
        (FGCam(base, denoise=True, singular_values=2), (2, 1, 32, 32)),
    ):
        shares = attribution.relevance_shares(x, target=[1, 2])
        maps = attribution.attribute(x, target=[1, 2])
        assert maps.shape == shape
        torch.testing.assert_close(maps.flatten(1).sum(1), shares["end"], rtol=1e-9, atol=1e-12)
        kept = sum(v for k, v in shares.items() if k not in ("start", "end"))
        torch.testing.assert_close(shares["end"] + kept, shares["start"], rtol=1e-9, atol=1e-12)
    # the block's output holds the class token too, which the map leaves out: reported
    outside = LayerFGCam(base, vit.blocks[0]).relevance_shares(x, target=[1, 2])
    assert outside["tokens outside the map"].abs().max() > 0
    swin = built("timm-swin")
    xs = images("timm-swin")
    swin_base = LayerGradCam(swin, swin.norm, reshape_transform="auto")
    stage = LayerFGCam(swin_base, swin.layers[0]).attribute(xs, target=[0, 3])
    assert stage.shape == (2, 1, 8, 8)  # the first stage: 8 x 8 at 32 px, channels last
    convnext = built("timm-convnext")
    xc = images("timm-convnext")
    cn_base = LayerGradCam(convnext, convnext.stages[3])
    assert LayerFGCam(cn_base, convnext.stages[1]).attribute(xc, target=1).shape == (2, 1, 4, 4)


def test_fg_score_cam_on_a_vit() -> None:
    vit = built("huggingface-vit")
    x = images("huggingface-vit")
    base = LayerScoreCam(vit, vit.vit.layers[1].layernorm_before, reshape_transform="auto")
    fine = FGCam(base).attribute(x, target=[1, 2])
    assert fine.shape == (2, 1, 32, 32) and torch.isfinite(fine).all()


class _GatedMlp(nn.Module):
    """A gated MLP written by a user (SwiGLU): ``down(silu(gate(x)) * up(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_a_gated_product_is_split_evenly_or_refused() -> None:
    from captum_fdcam.errors import UnsupportedModuleError
    from captum_fdcam.propagation import ProductRule

    torch.manual_seed(0)
    model = zeroed(_GatedMlp().double())
    x = torch.randn(4, 6, dtype=torch.float64)
    # Unknown to the library: refused, naming the module and both rules.
    with pytest.raises(UnsupportedModuleError, match=r"^'_GatedMlp' \(_GatedMlp\) multiplies"):
        PropagationLRP(model).attribute(x, target=1)
    linear = {nn.Linear: lambda: EpsilonRule(epsilon=0)}
    ours = PropagationLRP(
        model, rules={**linear, _GatedMlp: ProductRule}, input_rule=EpsilonRule(0)
    ).attribute(x, target=1)
    # The uniform rule by hand: each factor gets half of the product's relevance
    # (gradient x input with each factor's gradient halved); SiLU passes its
    # half on by the identity rule, to gate(x), then to x by gradient x input.
    leaf = x.clone().requires_grad_()
    gate, up = model.gate(leaf), model.up(leaf)
    product = F.silu(gate) * up
    out = model.down(product)
    (g_product,) = torch.autograd.grad(out[:, 1].sum(), product, retain_graph=True)
    r_half = product.detach() * g_product / 2
    (g_up,) = torch.autograd.grad(up, leaf, grad_outputs=r_half / up.detach(), retain_graph=True)
    (g_gate,) = torch.autograd.grad(gate, leaf, grad_outputs=r_half / gate.detach())
    torch.testing.assert_close(ours, leaf.detach() * (g_up + g_gate), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.sum(1), out[:, 1].detach(), rtol=1e-9, atol=1e-12)


def test_attention_modes_differ_and_a_wrong_mode_is_refused() -> None:
    model = built("timm-vit")
    x = images("timm-vit")
    cp = PropagationLRP(model).attribute(x, target=1)
    attnlrp = PropagationLRP(model, attention="attnlrp").attribute(x, target=1)
    assert not torch.allclose(cp, attnlrp)
    with pytest.raises(ValueError, match="'cp' or 'attnlrp'"):
        PropagationLRP(model, attention="chefer")


# ------------------------------------------------------------------------ the docs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _section_blocks(page: Path, heading: str) -> list[str]:
    """The python blocks of ``page`` from ``heading`` to the next heading of its level."""
    text = page.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    section = text.split(heading + "\n", 1)[1]
    section = re.split(rf"^{level} ", section, flags=re.M)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)


@pytest.mark.parametrize(
    ("page", "heading", "names"),
    [
        ("fg-cam.md", "## Transformers", ("relevance", "fine", "patches", "stage", "swin_lrp")),
        ("methods/lrp.md", "## Transformers", ("cp", "attnlrp", "contrastive", "shares")),
        ("transformers.md", "## FG-CAM and LRP through attention", ("lrp", "fg_grad_cam")),
    ],
)
def test_the_transformer_sections_of_the_docs_run_as_written(
    page: str, heading: str, names: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _section_blocks(DOCS / page, heading)
    assert blocks, f"no python block under {heading!r} in {page}"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), namespace)
    for name in names:
        value = namespace[name]
        if isinstance(value, Tensor):
            assert torch.isfinite(value).all() and value.abs().sum() > 0, name
    if "fine" in names:
        assert namespace["fine"].shape == (2, 1, 64, 64)  # type: ignore[attr-defined]
        assert namespace["patches"].shape == (2, 1, 4, 4)  # type: ignore[attr-defined]
        assert namespace["stage"].shape == (2, 1, 16, 16)  # type: ignore[attr-defined]


def test_attnlrp_reports_its_softmax_remainder_and_conserves_without_attention() -> None:
    """AttnLRP's softmax rule is not conservative: with the keepers at 0, what misses the
    input is reported under "other". Without attention (ConvNeXt) nothing is missing."""
    import copy

    vit = zeroed(copy.deepcopy(built("torchvision-vit")))
    x = images("torchvision-vit")
    shares = PropagationLRP(vit, attention="attnlrp").relevance_shares(x, target=[1, 2])
    torch.testing.assert_close(
        shares["end"] + shares["other"], shares["start"], rtol=1e-9, atol=1e-12
    )
    assert (shares["other"].abs() > 1e-3 * shares["start"].abs()).all()
    convnext = zeroed(copy.deepcopy(built("timm-convnext")))
    xc = images("timm-convnext")
    shares = PropagationLRP(convnext, attention="attnlrp").relevance_shares(xc, target=[1, 2])
    torch.testing.assert_close(shares["end"], shares["start"], rtol=1e-6, atol=1e-12)
