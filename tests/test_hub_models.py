"""The models users bring: timm and Hugging Face, as they are.

Tiny timm and Hugging Face models (random weights, float64, 32 px images). Every CAM runs
with ``reshape_transform="auto"`` on the model itself (a Hugging Face model returns an
``ImageClassifierOutput``), and is compared with the naive references of
``test_transformers.py``, given the layout written here with explicit loops (prefix
tokens, grid, channels last) and a logits function: every switched or masked copy is a
full forward pass there. Ablation-CAM and FD-CAM must run only the network after the
layer on all of them (no fallback warning), and the part before the layer once per image.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from functools import partial

import pytest
import torch
from conftest import SmallCNN
from test_transformers import CLASSES, naive_map
from torch import Tensor, nn

from captum_fdcam import (
    ConstantMapWarning,
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerGradCam,
    LayerGroupCam,
    LayerScoreCam,
    ModelOutputError,
    PropagationLRP,
    UnsupportedModuleError,
)
from captum_fdcam.architectures import AutoLayout, default_layer
from captum_fdcam.errors import DefaultLayerWarning, FeatureMapError, LayerError
from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SIZE = 32


# ------------------------------------------------------------------ layouts, by hand


def tokens_to_grid(prefix: int, side: int) -> Callable[[Tensor], Tensor]:
    def to_grid(tokens: Tensor) -> Tensor:
        n, _, c = tokens.shape
        grid = tokens.new_zeros(n, c, side, side)
        for p in range(side * side):
            grid[:, :, p // side, p % side] = tokens[:, prefix + p, :]
        return grid

    return to_grid


def grid_to_tokens(prefix: int) -> Callable[[Tensor, Tensor], Tensor]:
    def from_grid(tokens: Tensor, grid: Tensor) -> Tensor:
        side = grid.shape[-1]
        out = tokens.repeat(grid.shape[0], 1, 1)
        for p in range(side * side):
            out[:, prefix + p, :] = grid[:, :, p // side, p % side]
        return out  # the prefix tokens keep their values

    return from_grid


def nhwc_to_grid(x: Tensor) -> Tensor:
    return torch.einsum("nhwc->nchw", x)


def grid_to_nhwc(_: Tensor, grid: Tensor) -> Tensor:
    return torch.einsum("nchw->nhwc", grid).contiguous()


def same(x: Tensor) -> Tensor:
    return x


def same_back(_: Tensor, grid: Tensor) -> Tensor:
    return grid


# ------------------------------------------------------------------------- models


def _timm(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    return model.eval().double()


_VIT = {"img_size": SIZE, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}


def _hf(config: object, classifier: str = "AutoModelForImageClassification") -> nn.Module:
    torch.manual_seed(0)
    model = getattr(transformers, classifier).from_config(config)
    return model.eval().double()


def _hf_vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=SIZE,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    return _hf(config)


#: name -> (model factory, layer, naive layout to the grid, back, the layout "auto" reads)
MODELS: dict[str, tuple[Callable[[], nn.Module], str, Callable, Callable, object]] = {
    "timm-vit": (
        partial(_timm, "vit_tiny_patch16_224", **_VIT),
        "blocks.1.norm1",
        tokens_to_grid(1, 4),
        grid_to_tokens(1),
        TokensToGrid(1, (4, 4)),
    ),
    "timm-deit-distilled": (
        partial(_timm, "deit_tiny_distilled_patch16_224", **_VIT),
        "blocks.1.norm1",
        tokens_to_grid(2, 4),
        grid_to_tokens(2),
        TokensToGrid(2, (4, 4)),
    ),
    "timm-vit-registers": (
        partial(_timm, "vit_tiny_patch16_224", reg_tokens=2, **_VIT),
        "blocks.1.norm1",
        tokens_to_grid(3, 4),
        grid_to_tokens(3),
        TokensToGrid(3, (4, 4)),
    ),
    "timm-swin": (
        partial(
            _timm,
            "swin_tiny_patch4_window7_224",
            img_size=SIZE,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(2, 2),
            window_size=4,
        ),
        "norm",
        nhwc_to_grid,
        grid_to_nhwc,
        ChannelsLastToFirst(),
    ),
    "timm-convnext": (
        partial(_timm, "convnext_atto", dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)),
        "stages.2",
        same,
        same_back,
        None,
    ),
    "timm-resnet": (
        partial(_timm, "resnet18", channels=(8, 16, 32, 64)),
        "layer3",
        same,
        same_back,
        None,
    ),
    "hf-vit": (
        _hf_vit,
        "vit.layers.1.layernorm_before",
        tokens_to_grid(1, 4),
        grid_to_tokens(1),
        TokensToGrid(1, (4, 4)),
    ),
    "hf-swin": (
        lambda: _hf(
            transformers.SwinConfig(
                image_size=SIZE,
                patch_size=4,
                embed_dim=8,
                depths=[1, 1],
                num_heads=[2, 2],
                window_size=4,
                num_labels=5,
            )
        ),
        "swin.layernorm",
        tokens_to_grid(0, 4),
        grid_to_tokens(0),
        TokensToGrid(0, (4, 4)),
    ),
    "hf-convnext": (
        lambda: _hf(
            transformers.ConvNextConfig(
                hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5
            )
        ),
        "convnext.encoder.stages.1",
        same,
        same_back,
        None,
    ),
}

_built: dict[str, nn.Module] = {}


def model_of(name: str) -> nn.Module:
    if name not in _built:
        _built[name] = MODELS[name][0]()
    return _built[name]


def logits_of(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model as the references call it: a function returning the logits tensor."""

    def logits(x: Tensor) -> Tensor:
        out = model(x)
        return out if isinstance(out, Tensor) else out.logits

    return logits


