"""LRP rules as Captum ``PropagationRule`` classes, and how any rule is applied.

Every rule here maps the relevance at a module's output to the relevance at its
inputs for one call of the module, from the values that call saw. Two rules are
added to Captum's, as FG-CAM (Qiu et al., AAAI 2024) and Montavon et al. (2017)
define them:

* :class:`ZPlusRule`, the z+ rule in the signed form FG-CAM uses for hidden
  layers: positive weights times positive inputs plus negative weights times
  negative inputs, bias left out. It extends Captum's ``Alpha1_Beta0_Rule``,
  which is the same rule for non-negative inputs.
* :class:`ZBoxRule`, the z^B rule for the input layer, with the pixel bounds
  ``low`` and ``high`` (by default each image's own minimum and maximum).

Captum's own rules (``EpsilonRule``, ``GammaRule``, ``Alpha1_Beta0_Rule``,
``IdentityRule``) work too: :func:`rule_relevance` applies them as Captum's
``LRP`` does, rewriting the module's weights with the rule's
``_manipulate_weights`` for the time of one call and restoring them afterwards.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, IdentityRule, PropagationRule
from torch import Tensor
from torch.nn import Module


def relevance_ratio(relevance: Tensor, x: Tensor) -> Tensor:
    """``relevance / x``, 0 where ``x`` is 0: relevance per unit of activation.

    Division then ``nan_to_num`` takes two passes over the tensor where a
    ``torch.where`` guard takes four, and this runs once per module call.
    """
    return torch.div(relevance, x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class EngineRule(PropagationRule):
    """A Captum propagation rule that computes its relevance directly.

    Captum's ``LRP`` applies a rule by rewriting weights, which cannot express the
    signed z+ or the z^B rule; this library's engine calls :meth:`relevance`.
    """

    @abstractmethod
    def relevance(
        self, module: Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        """Relevance of each input of one call of ``module``.

        Args:
            module: the module that was called.
            inputs: the tensors it received (detached).
            output: what it returned (detached).
            relevance: relevance at ``output``, same shape.

        Returns:
            One tensor per input, of that input's shape.
        """

    def ratio(
        self, module: Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        """:meth:`relevance` divided by each input (0 where the input is 0).

        What the engine passes on to autograd; override when it is cheaper to
        compute directly.
        """
        relevances = self.relevance(module, inputs, output, relevance)
        return tuple(relevance_ratio(r, x) for r, x in zip(relevances, inputs, strict=True))


def _single_input(inputs: Sequence[Tensor], rule: str) -> Tensor:
    if len(inputs) != 1:
        raise ValueError(f"{rule} propagates through modules with one input, got {len(inputs)}.")
    return inputs[0]


def functional_call(module: Module, parameters: dict[str, Tensor], args: tuple[Tensor, ...]) -> Any:
    """``module.forward(*args)`` with some parameters replaced for this call only.

    Unlike ``torch.func.functional_call`` it calls ``forward`` directly: the rule's
    extra evaluations must not reach the module's hooks (the user's, or a
    capture's, which would see calls that are not part of the model's pass).
    """
    saved = {name: module._parameters[name] for name in parameters}
    try:
        module._parameters.update(parameters)
        return module.forward(*args)
    finally:
        module._parameters.update(saved)


def _part_gradients(z: Tensor, parts: tuple[Tensor, ...], relevance: Tensor) -> tuple[Tensor, ...]:
    """``d z / d part`` applied to ``s = R / z``: each part's relevance per unit."""
    return torch.autograd.grad(z, parts, relevance_ratio(relevance, z.detach()))


def _summed_relevance(parts: tuple[Tensor, ...], grads: tuple[Tensor, ...]) -> Tensor:
    """``sum_p p * J_p^T s``: the relevance of the input the parts make up."""
    return sum(p.detach() * g for p, g in zip(parts, grads, strict=True))  # type: ignore[return-value]


def _zero_bias(module: Module) -> dict[str, Tensor]:
    bias = getattr(module, "bias", None)
    return {"bias": torch.zeros_like(bias)} if isinstance(bias, Tensor) else {}


