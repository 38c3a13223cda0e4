"""What the library reads from a model's architecture: how a layer's output becomes a
feature map (``reshape_transform="auto"``), and which layer to explain by default.

Both are read from the model, the way timm, torchvision and Hugging Face models describe
themselves:

- *Tokens* (N, P + h w, C): P, the prefix tokens before the patch tokens, from timm's
  ``num_prefix_tokens``, torchvision's ``VisionTransformer`` (its class token), or a
  Hugging Face model's token parameters (``cls_token``, DeiT's ``distillation_token``,
  DINOv2's ``register_tokens``; none for Swin). The grid (h, w) from timm's
  ``patch_embed`` at the input's size, else the factorisation of h w closest to the
  input's aspect ratio.
- *4-D maps*: channels first (N, C, h, w) or last (N, h, w, C), told apart by the
  layer's channel count (a LayerNorm's ``normalized_shape``, a convolution's
  ``out_channels``, ...) and, where that leaves it open, by the family (Swin's stages
  are channels last).

Where the model does not say, :class:`AutoLayout` fails with a message that names the
explicit transform to pass. Only the standard library and torch are imported; the model
families are recognised by their attributes and class names, so that timm and
transformers need not be installed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import Module

from captum_fdcam.errors import FeatureMapError, LayerError
from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

#: What ``reshape_transform`` takes to read the layout from the model.
AUTO = "auto"
#: Names of the parameters that hold the tokens before the patch tokens, (1, n, C), in
#: Hugging Face's vision transformers (ViT, DeiT, BEiT, DINOv2, ...) and timm's.
_TOKEN_PARAMETERS = (
    "cls_token",
    "distillation_token",
    "register_tokens",
    "dist_token",
    "reg_token",
)


# ----------------------------------------------------------------------- families


def is_norm(module: Module) -> bool:
    """A per-token normalisation: LayerNorm, RMSNorm, or a class named so (Hugging Face's
    ``ConvNextLayerNorm``, ...)."""
    rms = getattr(nn, "RMSNorm", None)
    kinds = (nn.LayerNorm,) if rms is None else (nn.LayerNorm, rms)
    return isinstance(module, kinds) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)


def is_attention(module: Module, name: str = "") -> bool:
    """An attention module: ``nn.MultiheadAttention``, a class named so (timm's
    ``Attention``, ``WindowAttention`` and ``TalkingHeadAttn``, torchvision's
    ``ShiftedWindowAttention``, Hugging Face's ``ViTAttention``, ...), or a child its
    parent calls ``name`` = ``attn`` or ``attention`` (timm's ``XCA``)."""
    return (
        isinstance(module, nn.MultiheadAttention)
        or bool(_ATTENTION_NAME.search(type(module).__name__))
        or bool(_ATTENTION_NAME.fullmatch(name))
    )


def is_transformer_block(module: Module) -> bool:
    """A transformer block: attention and a normalisation among its direct children."""
    children = list(module.named_children())
    return any(is_attention(c, n) for n, c in children) and any(is_norm(c) for _, c in children)


def _is_windowed(block: Module) -> bool:
    names = [type(block).__name__] + [type(c).__name__ for c in block.children()]
    return any("swin" in n.lower() or "window" in n.lower() for n in names)


def _is_gate_block(module: Module) -> bool:
    """A squeeze-and-excitation block or another gate (their convolutions see pooled,
    1 x 1 maps: never the layer to explain)."""
    from captum_fdcam.propagation.assignment import GATED_BLOCKS, loaded_classes

    return isinstance(module, loaded_classes(GATED_BLOCKS)) or bool(
        re.search(r"squeeze|excit|^SE[A-Z]|SELayer|^Eca", type(module).__name__)
    )


@dataclass(frozen=True)
class LayerChoice:
    """The layer :func:`default_layer` picked.

    Attributes:
        name: its qualified name in the model (``model.get_submodule(name)``).
        reason: why, for messages (``"the last block's first norm (ViT)"``).
    """

    name: str
    reason: str


def default_layer(model: Module) -> LayerChoice:
    """The layer to explain when none is given, by family.

    - the offline model (:func:`captum_fdcam.models.efficientnet_lite0`):
      ``head_activation``;
    - ViT-style models (timm ViT, DeiT, EVA, ..., torchvision's ``VisionTransformer``,
      Hugging Face ViT, DeiT, DINOv2, CLIP, ...): the last block's first norm, as
      pytorch-grad-cam recommends (after the last block only the class token reaches the
      head of a class-token model);
    - Swin (timm, torchvision, Hugging Face): the final norm, before the pooling;
    - ConvNeXt (timm, torchvision, Hugging Face): the last stage's output;
    - other CNNs: the last ``Conv2d``.

    Raises:
        LayerError: a transformer of no known family, or a model without a ``Conv2d``:
            pass the layer.
    """
    if isinstance(getattr(model, "head_activation", None), Module):
        return LayerChoice("head_activation", "the offline model's head activation")
    named = list(model.named_modules())
    blocks = [(name, m) for name, m in named if is_transformer_block(m)]
    if blocks:
        if any(_is_windowed(m) for _, m in blocks):
            inside = tuple(name + "." for name, _ in blocks)
            order = [n for n, _ in named]
            after = order.index(blocks[-1][0])
            norms = [
                n
                for n, m in named[after:]
                if is_norm(m) and not n.startswith(inside) and n != blocks[-1][0]
            ]
            if norms:
                return LayerChoice(norms[-1], "the final norm (Swin)")
            return LayerChoice(blocks[-1][0], "the last block's output (Swin, no final norm)")
        else:
            name, block = blocks[-1]
            first = next(n for n, c in block.named_children() if is_norm(c))
            return LayerChoice(f"{name}.{first}", "the last block's first norm (ViT)")
        raise LayerError(
            f"Cannot pick a layer to explain in {type(model).__name__}, a transformer of "
            "no known family: pass the layer (for ViT-style models the last block's first "
            "norm, for Swin the final norm before pooling)."
        )
    if any("convnext" in type(m).__name__.lower() for _, m in named):
        # timm's and Hugging Face's ``stages``, torchvision's ``features``
        for path, stages in named:
            names = [n for n, _ in stages.named_children()]
            if path.rsplit(".", 1)[-1] in ("stages", "features") and names:
                return LayerChoice(f"{path}.{names[-1]}", "the last stage (ConvNeXt)")
    attention = [name for name, m in named if is_attention(m, name.rsplit(".", 1)[-1])]
    gates = tuple(name + "." for name, m in named if _is_gate_block(m))
    convs = [n for n, m in named if isinstance(m, nn.Conv2d) and not n.startswith(gates)]
    order = [n for n, _ in named]
    stem_only = bool(convs) and all(order.index(a) > order.index(convs[-1]) for a in attention)
    if attention and (stem_only or any(is_norm(m) for _, m in named)):
        # A transformer (a CNN's channel or spatial attention comes with BatchNorm, and
        # convolutions after it): its last Conv2d is likely the patch embedding, never
        # a silent pick.
        raise LayerError(
            f"Cannot pick a layer to explain in {type(model).__name__}: it has attention "
            f"({attention[0]!r}) but no block of a known family: pass the layer."
        )
    if not convs:
        raise LayerError(
            f"{type(model).__name__} has no Conv2d layer to explain by default: pass the layer."
        )
    return LayerChoice(convs[-1], "the last Conv2d")


# ----------------------------------------------------------------------- layouts


def _owners(model: Module, layer: Module) -> list[Module]:
    """The modules that hold ``layer``, innermost first, ending with ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            parts = name.split(".") if name else []
            return [model.get_submodule(".".join(parts[:i])) for i in range(len(parts), -1, -1)]
    return [model]


def _is_hugging_face(module: Module) -> bool:
    return any(kind.__name__ == "PreTrainedModel" for kind in type(module).__mro__)


def prefix_tokens(model: Module, layer: Module) -> int | None:
    """How many tokens come before the patch tokens in ``layer``'s output, if the model
    says."""
    owners = _owners(model, layer)[1:]
    for owner in owners:
        declared = getattr(owner, "num_prefix_tokens", None)  # timm
        if isinstance(declared, int) and not isinstance(declared, bool):
            return declared
        if type(owner).__name__ == "VisionTransformer" and hasattr(owner, "class_token"):
            return 1  # torchvision
    # Hugging Face: the outermost model holds the embeddings (its encoder is a
    # PreTrainedModel too, without them). timm's models that do not declare
    # ``num_prefix_tokens`` (PVT, EfficientFormer, ...) hold their tokens, if any, as
    # parameters of those names too.
    models = [owner for owner in owners if _is_hugging_face(owner) or _is_timm(owner)]
    if not models:
        return None
    count = 0
    for name, parameter in models[-1].named_parameters():
        if name.rsplit(".", 1)[-1] in _TOKEN_PARAMETERS and parameter.dim() == 3:
            count += parameter.shape[1]
    return count


def _is_timm(module: Module) -> bool:
    return type(module).__module__.startswith("timm.models.")


def _declared_grid(model: Module, layer: Module, input_size: tuple[int, int] | None) -> list:
    grids = []
    for owner in _owners(model, layer)[1:]:
        patch_embed = getattr(owner, "patch_embed", None)  # timm
        if patch_embed is None:
            continue
        dynamic = getattr(patch_embed, "dynamic_feat_size", None)
        if callable(dynamic) and input_size is not None:
            try:
                grids.append(tuple(int(s) for s in dynamic(input_size)))
            except Exception:  # a model's own helper failed: the static grid is next
                pass
        static = getattr(patch_embed, "grid_size", None)
        if static is not None:
            grids.append(tuple(int(s) for s in static))
    return grids


def token_grid(
    patches: int, input_size: tuple[int, int] | None, declared: list | tuple = ()
) -> tuple[int, int] | None:
    """The (h, w) grid of ``patches`` tokens: a declared grid that holds them, else the
    factorisation h w = patches closest to the input's aspect ratio, if its patches are
    about as tall as wide (within 1.5x); ``None`` when no grid fits."""
    for grid in declared:
        if len(grid) == 2 and grid[0] * grid[1] == patches:
            return (grid[0], grid[1])
    if patches < 1:
        return None
    height, width = input_size if input_size is not None else (1, 1)
    pairs = [(h, patches // h) for h in range(1, patches + 1) if patches % h == 0]
    h, w = min(pairs, key=lambda p: (abs(math.log(p[0] / p[1] * width / height)), p[0]))
    if input_size is not None:
        stride_h, stride_w = height / h, width / w
        if max(stride_h, stride_w) > 1.5 * min(stride_h, stride_w):
            return None
    return (h, w)


def _channel_count(module: Module) -> int | None:
    """The channels ``module`` outputs, from its own parameters or attributes."""
    for attribute in ("out_channels", "out_features", "num_features", "embed_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, tuple) and shape:
        return int(shape[-1])
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 1:
        return weight.shape[0]
    return None


def _channel_source(model: Module, layer: Module) -> Module | None:
    """The module whose channel count ``layer``'s output has: the layer, else its last
    module that has one, else the nearest one registered before it in its parents (an
    activation's: the norm or convolution before it)."""
    for module in [layer, *reversed(list(layer.modules())[1:])]:
        if _channel_count(module) is not None:
            return module
    child = layer
    for parent in _owners(model, layer)[1:]:
        siblings = list(parent.children())
        before = siblings[: next((i for i, s in enumerate(siblings) if s is child), 0)]
        for sibling in reversed(before):
            for module in [sibling, *reversed(list(sibling.modules())[1:])]:
                if _channel_count(module) is not None:
                    return module
        child = parent
    return None


def layer_channels(model: Module, layer: Module) -> int | None:
    """The channel count of ``layer``'s output as its modules say (see
    :func:`_channel_source`)."""
    source = _channel_source(model, layer)
    return None if source is None else _channel_count(source)


def _channel_axis(module: Module) -> str | None:
    """Where ``module`` keeps channels in a 4-D output: ``"first"`` (convolutions,
    BatchNorm, GroupNorm, timm's ``LayerNorm2d``, a Hugging Face LayerNorm with
    ``data_format="channels_first"``), ``"last"`` (Linear, LayerNorm), or ``None``."""
    data_format = getattr(module, "data_format", None)
    if data_format in ("channels_first", "channels_last"):
        return "first" if data_format == "channels_first" else "last"
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
        return "first"
    if isinstance(module, nn.GroupNorm) or type(module).__name__.endswith("Norm2d"):
        return "first"
    if isinstance(module, nn.Linear) or is_norm(module):
        return "last"
    return None


def _channels_last_family(model: Module, layer: Module) -> bool:
    for owner in _owners(model, layer):
        if getattr(owner, "output_fmt", None) == "NHWC":  # timm
            return True
        if type(owner).__name__ in ("SwinTransformer", "SwinTransformerV2"):
            return True
    return False


class AutoLayout:
    """``reshape_transform="auto"``: the transform read from the model for one call.

    Args:
        model: the module behind ``forward_func`` (``None`` for a plain function: then
            only the layer's own modules are read).
        layer: the layer explained.
        input_size: (H, W) of the call's image input, if it has one.
    """

    def __init__(
        self, model: Module | None, layer: Module, input_size: tuple[int, int] | None
    ) -> None:
        self.model = model if model is not None else layer
        self.layer = layer
        self.input_size = input_size

    def _fail(self, shape: tuple[int, ...], problem: str, fix: str) -> FeatureMapError:
        return FeatureMapError(
            f"reshape_transform='auto' cannot read the layout of {type(self.layer).__name__}'s "
            f"output {shape} in {type(self.model).__name__}: {problem}. Pass {fix}."
        )

    def resolve(self, shape: tuple[int, ...]) -> TokensToGrid | ChannelsLastToFirst | None:
        """The transform for a layer output of ``shape`` (N, ...): ``None`` for an
        (N, C, h, w) map.

        Raises:
            FeatureMapError: the model does not say how to read it.
        """
        source = _channel_source(self.model, self.layer)
        channels = None if source is None else _channel_count(source)
        if len(shape) == 4:
            first, last = shape[1] == channels, shape[3] == channels
            if first != last:
                return ChannelsLastToFirst() if last else None
            if first and last and source is not None:  # C == h or w: the module says
                axis = _channel_axis(source)
                if axis is not None:
                    return ChannelsLastToFirst() if axis == "last" else None
            # The channel count does not tell (unknown, or matching neither or both).
            if _channels_last_family(self.model, self.layer):
                return ChannelsLastToFirst()
            if not first:
                return None  # (N, C, h, w), the convention of CNNs
            raise self._fail(
                shape,
                "its channels could be first or last",
                "reshape_transform=None for (N, C, h, w) maps or ChannelsLastToFirst() for "
                "(N, h, w, C)",
            )
        if len(shape) == 3:
            if channels is not None and shape[1] == channels and shape[2] != channels:
                raise self._fail(
                    shape, "it is (N, C, L): a sequence, not tokens", "a layer with a 2-D map"
                )
            prefix = prefix_tokens(self.model, self.layer)
            if prefix is None:
                raise self._fail(
                    shape,
                    "the model does not say how many tokens come before the patch tokens",
                    "reshape_transform=TokensToGrid(prefix_tokens=P) (P = 1 for a class "
                    "token, 2 with DeiT's distillation token, 1 + R with R registers)",
                )
            declared = _declared_grid(self.model, self.layer, self.input_size)
            grid = token_grid(shape[1] - prefix, self.input_size, declared)
            if grid is None and prefix and token_grid(shape[1], self.input_size, declared):
                # A layer before the prefix tokens are added (the patch embedding's).
                prefix = 0
                grid = token_grid(shape[1], self.input_size, declared)
            patches = shape[1] - prefix
            if grid is None:
                raise self._fail(
                    shape,
                    f"{patches} patch tokens (after {prefix} prefix tokens) fit no grid of "
                    f"the input's {self.input_size} shape",
                    f"reshape_transform=TokensToGrid(prefix_tokens={prefix}, grid_size=(h, w))",
                )
            return TokensToGrid(prefix_tokens=prefix, grid_size=grid)
        raise self._fail(
            shape,
            f"a {len(shape)}-D output has no spatial map (pooled features, or not an image layer)",
            "a layer before the pooling: (N, C, h, w), (N, h, w, C) or tokens (N, T, C)",
        )

    def __repr__(self) -> str:
        return "AutoLayout()"


__all__ = [
    "AUTO",
    "AutoLayout",
    "LayerChoice",
    "default_layer",
    "is_attention",
    "is_norm",
    "is_transformer_block",
    "layer_channels",
    "prefix_tokens",
    "token_grid",
]