def images(n: int = 2, seed: int = 3) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, dtype=torch.float64)


# -------------------------------------------------------------- maps against naive


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["Grad-CAM", "Ablation-CAM", "FD-CAM"])
def test_cam_on_the_hub_model_as_it_is_matches_naive(name: str, method: str) -> None:
    _, layer_name, to_grid, from_grid, _ = MODELS[name]
    model = model_of(name)
    layer = model.get_submodule(layer_name)
    x = images()
    targets = [1, 3]
    cam = CLASSES[method](model, layer, reshape_transform="auto")
    options = {"perturbations_per_eval": 7} if method != "Grad-CAM" else {}
    with warnings.catch_warnings():
        # no fallback to full forward passes, no other warning
        warnings.simplefilter("error")
        ours = cam.attribute(x, target=targets, **options)
    expected = torch.stack(
        [
            naive_map(method, logits_of(model), layer, x[i : i + 1], t, to_grid, from_grid)[None]
            for i, t in enumerate(targets)
        ]
    )
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["timm-vit", "timm-swin", "hf-vit", "hf-swin"])
@pytest.mark.parametrize("method", ["Score-CAM", "Group-CAM"])
def test_masking_cams_on_transformers_match_naive(name: str, method: str) -> None:
    _, layer_name, to_grid, from_grid, _ = MODELS[name]
    model = model_of(name)
    layer = model.get_submodule(layer_name)
    x = images()
    cam = CLASSES[method](model, layer, reshape_transform="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = cam.attribute(x, target=[0, 4], perturbations_per_eval=9)
    expected = torch.stack(
        [
            naive_map(method, logits_of(model), layer, x[i : i + 1], t, to_grid, from_grid)[None]
            for i, t in enumerate([0, 4])
        ]
    )
    if method == "Group-CAM":  # at the layer's resolution; upsampled, the paper's map
        ours = nn.functional.relu(nn.functional.interpolate(ours, (SIZE, SIZE), mode="bilinear"))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)


