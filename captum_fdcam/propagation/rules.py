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
``LRP`` does, with the weights the rule's ``_manipulate_weights`` writes, on a
copy of the module: the model's own weights never change.

Both rules here also work inside Captum's own ``LRP`` (and ``LayerLRP``), set as
``module.rule``: :class:`EngineRule` replaces the hooks Captum registers, so that
Captum's weight rewriting, which cannot express them, is never used; see
:meth:`EngineRule.forward_hook`.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from captum._utils.common import _format_tensor_into_tuples
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, IdentityRule, PropagationRule
from torch import Tensor
from torch.nn import Module
from torch.utils.hooks import RemovableHandle

from captum_fdcam._core.replay import without_stand_in


def relevance_ratio(relevance: Tensor, x: Tensor) -> Tensor:
    """``relevance / x``, 0 where ``x`` is 0: relevance per unit of activation.

    Division then ``nan_to_num`` takes two passes over the tensor where a
    ``torch.where`` guard takes four, and this runs once per module call.
    """
    return torch.div(relevance, x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class EngineRule(PropagationRule):
    """A Captum propagation rule that computes its relevance directly.

    Captum's ``LRP`` applies a rule by rewriting weights, which cannot express the
    signed z+ or the z^B rule. This library's engine calls :meth:`relevance`;
    Captum's ``LRP`` and ``LayerLRP`` call the hooks below, which route the
    module's output through :meth:`relevance` too and leave the weights alone.
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

    # ------------------------------------------------------------ Captum's LRP

    def _manipulate_weights(self, module: Module, inputs: Any, outputs: Any) -> None:
        # Captum's LRP never calls this (forward_hook_weights is overridden); anyone
        # else applying rules by rewriting weights would get plain gradient x input.
        raise NotImplementedError(
            f"{type(self).__name__} computes relevance itself and cannot be applied by "
            "rewriting weights. Captum's LRP and LayerLRP apply it through its own "
            "forward_hook; elsewhere call its relevance() method."
        )

    def forward_hook_weights(self, module: Module, inputs: Any, outputs: Any) -> None:
        """Captum's first forward pass: keeps the activations, rewrites no weight."""
        device = inputs[0].device if isinstance(inputs, tuple) else inputs.device
        activations = module.activations  # type: ignore[union-attr]
        if device in activations:
            raise RuntimeError(
                f"Module {module} is being used more than once in the network, which is "
                "not supported by LRP. Please ensure that module is being used only once "
                "in the network."
            )
        activations[device] = tuple(x.data for x in _format_tensor_into_tuples(inputs))

    def forward_hook(self, module: Module, inputs: Any, outputs: Any) -> Tensor:
        """Captum's second forward pass: the output, routed through this rule.

        Captum carries the relevance R itself as the gradient between layers. Its
        own rules divide R by the output, let autograd apply the (rewritten)
        module's Jacobian, and multiply by the input in a hook on the input
        tensor. Here the output's gradient (R) goes to :meth:`relevance` instead,
        and autograd receives ``R_in / x``; the input hook, registered once per
        tensor as Captum does and shared with Captum's rules, multiplies by x.
        Relevance at inputs equal to 0 (z^B gives some to them) cannot pass as
        ``R_in / x``: it is added back by the same hook.
        """
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"{type(self).__name__} in Captum's LRP needs a module returning one "
                f"tensor; {type(module).__name__} returns {type(outputs).__name__}."
            )
        args = tuple(x for x in _format_tensor_into_tuples(inputs) if isinstance(x, Tensor))
        self._has_single_input = len(args) == 1
        handles: list[RemovableHandle] = []
        self._handle_input_hooks = handles
        carriers = tuple(_input_carrier(x, handles) for x in args)
        call = _CaptumCall(self, module, outputs.detach(), carriers)
        return _CaptumRuleFunction.apply(call, *args)


