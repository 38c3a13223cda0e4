"""CAMs on vision transformers through ``reshape_transform``.

Small torchvision ``VisionTransformer`` and ``SwinTransformer`` (random weights, a
few layers, 32 px images, float64). The references lay tokens out on the grid with
explicit loops (and put switched copies back the same way, class token untouched),
and run every switched or masked copy as a full forward pass: nothing of the
library's layout or replay code is used.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from conftest import small_swin, small_vit
from PIL import Image
from test_perturbation_cams import naive_groups, naive_min_max
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam import (
    LayerAblationCam,
    LayerFDCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerGroupCam,
    LayerLayerCam,
    LayerScoreCam,
    LayerXGradCam,
)
from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

ToGrid = Callable[[Tensor], Tensor]
FromGrid = Callable[[Tensor, Tensor], Tensor]


# ------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return small_vit().double()


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return small_swin().double()


def images(n: int = 2, seed: int = 2) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, 32, 32, dtype=torch.float64)


# ------------------------------------------------------- naive layouts


def vit_grid(tokens: Tensor) -> Tensor:
    """(N, 1 + s*s, C) -> (N, C, s, s), class token dropped, patches row by row."""
    n, count, c = tokens.shape
    side = round((count - 1) ** 0.5)
    grid = tokens.new_zeros(n, c, side, side)
    for p in range(count - 1):
        grid[:, :, p // side, p % side] = tokens[:, 1 + p, :]
    return grid


def vit_tokens(tokens: Tensor, grid: Tensor) -> Tensor:
    """``tokens`` (1, 1 + s*s, C) repeated for each grid of (M, C, s, s), the patch
    tokens replaced by the grid's values; the class token is left as it was."""
    side = grid.shape[-1]
    out = tokens.repeat(grid.shape[0], 1, 1)
    for p in range(side * side):
        out[:, 1 + p, :] = grid[:, :, p // side, p % side]
    return out


def nhwc_grid(x: Tensor) -> Tensor:
    return torch.einsum("nhwc->nchw", x)


def nhwc_back(x: Tensor, grid: Tensor) -> Tensor:
    return torch.einsum("nchw->nhwc", grid).contiguous()


# ----------------------------------------------------- naive methods


def layer_state(
    model: nn.Module, layer: nn.Module, x: Tensor, target: int, to_grid: ToGrid
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One example's raw layer output (1, ...), its grid (K, h, w), the gradient of
    the target logit on the grid (K, h, w), and the logits."""
    store: dict[str, Tensor] = {}

    def hook(_: nn.Module, __: object, out: Tensor) -> Tensor:
        store["raw"] = out.detach().requires_grad_(True)
        return store["raw"].clone()

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, target], store["raw"])
    raw = store["raw"].detach()
    return raw, to_grid(raw)[0], to_grid(grad)[0], logits.detach()[0]


def logits_with_grids(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    raw: Tensor,
    grids: list[Tensor],
    from_grid: FromGrid,
) -> Tensor:
    """A full forward pass per grid, with the layer's output replaced by that grid
    put back into the layer's layout."""
    out = []
    for grid in grids:
        replaced = from_grid(raw, grid[None])
        handle = layer.register_forward_hook(lambda *_, r=replaced: r.clone())
        try:
            with torch.no_grad():
                out.append(model(x)[0])
        finally:
            handle.remove()
    return torch.stack(out)


def naive_map(
    method: str,
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    target: int,
    to_grid: ToGrid,
    from_grid: FromGrid,
) -> Tensor:
    raw, a, g, logits = layer_state(model, layer, x, target, to_grid)
    k = a.shape[0]
    y = logits[target]
    if method == "Grad-CAM":
        weights = g.mean(dim=(1, 2))
    elif method == "XGrad-CAM":
        weights = torch.stack([(g[c] * a[c]).sum() / a[c].sum() for c in range(k)])
    elif method == "Grad-CAM++":
        # eq. 19 of the paper: alpha = g^2 / (2 g^2 + sum(A) g^3), 0 where undefined
        weights = []
        for c in range(k):
            g2, g3 = g[c] ** 2, g[c] ** 3
            denominator = 2 * g2 + a[c].sum() * g3
            alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
            weights.append((alpha * F.relu(g[c])).sum())
        weights = torch.stack(weights)
    elif method == "Layer-CAM":
        return sum(F.relu(g[c]) * a[c] for c in range(k))
    elif method == "Ablation-CAM":
        copies = []
        for c in range(k):
            off = a.clone()
            off[c] = 0
            copies.append(off)
        y_off = logits_with_grids(model, layer, x, raw, copies, from_grid)[:, target]
        weights = (y - y_off) / y
    elif method == "FD-CAM":
        groups = naive_groups(a, 0.05)
        off_copies, on_copies = [], []
        for group in groups:
            off, on = a.clone(), torch.zeros_like(a)
            off[group] = 0
            on[group] = a[group]
            off_copies.append(off)
            on_copies.append(on)
        s_off = y - logits_with_grids(model, layer, x, raw, off_copies, from_grid)[:, target]
        s_on = logits_with_grids(model, layer, x, raw, on_copies, from_grid)[:, target]
        s_hat = naive_min_max((s_off + s_on) / 2)
        weights = naive_min_max(g.mean(dim=(1, 2))) * torch.exp(s_hat) - 0.5
    elif method == "Group-CAM":
        # 4 groups of consecutive channels, 5 px blur kernel, sigma 2
        alpha = g.mean(dim=(1, 2))
        blurred = gaussian_blur(x, [5, 5], [2.0, 2.0])
        with torch.no_grad():
            p_blur = model(blurred).softmax(-1)[0, target]
            saliency = torch.zeros(x.shape[-2:], dtype=x.dtype)
            size = k // 4
            for start in range(0, k, size):
                r = F.relu(sum(alpha[c] * a[c] for c in range(start, start + size)))
                up = F.interpolate(r[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
                mask = naive_min_max(up)
                score = F.relu(
                    model(x * mask + blurred * (1 - mask)).softmax(-1)[0, target] - p_blur
                )
                saliency += score * mask
        return F.relu(saliency)
    elif method == "Score-CAM":
        with torch.no_grad():
            base = model(torch.zeros_like(x)).softmax(-1)[0, target]
            weights = []
            for c in range(k):
                up = F.interpolate(a[c][None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
                weights.append(model(x * naive_min_max(up)).softmax(-1)[0, target] - base)
            weights = torch.stack(weights)
    else:  # pragma: no cover
        raise AssertionError(method)
    return sum(weights[c] * a[c] for c in range(k))


CLASSES = {
    "Grad-CAM": LayerGradCam,
    "XGrad-CAM": LayerXGradCam,
    "Grad-CAM++": LayerGradCamPlusPlus,
    "Layer-CAM": LayerLayerCam,
    "Ablation-CAM": LayerAblationCam,
    "FD-CAM": LayerFDCam,
    "Score-CAM": LayerScoreCam,
    "Group-CAM": partial(LayerGroupCam, groups=4, blur_kernel_size=5, blur_sigma=2.0),
}
PERTURBING = ("Ablation-CAM", "FD-CAM", "Score-CAM", "Group-CAM")


def _case(
    request: pytest.FixtureRequest, arch: str
) -> tuple[nn.Module, nn.Module, Callable[[Tensor], Tensor], ToGrid, FromGrid]:
    if arch == "vit":
        model = request.getfixturevalue("vit")
        return model, model.encoder.layers[-1].ln_1, TokensToGrid(), vit_grid, vit_tokens
    model = request.getfixturevalue("swin")
    layer = model.features[-1][-1].norm1 if arch == "swin-block" else model.norm
    return model, layer, ChannelsLastToFirst(), nhwc_grid, nhwc_back


@pytest.mark.parametrize("arch", ["vit", "swin-block", "swin-norm"])
@pytest.mark.parametrize("method", list(CLASSES))
def test_cam_on_transformer_matches_naive(
    request: pytest.FixtureRequest, arch: str, method: str
) -> None:
    model, layer, transform, to_grid, from_grid = _case(request, arch)
    x = images()
    targets = [1, 3]
    cam = CLASSES[method](model, layer, reshape_transform=transform)
    options = {"perturbations_per_eval": 7} if method in PERTURBING else {}
    with warnings.catch_warnings():
        # the switching methods must run only the network after the layer here
        warnings.simplefilter("error", RuntimeWarning)
        ours = cam.attribute(x, target=targets, **options)
    expected = torch.stack(
        [
            naive_map(method, model, layer, x[i : i + 1], t, to_grid, from_grid)[None]
            for i, t in enumerate(targets)
        ]
    )
    if method == "Group-CAM":
        # its map is returned at the layer's resolution; upsampled, it is the paper's map
        ours = F.relu(LayerAttribution.interpolate(ours, x.shape[-2:], "bilinear"))
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-9)


def test_group_cam_expected_shape_is_upsampled(vit: nn.Module) -> None:
    """Group-CAM's expected map above is at the input's resolution."""
    x = images(1)
    cam = CLASSES["Group-CAM"](vit, vit.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid())
    assert cam.attribute(x, target=0).shape == (1, 1, 4, 4)


@pytest.mark.parametrize("method", [LayerAblationCam, LayerFDCam], ids=lambda m: m.__name__)
def test_only_the_network_after_the_layer_runs_for_switched_copies(
    vit: nn.Module, method: type
) -> None:
    """The patch embedding sees each image once: the switched copies (class token
    included, put back through the inverse layout) start at the layer."""
    rows: list[int] = []
    handle = vit.conv_proj.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            method(vit, vit.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid()).attribute(
                images(3), target=[0, 1, 2], perturbations_per_eval=5
            )
    finally:
        handle.remove()
    assert sum(rows) == 3


@pytest.mark.parametrize("method", [LayerGradCam, LayerAblationCam, LayerFDCam])
def test_layer_input_is_the_previous_layers_output(vit: nn.Module, method: type) -> None:
    """A block's input and the previous block's output are the same tensor, used the
    same way: explaining either gives the same map."""
    x = images()
    as_input = method(vit, vit.encoder.layers[-1], reshape_transform=TokensToGrid()).attribute(
        x, target=[2, 4], attribute_to_layer_input=True
    )
    as_output = method(vit, vit.encoder.layers[-2], reshape_transform=TokensToGrid()).attribute(
        x, target=[2, 4]
    )
    assert as_input.abs().sum() > 0
    torch.testing.assert_close(as_input, as_output, rtol=1e-9, atol=1e-12)


def test_batch_equals_single_examples(vit: nn.Module) -> None:
    x = images(3)
    cam = LayerFDCam(vit, vit.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid())
    batch = cam.attribute(x, target=[0, 1, 2])
    single = torch.cat([cam.attribute(x[i : i + 1], target=i) for i in range(3)])
    torch.testing.assert_close(batch, single)


def test_float32_vit_matches_float64(vit: nn.Module) -> None:
    x = images()
    layer64 = vit.encoder.layers[-1].ln_1
    expected = LayerAblationCam(vit, layer64, reshape_transform=TokensToGrid()).attribute(
        x, target=[1, 2]
    )
    vit32 = copy.deepcopy(vit).float()
    ours = LayerAblationCam(
        vit32, vit32.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid()
    ).attribute(x.float(), target=[1, 2])
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------- errors


def test_tokens_without_reshape_transform_name_the_option(vit: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"ln_1.*shape \(2, 17, 16\).*reshape_transform"):
        LayerGradCam(vit, vit.encoder.layers[-1].ln_1).attribute(images(), target=0)


@pytest.mark.parametrize(
    ("transform", "match"),
    [
        (lambda t: TokensToGrid()(t) * 2, "more than move values"),
        (lambda t: TokensToGrid()(t) + 1e-3, "more than move values"),
        (lambda t: TokensToGrid()(t[:, :, :8] + t[:, :, 8:]), "more than move values"),
        (lambda t: TokensToGrid()(t).mean(dim=1, keepdim=True), "more than move values"),
        (lambda t: TokensToGrid()(t).repeat(1, 2, 1, 1), "more than move values"),
        (lambda t: t[:, 1:], r"returned \(1, 16, 16\)"),
        (lambda t: t.numpy(), "returned ndarray"),
        (TokensToGrid(prefix_tokens=2), "not a square grid"),
        (TokensToGrid(grid_size=(3, 5)), r"grid_size 3x5 needs 15 patch tokens, got 16"),
    ],
)
@pytest.mark.parametrize("method", [LayerGradCam, LayerAblationCam, LayerScoreCam])
def test_bad_transforms_are_clear_errors(
    vit: nn.Module, transform: Callable[[Tensor], Tensor], match: str, method: type
) -> None:
    cam = method(vit, vit.encoder.layers[-1].ln_1, reshape_transform=transform)
    with pytest.raises(ValueError, match=match):
        cam.attribute(images(), target=0)


def test_reshape_transform_must_be_callable(vit: nn.Module) -> None:
    with pytest.raises(TypeError, match="reshape_transform must be callable"):
        LayerGradCam(vit, vit.encoder.layers[-1].ln_1, reshape_transform="vit")


def test_ready_transforms_check_their_input() -> None:
    with pytest.raises(ValueError, match="tokens of shape"):
        TokensToGrid()(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, h, w, C\)"):
        ChannelsLastToFirst()(torch.zeros(2, 17, 16))
    with pytest.raises(ValueError, match="prefix_tokens"):
        TokensToGrid(prefix_tokens=-1)
    with pytest.raises(TypeError, match="prefix_tokens must be an integer"):
        TokensToGrid(prefix_tokens=True)
    with pytest.raises(ValueError, match="grid_size must be a positive integer"):
        TokensToGrid(grid_size=(0, 4))
    # numpy integers wherever ints are
    same = TokensToGrid(prefix_tokens=np.int64(2), grid_size=np.int32(4))
    assert (same.prefix_tokens, same.grid_size) == (2, (4, 4))
    assert TokensToGrid(grid_size=(np.int64(3), 5)).grid_size == (3, 5)
    # DeiT: class and distillation tokens, then a 3 x 5 grid
    tokens = torch.arange(2 * 17 * 4).reshape(2, 17, 4)
    grid = TokensToGrid(prefix_tokens=2, grid_size=(3, 5))(tokens)
    assert grid.shape == (2, 4, 3, 5)
    assert torch.equal(grid[1, :, 2, 1], tokens[1, 2 + 2 * 5 + 1])


def test_model_and_inputs_unchanged(vit: nn.Module) -> None:
    x = images()
    before_x = x.clone()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    LayerFDCam(vit, vit.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid()).attribute(
        x, target=[0, 1]
    )
    assert torch.equal(x, before_x)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())


# ------------------------------------------------------------- example


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_vit_example(tmp_path: Path) -> None:
    """examples/vit_cam.py trains its ViT, explains it at two layers, draws the maps."""
    path = Path(__file__).resolve().parents[1] / "examples" / "vit_cam.py"
    spec = importlib.util.spec_from_file_location("example_vit_cam", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    spec.loader.exec_module(example)
    result = example.main(["--small", "--out", str(tmp_path)])

    assert result.accuracy >= 0.9  # the model learned the colours
    for layer, shapes in result.shapes.items():
        assert set(shapes) == set(example.SHOWN_METHODS), layer
        assert all(shape == (24, 1, 4, 4) for shape in shapes.values()), layer
    # Before any attention, the input-masking Score-CAM finds the square's patch far
    # more often than chance (1/16), as the example says.
    first = result.hit_rates[example.LAYERS[0]]
    assert first["Score-CAM"] > 4 / 16
    assert all(0 <= rate <= 1 for rates in result.hit_rates.values() for rate in rates.values())
    with Image.open(result.figure) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 30 and pixels.shape[0] > 300


def test_the_docs_example_runs() -> None:
    """The first code block of docs/transformers.md runs as written."""
    page = Path(__file__).resolve().parents[1] / "docs" / "transformers.md"
    code = page.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, str(page), "exec"), namespace)
    assert namespace["maps"].shape == (2, 1, 4, 4)
    assert namespace["full"].shape == (2, 1, 64, 64)
    assert namespace["swin_maps"].shape == (2, 1, 8, 8)
    assert namespace["maps"].abs().sum() > 0


def test_quantus_explain_func_takes_the_transform(vit: nn.Module) -> None:
    """A Quantus user passes the transform through explain's method_kwargs and the
    layer by name (which also works on the copies Quantus's randomisation tests make)."""
    from captum_fdcam.evaluation import explain

    x = images().float()
    vit32 = copy.deepcopy(vit).float()
    ours = explain(
        vit32,
        x.numpy(),
        np.array([1, 4]),
        method="FD-CAM",
        layer="encoder.layers.encoder_layer_1.ln_1",
        method_kwargs={"reshape_transform": TokensToGrid()},
    )
    direct = LayerFDCam(
        vit32, vit32.encoder.layers[-1].ln_1, reshape_transform=TokensToGrid()
    ).attribute(x, target=[1, 4], relu_attributions=True)
    expected = LayerAttribution.interpolate(direct, (32, 32), "bilinear")
    assert ours.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-6)