class _CountRows:
    """The rows a module computes on (its hooks see a skipped call with empty inputs)."""

    def __init__(self, module: nn.Module) -> None:
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, _: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.rows += args[0].shape[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_network_before_the_layer_runs_once_per_image(name: str) -> None:
    model = model_of(name)
    layer = model.get_submodule(MODELS[name][1])
    # the first convolution: the patch embedding of the transformers, the stem of CNNs
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    counter = _CountRows(first)
    try:
        LayerFDCam(model, layer, reshape_transform="auto").attribute(
            images(3), target=[0, 1, 2], perturbations_per_eval=5
        )
    finally:
        counter.handle.remove()
    assert counter.rows == 3


@pytest.mark.parametrize("name", list(MODELS))
def test_auto_reads_the_layout_of_each_family(name: str) -> None:
    _, layer_name, _, _, expected = MODELS[name]
    model = model_of(name)
    layer = model.get_submodule(layer_name)
    seen: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda *args: seen.append(tuple(args[2].shape)))
    try:
        with torch.no_grad():
            model(images(1))
    finally:
        handle.remove()
    resolved = AutoLayout(model, layer, (SIZE, SIZE)).resolve(seen[0])
    assert repr(resolved) == repr(expected)


# --------------------------------------------------------------- auto: the errors


class _TokenNet(nn.Module):
    """A ViT-like model of no known family: tokens with a class token it does not
    declare."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.norm(torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1))
        return self.head(tokens[:, 0])


def test_auto_fails_clearly_where_the_model_does_not_say() -> None:
    model = _TokenNet().eval()
    with pytest.raises(FeatureMapError, match=r"TokensToGrid\(prefix_tokens=P\)"):
        LayerGradCam(model, model.norm, reshape_transform="auto").attribute(
            torch.randn(1, 3, 32, 32), target=0
        )
    # a pooled (N, C) output has no map
    cnn = SmallCNN(image_size=8).eval()
    with pytest.raises(FeatureMapError, match="no spatial map"):
        LayerGradCam(cnn, cnn.head[1], reshape_transform="auto").attribute(
            torch.randn(1, 3, 8, 8), target=0
        )
    with pytest.raises(TypeError, match="'auto' or None"):
        LayerGradCam(cnn, cnn.act, reshape_transform="automatic")


def test_auto_on_a_cnn_layer_is_no_transform() -> None:
    cnn = SmallCNN(image_size=8).double().eval()
    x = images(2)[..., :8, :8]
    ours = LayerFDCam(cnn, cnn.act, reshape_transform="auto").attribute(x, target=[0, 1])
    plain = LayerFDCam(cnn, cnn.act).attribute(x, target=[0, 1])
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)


def test_torchvision_convnext_block_norm_is_channels_last() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(num_classes=5).eval()
    norm = model.features[7][2].block[2]  # LayerNorm between the block's permutes
    resolved = AutoLayout(model, norm, (64, 64)).resolve((1, 2, 2, 768))
    assert isinstance(resolved, ChannelsLastToFirst)
    timm_model = _timm("convnext_atto", dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
    norm2d = timm_model.stages[3].blocks[0].norm  # timm's LayerNorm2d: channels first
    assert AutoLayout(timm_model, norm2d, (64, 64)).resolve((1, 32, 2, 2)) is None


def test_auto_grid_follows_a_non_square_input() -> None:
    model = _timm("vit_tiny_patch16_224", dynamic_img_size=True, **_VIT)
    layer = model.blocks[1].norm1
    x = torch.randn(1, 3, 24, 40, dtype=torch.float64)  # a 3 x 5 grid of 8 px patches
    naive = naive_map(
        "Grad-CAM",
        model,
        layer,
        x,
        2,
        _grid_3x5,
        lambda *_: None,  # type: ignore[arg-type]
    )
    ours = LayerGradCam(model, layer, reshape_transform="auto").attribute(x, target=2)
    assert ours.shape == (1, 1, 3, 5)
    torch.testing.assert_close(ours[0, 0], naive, rtol=1e-6, atol=1e-9)


def _grid_3x5(tokens: Tensor) -> Tensor:
    n, _, c = tokens.shape
    grid = tokens.new_zeros(n, c, 3, 5)
    for p in range(15):
        grid[:, :, p // 5, p % 5] = tokens[:, 1 + p, :]
    return grid


# ------------------------------------------------------------------ default layers


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("timm-vit", "blocks.1.norm1"),
        ("timm-deit-distilled", "blocks.1.norm1"),
        ("timm-swin", "norm"),
        ("timm-convnext", "stages.3"),
        ("timm-resnet", "layer4.1.conv2"),
        ("hf-vit", "vit.layers.1.layernorm_before"),
        ("hf-swin", "swin.layernorm"),
        ("hf-convnext", "convnext.encoder.stages.1"),
    ],
)
def test_default_layer_per_family(name: str, expected: str) -> None:
    assert default_layer(model_of(name)).name == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # class-attention blocks (tokens: patches plus the class token) last
        ("cait_xxs24_224", {"depth": 2}, "blocks_token_only.1.norm1"),
        ("xcit_nano_12_p16_224", {"depth": 2}, "cls_attn_blocks.1.norm1"),  # 'attn': XCA
        ("swinv2_cr_tiny_224", {}, "stages.3.blocks.1"),  # no final norm: the last block
        ("seresnet18", {}, "layer4.1.conv2"),  # not the SE block's 1 x 1 convolution
        ("levit_128s", {}, None),  # attention with BatchNorm, convolutions only in the stem
    ],
)
def test_default_layer_of_other_timm_families(
    name: str, kwargs: dict[str, object], expected: str | None
) -> None:
    model = timm.create_model(name, pretrained=False, **kwargs)
    if expected is None:  # never the patch embedding, silently
        with pytest.raises(LayerError, match="pass the layer"):
            default_layer(model)
    else:
        assert default_layer(model).name == expected


def test_default_layer_of_torchvision_transformers() -> None:
    from conftest import small_swin, small_vit

    assert default_layer(small_vit()).name == "encoder.layers.encoder_layer_1.ln_1"
    assert default_layer(small_swin()).name == "norm"
    with pytest.raises(LayerError, match="pass the layer"):
        default_layer(_UnknownTransformer())


class _Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.proj = nn.Linear(8, 8)


class _UnknownTransformer(nn.Module):
    """Attention and LayerNorm, but in no block of a known shape; its last Conv2d is the
    patch embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 8, stride=8)
        self.mixer = _Mixer()
        self.norm = nn.LayerNorm(8)