class _ZeroInputRelevance:
    """Relevance of the entries of one tensor equal to 0, added after ``x * grad``.

    Lives on the tensor (shared by every rule of this library that reads it) and
    is its Captum input hook: ``grad * x`` as Captum's, plus what the rules left.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.pending: Tensor | None = None

    def add(self, relevance: Tensor) -> None:
        self.pending = relevance if self.pending is None else self.pending + relevance

    def __call__(self, grad: Tensor) -> Tensor:
        relevance = grad * self.x
        if self.pending is not None:
            relevance = relevance + self.pending
            self.pending = None
        # Captum's protocol: a nonlinear layer (ReLU) that produced this tensor
        # passes on ``replace_out`` as the relevance of its input.
        grad.replace_out = relevance  # type: ignore[attr-defined]
        return relevance


_CARRIER = "_captum_fdcam_zero_input_relevance"


def _input_carrier(x: Tensor, handles: list[RemovableHandle]) -> _ZeroInputRelevance | None:
    """The tensor's input hook if this library registered it (registering it first),
    ``None`` where a Captum rule's hook came first or no gradient reaches ``x``."""
    carrier = getattr(x, _CARRIER, None)
    if carrier is not None or hasattr(x, "hook_registered") or not x.requires_grad:
        return carrier
    carrier = _ZeroInputRelevance(x.detach())
    handles.append(x.register_hook(carrier))
    setattr(x, _CARRIER, carrier)
    # Captum's own rules skip tensors marked so: one multiplication by x per tensor.
    x.hook_registered = True  # type: ignore[attr-defined]
    return carrier


class _CaptumCall:
    """One call of a module whose :class:`EngineRule` Captum's ``LRP`` applies."""

    def __init__(
        self,
        rule: EngineRule,
        module: Module,
        output: Tensor,
        carriers: tuple[_ZeroInputRelevance | None, ...],
    ) -> None:
        self.rule = rule
        self.module = module
        self.output = output
        self.carriers = carriers