def _weight(module: Module, rule: str) -> Tensor | None:
    weight = getattr(module, "weight", None)
    if weight is not None and not isinstance(weight, Tensor):
        raise TypeError(f"{rule} needs module.weight to be a tensor on {type(module).__name__}.")
    return weight


class ZPlusRule(Alpha1_Beta0_Rule, EngineRule):
    r"""Signed z+ rule (FG-CAM's rule for hidden layers), bias ignored.

    .. math::
        R_i = \sum_j \frac{x_i^+ w_{ij}^+ + x_i^- w_{ij}^-}
        {\sum_{i'} x_{i'}^+ w_{i'j}^+ + x_{i'}^- w_{i'j}^-} R_j

    Every contribution in the denominator is non-negative, so positive relevance
    stays positive and is conserved wherever the denominator is non-zero. For
    non-negative inputs (after a ReLU) it is Captum's ``Alpha1_Beta0_Rule`` with
    the bias set to zero, which is what Captum's ``LRP`` applies if given this
    rule. Modules without a ``weight`` (max- and average-pooling) pass relevance
    in proportion to their positive inputs: :math:`R_i = x_i^+ \partial_{x_i}
    f(x^+) \, R / f(x^+)`.
    """

    def __init__(self) -> None:
        super().__init__(set_bias_to_zero=True)

    def relevance(
        self, module: Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        return (_summed_relevance(*self._parts(module, inputs, relevance)),)

    def ratio(
        self, module: Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        # R_i / x_i is the gradient of the part x_i belongs to: no division needed.
        x = inputs[0]
        _, grads = self._parts(module, inputs, relevance)
        ratio = grads[0].masked_fill_(x <= 0, 0)
        if len(grads) == 2:
            ratio = ratio + grads[1].masked_fill_(x >= 0, 0)
        return (ratio,)

    def _parts(
        self, module: Module, inputs: Sequence[Tensor], relevance: Tensor
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """The positive (and negative) parts of the input and the gradients
        ``W^{+T} s`` (and ``W^{-T} s``) with ``s = R / z``."""
        x = _single_input(inputs, "ZPlusRule")
        weight = _weight(module, "ZPlusRule")
        # Inputs after a ReLU have no negative part: one pass to find out saves a
        # copy and, for weighted layers, a second convolution.
        signed = x.numel() > 0 and bool(x.min() < 0)
        positive = (x.clamp(min=0) if signed else x.detach()).requires_grad_()
        with torch.enable_grad():
            if weight is None:
                z = module.forward(positive)
                parts: tuple[Tensor, ...] = (positive,)
            else:
                bias = _zero_bias(module)
                z = functional_call(module, {"weight": weight.clamp(min=0), **bias}, (positive,))
                parts = (positive,)
                if signed:
                    negative = x.clamp(max=0).requires_grad_()
                    z = z + functional_call(
                        module, {"weight": weight.clamp(max=0), **bias}, (negative,)
                    )
                    parts = (positive, negative)
        return parts, _part_gradients(z, parts, relevance)


class ZBoxRule(EngineRule):
    r"""The z^B rule for the input layer, with pixel bounds :math:`l \le x \le h`.

    .. math::
        R_i = \sum_j \frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
        {\sum_{i'} x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-} R_j

    Args:
        low: lower bound of the input values: a float, or a tensor that
            broadcasts to the input (e.g. per channel, (C, 1, 1)). ``None`` (the
            default, FG-CAM's choice) takes each example's global minimum over all
            channels and pixels.
        high: upper bound, likewise; ``None`` takes each example's maximum.

    Captum's ``LRP`` cannot apply this rule (it only rewrites weights); use it
    with this library's FG-CAM and LRP classes.
    """

    def __init__(self, low: float | Tensor | None = None, high: float | Tensor | None = None):
        self.low = low
        self.high = high

    def _manipulate_weights(self, module: Module, inputs: Any, outputs: Any) -> None:
        raise NotImplementedError(
            "ZBoxRule cannot be applied by rewriting weights, which is all Captum's LRP "
            "does; use captum_fdcam's FGCam or PropagationLRP."
        )

    @staticmethod
    def _bound(value: float | Tensor | None, x: Tensor, reduce: str) -> Tensor:
        if value is None:
            flat = x.reshape(x.shape[0], -1)
            extreme = flat.amin(dim=1) if reduce == "min" else flat.amax(dim=1)
            return extreme.reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x)
        return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand_as(x)

    def relevance(
        self, module: Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        x = _single_input(inputs, "ZBoxRule")
        weight = _weight(module, "ZBoxRule")
        if weight is None:
            raise TypeError(f"ZBoxRule needs a module with weights, got {type(module).__name__}.")
        low = self._bound(self.low, x, "min").contiguous().requires_grad_()
        high = self._bound(self.high, x, "max").contiguous().requires_grad_()
        data = x.detach().requires_grad_()
        bias = _zero_bias(module)
        with torch.enable_grad():
            z = (
                functional_call(module, {"weight": weight, **bias}, (data,))
                - functional_call(module, {"weight": weight.clamp(min=0), **bias}, (low,))
                - functional_call(module, {"weight": weight.clamp(max=0), **bias}, (high,))
            )
        parts = (data, low, high)
        return (_summed_relevance(parts, _part_gradients(z, parts, relevance)),)


@contextmanager
def restored_parameters(module: Module) -> Iterator[None]:
    """Puts back every parameter's data, however a Captum rule rewrote it."""
    saved = [(p, p.data) for p in module.parameters()]
    try:
        yield
    finally:
        for parameter, data in saved:
            parameter.data = data


def rule_relevance(
    rule: PropagationRule,
    module: Module,
    inputs: Sequence[Tensor],
    output: Tensor,
    relevance: Tensor,
) -> tuple[Tensor, ...]:
    """Relevance at the inputs of one call of ``module`` under ``rule``.

    :class:`EngineRule` subclasses compute it themselves. Captum's
    ``IdentityRule`` passes it unchanged (inputs and output of equal shape).
    Captum's other rules are applied as Captum's ``LRP`` applies them:
    ``R_in = x * J^T (R / (z + eps * sign(z)))`` with ``z`` the module's output
    after the rule's ``_manipulate_weights``; the weights are restored afterwards.
    """
    if isinstance(rule, EngineRule):
        return rule.relevance(module, inputs, output, relevance)
    if isinstance(rule, IdentityRule):
        return (_identity_input(module, inputs, relevance),)
    grads = _captum_rule_gradients(rule, module, inputs, output, relevance)
    return tuple(x * g for x, g in zip(inputs, grads, strict=True))


def rule_ratio(
    rule: PropagationRule,
    module: Module,
    inputs: Sequence[Tensor],
    output: Tensor,
    relevance: Tensor,
) -> tuple[Tensor, ...]:
    """:func:`rule_relevance` divided by each input (0 where the input is 0)."""
    if isinstance(rule, EngineRule):
        return rule.ratio(module, inputs, output, relevance)
    if isinstance(rule, IdentityRule):
        return (relevance_ratio(_identity_input(module, inputs, relevance), inputs[0]),)
    return _captum_rule_gradients(rule, module, inputs, output, relevance)


def _identity_input(module: Module, inputs: Sequence[Tensor], relevance: Tensor) -> Tensor:
    if len(inputs) != 1 or inputs[0].shape != relevance.shape:
        raise ValueError(
            f"IdentityRule needs one input shaped like the output on {type(module).__name__}."
        )
    return relevance


def _captum_rule_gradients(
    rule: PropagationRule,
    module: Module,
    inputs: Sequence[Tensor],
    output: Tensor,
    relevance: Tensor,
) -> tuple[Tensor, ...]:
    """``J^T (R / (z + eps * sign(z)))`` with the rule's weights, which are then restored."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    with restored_parameters(module), torch.enable_grad():
        rule._manipulate_weights(module, tuple(leaves), output)
        z = module.forward(*leaves)
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        denominator = z.detach() + sign * rule.STABILITY_FACTOR
        return torch.autograd.grad(z, leaves, relevance / denominator)