def test_explain_without_a_layer_says_which_it_explains_and_not_the_patch_embedding() -> None:
    from captum_fdcam.evaluation import explain

    model = model_of("timm-vit")
    x = images(2)
    with pytest.warns(DefaultLayerWarning, match=r"'blocks\.1\.norm1'.*last block's first norm"):
        ours = explain(model, x, [1, 2], method="Grad-CAM", relu_attributions=False)
    expected = LayerGradCam(model, model.blocks[1].norm1, reshape_transform="auto").attribute(
        x, target=[1, 2]
    )
    expected = nn.functional.interpolate(expected, (SIZE, SIZE), mode="bilinear")
    torch.testing.assert_close(torch.from_numpy(ours), expected.float(), rtol=1e-5, atol=1e-6)


def test_explain_takes_a_hugging_face_model_with_its_own_layer_names() -> None:
    from captum_fdcam.evaluation import explain

    model = model_of("hf-vit")
    x = images(2)
    layer = "vit.layers.0.layernorm_before"
    for method in ("FD-CAM", "IntegratedGradients"):
        ours = explain(model, x, [0, 3], method=method, layer=layer)
        assert ours.shape == (2, 1, SIZE, SIZE) and float(abs(ours).max()) > 0


# --------------------------------------------------------- Hugging Face outputs


