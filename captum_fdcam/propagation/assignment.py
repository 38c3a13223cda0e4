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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from captum.attr._utils.lrp_rules import IdentityRule, PropagationRule
from torch import nn
from torch.nn import Module

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


def _squeeze_excitation() -> tuple[type[Module], ...]:
    try:
        from torchvision.ops import SqueezeExcitation
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (SqueezeExcitation,)


def default_rules() -> dict[type[Module], RuleSpec]:
    """FG-CAM's rules by layer type (the paper's Sec. "FG-CAM", step 2).

    Convolutions and linear layers: signed z+; pooling: z+ on the positive
    inputs; BatchNorm, activations and dropout: relevance passed unchanged
    (Captum's ``IdentityRule``). A squeeze-and-excitation block passes relevance
    unchanged as a whole: its gate is treated as a constant.
    """
    table: dict[type[Module], RuleSpec] = {}
    for kind in _WEIGHTED + _POOLS:
        table[kind] = ZPlusRule
    for kind in _ACTIVATIONS + _NORMS_AND_DROPOUT + _squeeze_excitation():
        table[kind] = IdentityRule
    return table


def _permute() -> tuple[type[Module], ...]:
    try:
        from torchvision.ops.misc import Permute
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (Permute,)


#: Modules that only copy, reshape or zero-pad values: relevance follows the values.
PASSTHROUGH: tuple[type[Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    *_permute(),
)


def _window_attention() -> tuple[type[Module], ...]:
    try:
        # V2 subclasses it.
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (ShiftedWindowAttention,)


#: Attention: ``nn.MultiheadAttention`` is not a leaf module (its ``out_proj`` is
#: never called as a module), so without this check the engine would pass
#: relevance through it by plain gradients, silently.
ATTENTION: tuple[type[Module], ...] = (nn.MultiheadAttention, *_window_attention())
#: Normalisations by a statistic of the same input (per token or per group).
DATA_DEPENDENT_NORMS: tuple[type[Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

_NO_RULE = "which no rule here (z+, z^B, Captum's weight-rewriting rules) propagates through"
_TRANSFORMER_LRP = (
    "Transformer LRP (Chefer et al., CVPR 2021; AttnLRP, Achtibat et al., ICML 2024) "
    "needs dedicated rules for attention and LayerNorm, which are not implemented here; "
    "passing relevance by their gradients instead would not be LRP. Explain such a "
    "model with a CAM at one of its layers, or give the module a rule yourself "
    "(module.rule) if you accept what that rule means there."
)


def unsupported_reason(module: Module) -> str | None:
    """Why no default rule can propagate through ``module``, or ``None``."""
    if isinstance(module, ATTENTION):
        return (
            f"attention computes softmax(Q K^T) V, a product of two activations, "
            f"{_NO_RULE}. {_TRANSFORMER_LRP}"
        )
    if isinstance(module, DATA_DEPENDENT_NORMS):
        return (
            f"{type(module).__name__} divides by a standard deviation (or RMS) computed "
            f"from its own input, {_NO_RULE}. {_TRANSFORMER_LRP}"
        )
    return None


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
    """

    def __init__(
        self,
        rules: Mapping[Module | type[Module], RuleSpec] | None = None,
        input_rule: PropagationRule | None = None,
    ) -> None:
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
        for kind in type(module).__mro__:
            if kind in self._by_type:
                return self._by_type[kind]
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
        if receives_input and self.input_rule is not None and _has_weight(module):
            return self.input_rule
        return None if spec is None else _make(spec)


def _has_weight(module: Module) -> bool:
    return getattr(module, "weight", None) is not None


__all__ = [
    "ATTENTION",
    "DATA_DEPENDENT_NORMS",
    "PASSTHROUGH",
    "RuleAssignment",
    "RuleSpec",
    "ZBoxRule",
    "default_rules",
    "unsupported_reason",
]
