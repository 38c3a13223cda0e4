"""Which rule each module gets: defaults per layer type, user overrides.

Kept apart from the rules themselves (as Zennit keeps its composites apart from
its rules). The order of precedence, highest first:

1. a ``rule`` attribute on the module, Captum's convention (``model.conv1.rule =
   EpsilonRule()``), also on a composite module, which then propagates as a whole;
2. the ``rules`` mapping given to the attribution class, by module instance;
3. for a module with weights that receives the model's input directly, the input
   rule (z^B by default, as in FG-CAM);
4. by type: the ``rules`` mapping's types, then the defaults below, looked up
   along the module's class hierarchy, so subclasses (EfficientNet's
   ``Conv2dStaticSamePadding``) get their base's rule.

Modules without a rule that only move values around (``Flatten``, zero padding,
``Identity``, torchvision's ``Permute``) let relevance follow them unchanged; any
other module without a rule is an error naming it, never a silent guess. So are
attention and LayerNorm-style modules (:func:`unsupported_reason`), composite or
not: no rule here propagates through them.

Modules of timm and Hugging Face ``transformers`` (squeeze-and-excitation blocks,
activation, pooling and norm-with-activation wrappers) get the rule of what they
compute. Both packages are optional: their classes are looked up among the modules
already imported (a model holding one has imported it), never imported here.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping

from captum.attr._utils.lrp_rules import IdentityRule, PropagationRule
from torch import nn
from torch.nn import Module

from captum_fdcam._core.validation import layer_name
from captum_fdcam.propagation.modes import (
    AttentionMode,
    AttentionRule,
    ContextRule,
    NormRule,
    ProductRule,
)
from captum_fdcam.propagation.rules import ZBoxRule, ZPlusRule

#: A rule, or a class or factory that makes one per module.
RuleSpec = PropagationRule | Callable[[], PropagationRule]

_ACTIVATIONS: tuple[type[Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
)
_POOLS: tuple[type[Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_WEIGHTED: tuple[type[Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS_AND_DROPOUT: tuple[type[Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)


#: Where optional classes live: (module, class names) pairs.
ClassTable = tuple[tuple[str, tuple[str, ...]], ...]

#: Blocks that return their input times a gate computed from that input, ``x * g(x)``
#: (squeeze-and-excitation and its relatives). With the gate held constant the block
#: is a diagonal linear map, through which relevance passes unchanged: each gets
#: ``IdentityRule`` as a whole. ``IdentityRule`` on the gate's activation instead would
#: let relevance into both factors of the product, and the gate's share back to the
#: input: up to twice the relevance at every block, compounding over the network.
GATED_BLOCKS: ClassTable = (
    ("torchvision.ops.misc", ("SqueezeExcitation",)),
    # EfficientNet, MobileNetV3, MixNet, GhostNet, LCNet.
    ("timm.models._efficientnet_blocks", ("SqueezeExcite",)),
    # RegNetY/Z, SE-ResNet(X), ReXNet ('se'); VoVNet ('ese').
    ("timm.layers.squeeze_excite", ("SEModule", "EffectiveSEModule", "SqueezeExciteCl")),
    ("timm.models.senet", ("SEModule",)),  # the legacy SE-ResNets
    ("timm.layers.eca", ("EcaModule", "CecaModule")),
    ("timm.layers.gather_excite", ("GatherExcite",)),
    # CBAM's two halves (LightChannelAttn subclasses ChannelAttn): CbamModule
    # chains them in plain code, which relevance follows.
    ("timm.layers.cbam", ("ChannelAttn", "SpatialAttn", "LightSpatialAttn")),
    # x * a_h * a_w; with their optional skip, x * (1 + gate): a gate all the same.
    (
        "timm.layers.coord_attn",
        ("CoordAttn", "SimpleCoordAttn", "EfficientLocalAttn", "StripAttn"),
    ),
    ("transformers.models.efficientnet.modeling_efficientnet", ("EfficientNetSqueezeExciteLayer",)),
    ("transformers.models.align.modeling_align", ("AlignVisionSqueezeExciteLayer",)),
    ("transformers.models.regnet.modeling_regnet", ("RegNetSELayer",)),
    ("transformers.models.pp_lcnet.modeling_pp_lcnet", ("PPLCNetSqueezeExcitationModule",)),
    ("transformers.models.pp_lcnet_v3.modeling_pp_lcnet_v3", ("PPLCNetV3SqueezeExcitationModule",)),
    ("transformers.models.pp_lcnet_v4.modeling_pp_lcnet_v4", ("PPLCNetV4SqueezeExcitationModule",)),
)
#: Elementwise activations of timm and transformers: ``IdentityRule``, as torch's.
#: (Their sigmoid and tanh, like torch's, have none: they are gates, see above.)
OPTIONAL_ACTIVATIONS: ClassTable = (
    (
        "timm.layers.activations",
        ("Swish", "Mish", "HardSwish", "HardMish", "GELU", "GELUTanh", "QuickGELU"),
    ),
    ("timm.layers.activations_me", ("SwishMe", "MishMe", "HardSwishMe", "HardMishMe")),
    (
        "transformers.activations",
        (
            "GELUActivation",
            "GELUTanh",
            "NewGELUActivation",
            "FastGELUActivation",
            "QuickGELUActivation",
            "ClippedGELUActivation",
            "AccurateGELUActivation",
            "SiLUActivation",
            "MishActivation",
            "LinearActivation",
        ),
    ),
)
#: Gated MLPs, ``act(gate) * up``: :class:`~captum_fdcam.propagation.ProductRule`, the
#: product's relevance split evenly between its two factors (AttnLRP; LXT).
GATED_PRODUCTS: ClassTable = (("timm.layers.mlp", ("GluMlp", "SwiGLU", "SwiGLUPacked")),)
#: BatchNorm with its statistics frozen (and timm's with an activation inside, like
#: ``BatchNormAct2d``, a BatchNorm2d subclass), stochastic depth and DropBlock (the
#: identity in eval mode): ``IdentityRule``, as BatchNorm and dropout.
OPTIONAL_NORMS_AND_DROPOUT: ClassTable = (
    ("torchvision.ops.misc", ("FrozenBatchNorm2d",)),
    ("torchvision.ops.stochastic_depth", ("StochasticDepth",)),  # Swin's, ConvNeXt's
    ("timm.layers.norm_act", ("FrozenBatchNormAct2d",)),
    ("timm.layers.drop", ("DropPath", "DropBlock2d")),
)
#: timm's global pooling (mean, max, their average or both concatenated): like torch's
#: pooling, z+ on the positive inputs. Its ``SelectAdaptivePool2d`` wraps one of these
#: and a ``Flatten``, which relevance follows.
OPTIONAL_POOLS: ClassTable = (
    (
        "timm.layers.adaptive_avgmax_pool",
        (
            "FastAdaptiveAvgPool",
            "FastAdaptiveMaxPool",
            "FastAdaptiveAvgMaxPool",
            "FastAdaptiveCatAvgMaxPool",
            "AdaptiveAvgMaxPool2d",
            "AdaptiveCatAvgMaxPool2d",
        ),
    ),
)


def loaded_classes(table: ClassTable) -> tuple[type[Module], ...]:
    """The module classes of ``table`` whose modules are imported already.

    Nothing is imported: a model holding an instance of one of these classes has
    imported its module, timm and transformers need not be installed, and importing
    transformers takes seconds. A name that a version lacks is skipped.
    """
    found: list[type[Module]] = []
    for module_name, names in table:
        module = sys.modules.get(module_name)
        for name in names:
            kind = getattr(module, name, None)
            if isinstance(kind, type) and issubclass(kind, Module):
                found.append(kind)
    return tuple(found)


def default_rules() -> dict[type[Module], RuleSpec]:
    """FG-CAM's rules by layer type (the paper's Sec. "FG-CAM", step 2).

    Convolutions and linear layers: signed z+; pooling: z+ on the positive
    inputs; BatchNorm, activations and dropout: relevance passed unchanged
    (Captum's ``IdentityRule``). A squeeze-and-excitation block or another gate
    block (torchvision's, timm's, transformers': ``assignment.GATED_BLOCKS``) passes
    relevance unchanged as a whole: its gate is treated as a constant. timm's and
    transformers' classes are included once their modules are imported.

    Transformers: LayerNorm, GroupNorm and RMSNorm (and their subclasses) get
    :class:`~captum_fdcam.propagation.NormRule` (the standard deviation held constant);
    attention modules (``nn.MultiheadAttention``, torchvision's Swin attention, and any
    module whose class is named for attention, as timm's and Hugging Face's are) get
    :class:`~captum_fdcam.propagation.AttentionRule` (CP-LRP by default); gated MLPs
    (timm's ``GluMlp``, ``SwiGLU``: ``assignment.GATED_PRODUCTS``) get
    :class:`~captum_fdcam.propagation.ProductRule` (the product split evenly).
    """
    table: dict[type[Module], RuleSpec] = {}
    for kind in _WEIGHTED + _POOLS + loaded_classes(OPTIONAL_POOLS):
        table[kind] = ZPlusRule
    for kind in DATA_DEPENDENT_NORMS:
        table[kind] = NormRule
    for kind in loaded_classes(GATED_PRODUCTS):
        table[kind] = ProductRule
    for kind in (
        *_ACTIVATIONS,
        *_NORMS_AND_DROPOUT,
        *loaded_classes(OPTIONAL_ACTIVATIONS),
        *loaded_classes(OPTIONAL_NORMS_AND_DROPOUT),
        *loaded_classes(GATED_BLOCKS),
    ):
        table[kind] = IdentityRule
    return table


def _permute() -> tuple[type[Module], ...]:
    try:
        from torchvision.ops.misc import Permute
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (Permute,)


#: Leaf modules (without children) that only copy, reshape or zero-pad values:
#: relevance follows the values.
PASSTHROUGH: tuple[type[Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    # An empty one is the identity (GhostNet's shortcut); one with children is no leaf.
    nn.Sequential,
    *_permute(),
    # Inside an attention module its AttentionRule acts on the softmax; anywhere else
    # the engine's guard refuses it (a softmax outside attention has no rule here).
    nn.Softmax,
)


def _window_attention() -> tuple[type[Module], ...]:
    try:
        # V2 subclasses it.
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (ShiftedWindowAttention,)


#: Attention modules of torch and torchvision (``nn.MultiheadAttention`` computes its
#: projections in ``F.multi_head_attention_forward``, no child module is called); timm's
#: and Hugging Face's are recognised by their class names (:func:`_named_attention`).
ATTENTION: tuple[type[Module], ...] = (nn.MultiheadAttention, *_window_attention())
#: Normalisations by a statistic of the same input (per token or per group).
DATA_DEPENDENT_NORMS: tuple[type[Module], ...] = tuple(
    kind for kind in (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)) if kind
)

_NO_RULE = "which no rule here (z+, z^B, Captum's weight-rewriting rules) propagates through"
_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)


def _named_attention(module: Module) -> bool:
    """An attention module of timm or Hugging Face (``Attention``, ``WindowAttention``,
    ``ViTAttention``, ``SwinSelfAttention``...): a class named so that computes
    something of its own (a projection)."""
    return bool(_ATTENTION_NAME.search(type(module).__name__)) and any(
        isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) for m in module.modules()
    )


#: Convolutions that standardise their weights in ``forward``: the rules' rewritten
#: weights (z+, z^B, Captum's) would be standardised again, which is no rule at all
#: (half of the relevance of timm's NF-ResNet stem came out negative). No type rule
#: reaches them from ``Conv2d``.
WEIGHT_STANDARDISED: ClassTable = (
    (
        "timm.layers.std_conv",
        ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"),
    ),
    ("transformers.models.bit.modeling_bit", ("WeightStandardizedConv2d",)),
)
#: Blocks that weigh their branches by a softmax of their own input: attention over
#: kernels, whose product of activations no rule here propagates through (plain
#: gradients through the softmax would send relevance into the weights' branch too).
KERNEL_ATTENTION: ClassTable = (
    ("timm.layers.selective_kernel", ("SelectiveKernel", "SelectiveKernelAttn")),
    ("timm.layers.split_attn", ("SplitAttn", "RadixSoftmax")),
)


def unsupported_reason(module: Module) -> str | None:
    """Why no default rule can propagate through ``module``, or ``None``."""
    if isinstance(module, loaded_classes(WEIGHT_STANDARDISED)):
        return (
            f"{type(module).__name__} standardises its weights in its forward pass, so the "
            "weights a rule rewrites (z+, z^B, Captum's) would be standardised again: "
            "what it computed would be no LRP rule. Give it a rule of your own "
            "(rules={type: rule}) that computes with the standardised weights."
        )
    if isinstance(module, loaded_classes(KERNEL_ATTENTION)):
        return (
            f"{type(module).__name__} weighs its branches by a softmax of its own input "
            f"(attention over kernels), a product of two activations, {_NO_RULE}."
        )
    return None


#: Modules that only hold others: the block a gate belongs to is above them.
_CONTAINERS: tuple[type[Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def enclosing_block(model: Module, module: Module) -> tuple[str, Module] | None:
    """The nearest module above ``module`` that is not a plain container, with its
    qualified name; ``None`` when that is the model itself (or ``module`` is not in it).

    For a module held by several parents, the first in ``model.named_modules()``.
    """
    parents: dict[int, tuple[str, Module]] = {}
    for name, parent in model.named_modules():
        for child in parent.children():
            parents.setdefault(id(child), (name, parent))
    current = module
    while id(current) in parents:
        name, parent = parents[id(current)]
        if parent is model:
            return None
        if type(parent) not in _CONTAINERS:
            return name, parent
        current = parent
    return None


def _is_gate_activation(module: Module) -> bool:
    # torch's Sigmoid, Hardsigmoid and Tanh, timm's Sigmoid, HardSigmoid(Me) and Tanh.
    name = type(module).__name__.lower()
    return "sigmoid" in name or "tanh" in name


def missing_rule_message(model: Module, module: Module) -> str:
    """The error for a leaf ``module`` of ``model`` that has no rule.

    Inside a block this library does not know, the message names the block: a sigmoid
    there is most likely a gate, which the block as a whole should hold constant.
    """
    name = layer_name(model, module)
    found = enclosing_block(model, module)
    if found is None:
        return (
            f"No LRP rule for {name}. Give it one, the way Captum's LRP does "
            "(module.rule = IdentityRule() passes relevance unchanged), or pass "
            "rules={type: rule} to the attribution class."
        )
    block_name, block = found
    kind = type(block).__name__
    where = f"'{block_name}' ({kind})"
    if _is_gate_activation(module):
        return (
            f"No LRP rule for {name}, a gate inside {where}. If {kind} multiplies its "
            "input by this gate, as squeeze-and-excitation does, hold the gate constant "
            "and pass relevance through the whole block unchanged, as this library does "
            "for torchvision's SqueezeExcitation and timm's SE blocks: pass "
            f"rules={{{kind}: IdentityRule}} (Captum's IdentityRule) to the attribution "
            f"class. Do not give the {type(module).__name__} itself IdentityRule: "
            "relevance would then flow into both factors of the product input * gate "
            "and, through the gate's branch, back to the input: up to twice as much at "
            "every such block."
        )
    return (
        f"No LRP rule for {name}, inside {where}. Give it one, the way Captum's LRP "
        "does (module.rule = IdentityRule() passes relevance unchanged, right for an "
        "elementwise activation), or pass rules={type: rule} to the attribution class. "
        f"If it computes a gate that {kind} multiplies its input by, give the block "
        f"the rule instead, rules={{{kind}: IdentityRule}}: IdentityRule on the gate "
        "itself sends relevance into both factors of the product, up to twice as much."
    )


def _make(spec: RuleSpec) -> PropagationRule:
    if isinstance(spec, PropagationRule):
        return spec
    rule = spec()
    if not isinstance(rule, PropagationRule):
        raise TypeError(f"A rule factory returned {type(rule).__name__}, not a PropagationRule.")
    return rule


class RuleAssignment:
    """Resolves the rule of each module of a model, once per module.

    Args:
        rules: overrides by module instance or by type (a rule, or a rule class
            or factory called once per module).
        input_rule: rule of the modules that receive the model's input directly;
            ``None`` gives them the rule of their type. Default: ``ZBoxRule()``.
        attention: the mode of the attention modules' default
            :class:`~captum_fdcam.propagation.AttentionRule`: ``"cp"`` (attention
            weights held constant) or ``"attnlrp"``.
    """

    def __init__(
        self,
        rules: Mapping[Module | type[Module], RuleSpec] | None = None,
        input_rule: PropagationRule | None = None,
        attention: AttentionMode = "cp",
    ) -> None:
        # Checked here: a wrong mode should fail before the forward pass.
        AttentionRule(attention)
        self._attention: RuleSpec = functools.partial(AttentionRule, attention)
        self._by_module: dict[int, RuleSpec] = {}
        self._by_type = default_rules()
        for key, spec in (rules or {}).items():
            if isinstance(key, Module):
                self._by_module[id(key)] = spec
            elif isinstance(key, type) and issubclass(key, Module):
                self._by_type[key] = spec
            else:
                raise TypeError(
                    f"rules keys must be modules or module types, got {type(key).__name__}."
                )
        self.input_rule = input_rule
        self._cache: dict[tuple[int, bool], PropagationRule | None] = {}
        self._has_rule: dict[int, bool] = {}

    def rule(self, module: Module, receives_input: bool) -> PropagationRule | None:
        """The module's rule; ``None`` when relevance simply follows its values."""
        key = (id(module), receives_input)
        if key not in self._cache:
            self._cache[key] = self._resolve(module, receives_input)
        return self._cache[key]

    def has_rule(self, module: Module) -> bool:
        """Whether the module propagates through a rule (before knowing its inputs)."""
        if getattr(module, "rule", None) is not None:
            return True  # _resolve checks that it is a PropagationRule
        key = id(module)
        if key not in self._has_rule:
            self._has_rule[key] = key in self._by_module or self._type_spec(module) is not None
        return self._has_rule[key]

    def _type_spec(self, module: Module) -> RuleSpec | None:
        stops = loaded_classes(WEIGHT_STANDARDISED)
        for kind in type(module).__mro__:
            if kind in self._by_type:
                return self._by_type[kind]
            if kind in stops:
                return None  # not Conv2d's rule: see WEIGHT_STANDARDISED
        if isinstance(module, ATTENTION) or (
            _named_attention(module) and not isinstance(module, loaded_classes(KERNEL_ATTENTION))
        ):
            return self._attention
        return None

    def _resolve(self, module: Module, receives_input: bool) -> PropagationRule | None:
        own = getattr(module, "rule", None)
        if own is not None:
            if not isinstance(own, PropagationRule):
                raise TypeError(
                    f"{type(module).__name__}.rule is {type(own).__name__}, not a Captum "
                    "PropagationRule."
                )
            return own
        if id(module) in self._by_module:
            return _make(self._by_module[id(module)])
        spec = self._type_spec(module)
        rule = None if spec is None else _make(spec)
        if (
            receives_input
            and self.input_rule is not None
            and _has_weight(module)
            and not isinstance(rule, ContextRule)  # a LayerNorm on the input keeps its rule
        ):
            return self.input_rule
        return rule


def _has_weight(module: Module) -> bool:
    return getattr(module, "weight", None) is not None


__all__ = [
    "ATTENTION",
    "DATA_DEPENDENT_NORMS",
    "GATED_BLOCKS",
    "GATED_PRODUCTS",
    "KERNEL_ATTENTION",
    "PASSTHROUGH",
    "WEIGHT_STANDARDISED",
    "RuleAssignment",
    "RuleSpec",
    "ZBoxRule",
    "default_rules",
    "enclosing_block",
    "loaded_classes",
    "missing_rule_message",
    "unsupported_reason",
]