def test_every_cam_reads_the_logits_of_a_hugging_face_output() -> None:
    model = model_of("hf-vit")
    layer = model.vit.layers[1].layernorm_before
    logits = logits_of(model)
    x = images()
    for cls in (LayerGradCam, LayerScoreCam, LayerGroupCam, LayerAblationCam, LayerFDCam):
        kwargs = {"blur_kernel_size": 5, "blur_sigma": 2.0} if cls is LayerGroupCam else {}
        ours = cls(model, layer, reshape_transform="auto", **kwargs).attribute(x, target=[2, 0])
        # a plain function hides the model: its layout must be given
        with pytest.raises(FeatureMapError, match="prefix_tokens=P"):
            cls(logits, layer, reshape_transform="auto", **kwargs).attribute(x, target=[2, 0])
        explicit = TokensToGrid(1)
        ref = cls(logits, layer, reshape_transform=explicit, **kwargs).attribute(x, target=[2, 0])
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_fg_cam_and_lrp_on_a_hugging_face_cnn() -> None:
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5
    )
    model = _hf(config)
    x = images()
    layer = model.resnet.encoder.stages[1]

    class Logits(nn.Module):  # the same modules, returning the logits tensor
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x).logits

    wrapper = Logits()
    ours = FGCam(LayerGradCam(model, layer)).attribute(x, target=[1, 4])
    ref = FGCam(LayerGradCam(wrapper, layer)).attribute(x, target=[1, 4])
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    lrp = PropagationLRP(model).attribute(x, target=[1, 4])
    lrp_ref = PropagationLRP(wrapper).attribute(x, target=[1, 4])
    torch.testing.assert_close(lrp, lrp_ref, rtol=0, atol=0)


class _Encoder(nn.Module):
    """Returns an output object without logits (an embedding model's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> object:
        hidden = self.conv(x)
        return transformers.modeling_outputs.BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=hidden.mean((2, 3))
        )


def test_other_output_objects_fail_with_what_to_pass() -> None:
    model = _Encoder().eval()
    with pytest.raises(ModelOutputError, match=r"last_hidden_state, pooler_output.*pooler_output"):
        LayerGradCam(model, model.conv).attribute(torch.randn(1, 3, 8, 8), target=0)


# ---------------------------------------------------------------- scores and maps


class _Net(nn.Module):
    """conv -> ReLU -> mean over positions -> linear: ``outputs`` scores."""

    def __init__(self, outputs: int, pool_first: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, outputs)
        self.pool_first = pool_first

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.pool_first:
            h = h.mean((2, 3), keepdim=True)
        return self.fc(self.act(h).mean((2, 3)))


def _naive_scorecam(model: nn.Module, x: Tensor, target: int, unit: str) -> Tensor:
    """Score-CAM's weights with baseline 0, scores in ``unit``, by hand."""
    a = model.act(model.conv(x))[0].detach()
    read = {
        "logit": lambda o: o,
        "sigmoid": torch.sigmoid,
        "probability": lambda o: o.softmax(-1),
    }[unit]
    with torch.no_grad():
        base = read(model(torch.zeros_like(x)))[0, target]
        weights = []
        for k in range(a.shape[0]):
            up = nn.functional.interpolate(a[k][None, None], size=x.shape[-2:], mode="bilinear")
            lo, hi = up.min(), up.max()
            mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
            weights.append(read(model(x * mask))[0, target] - base)
    return sum(w * a[k] for k, w in enumerate(weights))


def test_one_output_models_are_explained_by_their_output() -> None:
    torch.manual_seed(4)
    model = _Net(1).double().eval()
    x = images(1)[..., :8, :8]
    ours = LayerScoreCam(model, model.act).attribute(x)
    torch.testing.assert_close(ours[0, 0], _naive_scorecam(model, x, 0, "logit"))
    assert float(ours.abs().max()) > 0
    for cls in (LayerScoreCam, LayerGroupCam):
        kwargs = {"blur_kernel_size": 5} if cls is LayerGroupCam else {}
        with pytest.raises(ModelOutputError, match="with one output it is 1 for every input"):
            cls(model, model.act, score="probability", **kwargs).attribute(x)