class _CaptumRuleFunction(torch.autograd.Function):
    """Identity in the forward pass; ``R_out -> R_in / x`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, call: _CaptumCall, *inputs: Tensor) -> Tensor:
        ctx.call = call
        # Saved for autograd's check that no later in-place operation changed them.
        ctx.save_for_backward(*inputs)
        return call.output.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        call: _CaptumCall = ctx.call
        inputs = tuple(x.detach() for x in ctx.saved_tensors)
        rule, module = call.rule, call.module
        relevances = rule.relevance(module, inputs, call.output, grad_output)
        ratios = []
        for i, (x, r, carrier) in enumerate(zip(inputs, relevances, call.carriers, strict=True)):
            ratios.append(relevance_ratio(r, x))
            if not ctx.needs_input_grad[i + 1]:
                continue
            at_zero = r.masked_fill(x != 0, 0)
            if not bool(at_zero.any()):
                continue
            if carrier is None:
                raise RuntimeError(
                    f"{type(rule).__name__} on {type(module).__name__} gives relevance to "
                    f"entries of its input {i} that are 0, and Captum's LRP cannot carry "
                    "it there: that tensor is also the input of a layer with one of "
                    "Captum's rules, whose hook multiplies the gradient by the input. "
                    "Give that layer a rule of this library, or use "
                    "captum_fdcam.PropagationLRP."
                )
            carrier.add(at_zero)
        _record_for_layer_lrp(rule, grad_output, relevances)
        return (None, *ratios)


def _record_for_layer_lrp(
    rule: EngineRule, relevance_output: Tensor, relevance_input: tuple[Tensor, ...]
) -> None:
    """What Captum's ``LayerLRP`` reads from a layer's rule after the backward pass."""
    # Captum gives each rule of a run its own dictionaries; the class's shared
    # ones must not keep tensors alive.
    state = vars(rule)
    if "relevance_output" in state:
        state["relevance_output"][relevance_output.device] = relevance_output.detach()
    if "relevance_input" in state:
        device = relevance_output.device
        if len(relevance_input) == 1:
            state["relevance_input"][device] = relevance_input[0].detach()
        else:
            state["relevance_input"][device].extend(r.detach() for r in relevance_input)


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
    return _detached_copy(module, parameters).forward(*args)


def _detached_copy(module: Module, parameters: dict[str, Any]) -> Module:
    """A shallow copy of ``module`` whose parameters are ``parameters`` where given.

    The module itself is never touched, not even for the time of one call: another
    thread may be running the same model (plain inference beside an attribution) and
    must see its own weights. Submodules are shared, as the forward pass shares them.
    """
    # A module a replay (Ablation-CAM, FD-CAM) skips on another thread has a stand-in
    # forward that answers for the original: the copy computes with its own parameters.
    clone = without_stand_in(copy.copy(module))
    clone._parameters = {**module._parameters, **parameters}
    return clone


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


class ZPlusRule(EngineRule, Alpha1_Beta0_Rule):
    r"""Signed z+ rule (FG-CAM's rule for hidden layers), bias ignored.

    .. math::
        R_i = \sum_j \frac{x_i^+ w_{ij}^+ + x_i^- w_{ij}^-}
        {\sum_{i'} x_{i'}^+ w_{i'j}^+ + x_{i'}^- w_{i'j}^-} R_j

    Every contribution in the denominator is non-negative, so positive relevance
    stays positive and is conserved wherever the denominator is non-zero. A neuron with
    no positive contribution at all (the denominator 0: every input opposes it, as a
    window of negative LayerNorm outputs in an average pooling) would drop its
    relevance; where the input is signed, its negative contributions share it instead,
    :math:`R_i = (x_i^+ w_{ij}^- + x_i^- w_{ij}^+) / z_j^- \, R_j`, so that relevance is
    conserved wherever any contribution is non-zero (after a ReLU such a neuron keeps
    the paper's convention: it passes nothing on). For
    non-negative inputs (after a ReLU) it is Captum's ``Alpha1_Beta0_Rule`` with
    the bias set to zero; in Captum's ``LRP`` this rule applies the signed form
    too (through ``EngineRule.forward_hook``, not by rewriting weights).
    Modules without a ``weight`` (max- and average-pooling) pass relevance in
    proportion to their positive inputs: :math:`R_i = x_i^+ \partial_{x_i}
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
        ``W^{+T} s`` (and ``W^{-T} s``) with ``s = R / z``; where a neuron has no
        positive contribution (``z = 0``), the gradients of its negative contributions
        with ``s = R / z^-`` are added (see the class)."""
        x = _single_input(inputs, "ZPlusRule")
        weight = _weight(module, "ZPlusRule")
        # Inputs after a ReLU have no negative part: one pass to find out saves a
        # copy and, for weighted layers, a second convolution.
        signed = x.numel() > 0 and bool(x.min() < 0)
        positive = (x.clamp(min=0) if signed else x.detach()).requires_grad_()
        negative = x.clamp(max=0).requires_grad_() if signed else None

        def contributions(same_sign: bool) -> tuple[Tensor | None, tuple[Tensor, ...]]:
            """z from the contributions of one sign: positive (x+ w+ and x- w-) or
            negative (x+ w- and x- w+)."""
            with torch.enable_grad():
                if weight is None:  # pooling: the inputs of that sign
                    part = positive if same_sign else negative
                    return (None, ()) if part is None else (module.forward(part), (part,))
                bias = _zero_bias(module)
                up, down = weight.clamp(min=0), weight.clamp(max=0)
                first, second = (up, down) if same_sign else (down, up)
                z = functional_call(module, {"weight": first, **bias}, (positive,))
                if negative is None:
                    return z, (positive,)
                z = z + functional_call(module, {"weight": second, **bias}, (negative,))
                return z, (positive, negative)

        z, parts = contributions(True)
        assert z is not None
        grads = list(_part_gradients(z, parts, relevance))
        lost = (z.detach() == 0) & (relevance != 0) if signed else None
        if lost is not None and bool(lost.any()):
            # Signed inputs (LayerNorm, SiLU, a linear bottleneck), and a neuron with no
            # positive contribution: z+ is 0 / 0 there, and its relevance would be
            # dropped. Its negative contributions share it instead. (After a ReLU a
            # neuron without positive contribution keeps the paper's 0: FG-CAM's maps of
            # ReLU networks are the paper's.)
            z_neg, parts_neg = contributions(False)
            if z_neg is not None:
                extra = _part_gradients(z_neg, parts_neg, relevance.masked_fill(~lost, 0))
                for part, grad in zip(parts_neg, extra, strict=True):
                    index = next((i for i, p in enumerate(parts) if p is part), None)
                    if index is None:
                        parts, grads = (*parts, part), [*grads, grad]
                    else:
                        grads[index] = grads[index] + grad
        return parts, tuple(grads)


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

    Works in this library's FG-CAM and LRP classes and, as ``module.rule``, in
    Captum's ``LRP`` (see ``EngineRule.forward_hook``).
    """

    def __init__(
        self, low: float | Tensor | None = None, high: float | Tensor | None = None
    ) -> None:
        self.low = low
        self.high = high

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
    after the rule's ``_manipulate_weights`` (applied to a copy of the module).
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
    """``J^T (R / (z + eps * sign(z)))`` with the rule's weights (on a copy of the module)."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    # Captum's rules rewrite ``.data`` in place: they get a copy with parameters of its
    # own, so that the model's weights never change, for this thread or any other.
    own = {
        name: torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, p in module._parameters.items()
        if p is not None
    }
    clone = _detached_copy(module, own)
    with torch.enable_grad():
        rule._manipulate_weights(clone, tuple(leaves), output)
        z = clone.forward(*leaves)
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        denominator = z.detach() + sign * rule.STABILITY_FACTOR
        return torch.autograd.grad(z, leaves, relevance / denominator)