def test_multi_label_models_take_a_sigmoid_score() -> None:
    torch.manual_seed(5)
    model = _Net(6).double().eval()
    x = images(1)[..., :8, :8]
    ours = LayerScoreCam(model, model.act, score="sigmoid").attribute(x, target=2)
    torch.testing.assert_close(ours[0, 0], _naive_scorecam(model, x, 2, "sigmoid"))
    default = LayerScoreCam(model, model.act).attribute(x, target=2)  # several outputs
    torch.testing.assert_close(default[0, 0], _naive_scorecam(model, x, 2, "probability"))


def test_a_model_can_declare_its_score() -> None:
    torch.manual_seed(6)
    model = _Net(6).double().eval()
    model.default_score = "logit"
    x = images(1)[..., :8, :8]
    ours = LayerScoreCam(model, model.act).attribute(x, target=2)
    torch.testing.assert_close(ours[0, 0], _naive_scorecam(model, x, 2, "logit"))


def test_masking_cams_refuse_a_one_by_one_map() -> None:
    torch.manual_seed(7)
    model = _Net(3, pool_first=True).eval()
    x = torch.randn(2, 3, 8, 8)
    for cls in (LayerScoreCam, LayerGroupCam):
        kwargs = {"blur_kernel_size": 5} if cls is LayerGroupCam else {}
        with pytest.raises(FeatureMapError, match="1 x 1"):
            cls(model, model.act, **kwargs).attribute(x, target=0)


def test_a_constant_map_is_said_once_naming_the_examples() -> None:
    torch.manual_seed(8)
    model = _Net(3, pool_first=True).eval()
    x = torch.randn(3, 3, 8, 8)
    with pytest.warns(ConstantMapWarning, match=r"example\(s\) \[0, 1, 2\] of 3") as record:
        LayerGradCam(model, model.act).attribute(x, target=0)
    assert len([w for w in record if issubclass(w.category, ConstantMapWarning)]) == 1
    # a ReLU'd map with no positive evidence: all 0, only for the examples that have it
    cnn = SmallCNN().eval()
    with torch.no_grad():
        cnn.head[3].weight.zero_()
        cnn.head[3].bias.zero_()
    with pytest.warns(ConstantMapWarning, match=r"all 0\) for example\(s\) \[0, 1\]"):
        LayerGradCam(cnn, cnn.act).attribute(torch.randn(2, 3, 8, 8), 1, relu_attributions=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a map that varies: nothing to say
        varied = SmallCNN().eval()
        LayerGradCam(varied, varied.act).attribute(torch.randn(2, 3, 8, 8), 1)


# ------------------------------------------------------- nothing left on the model


class _CopyDuringReplay:
    """A hook after the layer that copies the model while the replay is running."""

    def __init__(self, model: nn.Module, after: nn.Module) -> None:
        self.model = model
        self.copies: list[nn.Module] = []
        self.pickles: list[bytes] = []
        self.calls = 0
        self.stood_in = False
        self.handle = after.register_forward_hook(self._copy)

    def _copy(self, *_: object) -> None:
        self.calls += 1
        if self.calls == 2:  # the first switched copies (the first call is the reference)
            self.stood_in = "forward" in vars(self.model.features)  # skipped by the replay
            self.copies.append(copy.deepcopy(self.model))
            self.pickles.append(pickle.dumps(self.model))


def test_replay_leaves_nothing_on_the_model_and_copies_made_meanwhile_are_their_own() -> None:
    torch.manual_seed(9)
    model = SmallCNN().double().eval()
    x = images(2)[..., :8, :8]
    spy = _CopyDuringReplay(model, model.head)
    try:
        LayerAblationCam(model, model.act).attribute(x, target=[0, 1], perturbations_per_eval=3)
    finally:
        spy.handle.remove()
    assert spy.stood_in
    assert all("forward" not in vars(m) for m in model.modules())
    for clone in (spy.copies[0], pickle.loads(spy.pickles[0])):
        with torch.no_grad():
            for parameter in clone.parameters():
                parameter.mul_(2)  # its own weights: its outputs change with them
            expected = SmallCNN.forward(clone, x)
            torch.testing.assert_close(clone(x), expected)
            torch.testing.assert_close(
                clone.features(x),
                clone.features[3](clone.features[2](clone.features[1](clone.features[0](x)))),
            )
        assert not torch.allclose(clone(x), model(x))


# ------------------------------------------- relevance: refused rather than wrong


def _tiny(first: nn.Module, channels: int) -> nn.Module:
    return nn.Sequential(
        first, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)
    ).eval()


def test_weight_standardised_convolutions_and_kernel_attention_are_refused() -> None:
    """A rule's rewritten weights would be standardised again by timm's StdConv2d, and
    relevance would flow through SelectiveKernel's softmax by plain gradients: both are
    errors naming the module, not silently wrong maps."""
    from captum.attr._utils.lrp_rules import EpsilonRule
    from timm.layers import SelectiveKernel, StdConv2d

    torch.manual_seed(10)
    x = torch.randn(1, 3, 8, 8)
    standardised = _tiny(StdConv2d(3, 4, 3, padding=1), 4)
    with pytest.raises(UnsupportedModuleError, match=r"StdConv2d.*standardises its weights"):
        PropagationLRP(standardised).attribute(x, target=0)
    # a rule of the user's own is still honoured
    lrp = PropagationLRP(standardised, rules={StdConv2d: EpsilonRule}, input_rule=EpsilonRule())
    assert lrp.attribute(x, target=0).shape == x.shape
    kernels = _tiny(SelectiveKernel(3, 4, split_input=False), 4)
    with pytest.raises(UnsupportedModuleError, match=r"SelectiveKernel.*softmax"):
        FGCam(LayerGradCam(kernels, kernels[1])).attribute(x, target=0)


@pytest.mark.parametrize(
    ("transform", "shape"),
    [(TokensToGrid(2, (3, 4)), (1, 14, 5)), (ChannelsLastToFirst(), (1, 3, 4, 5))],
    ids=["tokens", "channels-last"],
)
def test_the_ready_transforms_invert_as_the_index_map_does(
    transform: Callable[[Tensor], Tensor], shape: tuple[int, ...]
) -> None:
    """Switched copies go back through the ready transforms' own inverse (a concatenation,
    a permute), or are masked in the layer's layout: the same values as the index map's
    scatter, which any transform gets."""
    from captum_fdcam import FeatureLayout

    torch.manual_seed(11)
    raw = torch.randn(shape, dtype=torch.float64)
    fast, generic = FeatureLayout(transform, "x"), FeatureLayout(lambda t: transform(t), "x")
    for layout in (fast, generic):
        layout.check(raw, "output")
    maps = torch.randn(3, *transform(raw).shape[1:], dtype=torch.float64)
    assert torch.equal(fast.from_map(raw, maps), generic.from_map(raw, maps))
    like = torch.randn(2, *shape[1:], dtype=torch.float64)
    assert torch.equal(fast.scatter(maps[:2], like), generic.scatter(maps[:2], like))
    # switched copies are made in the layer's layout directly: the same values
    activation = transform(raw)[0]
    keep = torch.rand(4, activation.shape[0]) > 0.5
    assert torch.equal(
        fast.switched(raw, activation, keep), generic.switched(raw, activation, keep)
    )


@pytest.mark.slow
def test_the_hub_models_page_runs_as_written() -> None:
    """Every python block of docs/hub-models.md, in order, in one namespace."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "hub-models.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert namespace["choice"].name == "blocks.11.norm1"  # type: ignore[attr-defined]
    assert tuple(namespace["maps"].shape) == (2, 1, 4, 4)  # type: ignore[attr-defined]
    assert tuple(namespace["hf_maps"].shape) == (2, 1, 4, 4)  # type: ignore[attr-defined]
    assert tuple(namespace["swin_maps"].shape) == (2, 1, 2, 2)  # type: ignore[attr-defined]
    assert "'blocks.11.norm1'" in str(namespace["caught"][0].message)  # type: ignore[index]
    assert namespace["heatmaps"].shape == (2, 1, 64, 64)  # type: ignore[attr-defined]
