"""LRP, CLRP and SGLRP at the input, on FG-CAM's propagation engine.

The baselines of FG-CAM's Tables 4-6. All three propagate with the same rules as
FG-CAM (signed z+ in hidden layers, z^B at the input layer) and differ only in
the relevance they start from at the model's output (logits y, softmax p,
target class t, C classes):

* LRP: :math:`R_t = y_t`, 0 elsewhere.
* CLRP (Gu et al., ACCV 2018): LRP of the target minus LRP of the *dual*, all
  other classes sharing the target's score: :math:`R_k = y_t / (C - 1)` for
  :math:`k \\ne t`. By linearity this is one propagation of the difference.
* SGLRP (Iwana et al., ICCVW 2019): the softmax gradient,
  :math:`R_t = p_t (1 - p_t)` and :math:`R_k = -p_t p_k`.

Unlike Captum's ``LRP``, relevance is split between the summands of residual
additions, so totals stay bounded on ResNets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution
from captum.attr._utils.lrp_rules import PropagationRule
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_fdcam._core.base import attribution_call, warn_constant_maps
from captum_fdcam._core.validation import (
    check_gradients_possible,
    check_inputs,
    check_model_device,
    check_no_script_modules,
    target_rows,
)
from captum_fdcam.errors import ModelOutputError, TargetError
from captum_fdcam.propagation import RuleAssignment, ZBoxRule, propagate
from captum_fdcam.propagation.assignment import RuleSpec
from captum_fdcam.propagation.engine import relevance_shares
from captum_fdcam.propagation.modes import AttentionMode


def _example(extra: Any, i: int, n: int) -> Any:
    """Example ``i``'s row of the additional forward arguments (tensors with N rows)."""
    if extra is None:
        return None
    return tuple(
        a[i : i + 1] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a
        for a in extra
    )


def _target_mask(output: Tensor, target: TargetType) -> Tensor:
    if output.dim() != 2:
        raise ModelOutputError(
            f"LRP baselines explain a classifier's (N, C) output, got shape {tuple(output.shape)}."
        )
    if target is None:
        raise TargetError("target is required: the class to explain for each example.")
    rows = target_rows(target, output.shape[0])
    if any(len(r) != 1 for r in rows):
        raise TargetError("target must give one class index per example.")
    index = torch.tensor([r[0] for r in rows], device=output.device)
    if bool(((index < 0) | (index >= output.shape[1])).any()):
        raise TargetError(f"target out of range for {output.shape[1]} classes: {index.tolist()}.")
    return torch.nn.functional.one_hot(index, output.shape[1]).to(output.dtype)


class PropagationLRP(GradientAttribution):
    """LRP with FG-CAM's rules: relevance :math:`y_t` at the target logit.

    Args:
        model (torch.nn.Module): a classifier returning (N, C) scores (logits).
        rules (dict, optional): rules by module or module type, overriding
            :func:`captum_fdcam.propagation.default_rules`; a module's ``rule``
            attribute wins, as in Captum's ``LRP``.
        input_rule (PropagationRule, optional): rule of the layers receiving the
            input. Default: ``ZBoxRule()``.
        attention (str, optional): how relevance crosses attention
            (:class:`~captum_fdcam.propagation.AttentionRule`): ``"cp"``, the
            attention weights held constant (CP-LRP), or ``"attnlrp"``. Default: "cp"
    """

    def __init__(
        self,
        model: Module,
        *,
        rules: Mapping[Module | type[Module], RuleSpec] | None = None,
        input_rule: PropagationRule | None = None,
        attention: AttentionMode = "cp",
    ) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        # As FG-CAM: a TorchScript module would fail at the first propagation hook.
        check_no_script_modules(model, type(self).__name__)
        GradientAttribution.__init__(self, model)
        self.model = model
        self.rules = rules
        self.input_rule = ZBoxRule() if input_rule is None else input_rule
        RuleAssignment(None, None, attention)  # checks the mode now
        self.attention = attention

    def output_relevance(self, output: Tensor, target: TargetType) -> Tensor:
        """Relevance at the model's (N, C) output where propagation starts."""
        return _target_mask(output, target) * output

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): (N, C, H, W) inputs; not modified.
            target (int, list or Tensor): the class to explain, one for all
                examples or one per example.
            additional_forward_args (Any, optional): further arguments of the model.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, each shaped like its
            input, as Captum's ``LRP`` returns them.
        """
        # As the CAMs: inference_mode would fail the backward pass with a bare message.
        check_gradients_possible(type(self).__name__)
        formatted = _format_tensor_into_tuples(inputs)
        check_model_device(self.model)
        check_inputs(formatted)
        # As every attribution here: compiled parts eager, a train-mode model's buffers back.
        with attribution_call(self.model, type(self).__name__, perturbs=False, propagates=True):
            relevance = propagate(
                self.model,
                RuleAssignment(self.rules, self.input_rule, self.attention),
                formatted,
                _format_additional_forward_args(additional_forward_args),
                start_relevance=lambda output: self.output_relevance(output, target),
            )
        warn_constant_maps(relevance, type(self).__name__)
        return _format_output(_is_tuple(inputs), relevance)

    def relevance_shares(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> dict[str, Tensor]:
        """Where each example's start relevance (the target's, see
        :meth:`output_relevance`) ends: at the input, or on a parameter.

        One propagation per example. Returns (N,) float64 tensors by kind
        (:func:`captum_fdcam.propagation.engine.relevance_shares`): ``start``, ``end``
        (the map's sum), ``position embeddings``, ``class, distillation and register
        tokens``, ``biases``, ``rules`` and ``other``; ``end`` and the kinds after it
        sum to ``start``.
        """
        check_gradients_possible(type(self).__name__)
        formatted = _format_tensor_into_tuples(inputs)
        check_model_device(self.model)
        check_inputs(formatted)
        extra = _format_additional_forward_args(additional_forward_args)
        rows = target_rows(target, formatted[0].shape[0]) if target is not None else None

        def one(i: int, shares: dict[str, float]) -> tuple[Tensor, ...]:
            example = tuple(x[i : i + 1] for x in formatted)
            example_extra = _example(extra, i, formatted[0].shape[0])
            row = None if rows is None else [rows[i]]
            return propagate(
                self.model,
                RuleAssignment(self.rules, self.input_rule, self.attention),
                example,
                example_extra,
                start_relevance=lambda output: self.output_relevance(output, row),
                shares=shares,
            )

        with attribution_call(self.model, type(self).__name__, perturbs=False, propagates=True):
            return relevance_shares(one, formatted[0].shape[0])


class CLRP(PropagationLRP):
    """Contrastive LRP: LRP of the target minus LRP of the dual (all other classes).

    Gu et al., "Understanding Individual Decisions of CNNs via Contrastive
    Backpropagation", ACCV 2018. https://arxiv.org/abs/1812.02100
    """

    def output_relevance(self, output: Tensor, target: TargetType) -> Tensor:
        mask = _target_mask(output, target)
        score = (mask * output).sum(dim=1, keepdim=True)
        dual = (1 - mask) * score / (output.shape[1] - 1)
        return mask * output - dual


class SGLRP(PropagationLRP):
    """Softmax-Gradient LRP: relevance starts from the gradient of the softmax.

    Iwana et al., "Explaining Convolutional Neural Networks using Softmax
    Gradient Layer-wise Relevance Propagation", ICCV Workshops 2019.
    https://arxiv.org/abs/1908.04351
    """

    def output_relevance(self, output: Tensor, target: TargetType) -> Tensor:
        mask = _target_mask(output, target)
        p = torch.softmax(output, dim=1)
        p_target = (mask * p).sum(dim=1, keepdim=True)
        # 1 - p_t as the sum of the other probabilities, not as 1 - p_t: when the
        # target is confidently classified, p_t is rounded to the dtype's spacing
        # near 1 (6e-8 in float32), so 1 - p_t keeps little but that rounding (or is
        # exactly 0), and R_t no longer cancels sum_k R_k. The leftover total then
        # propagates like an LRP map and swamps the contrastive difference, which is
        # far smaller (float32 against float64: cosine -0.4 to 0.5 at 1 - p_t ~ 1e-9).
        # The sum is exact to rounding relative to itself, at every p_t and in either
        # dtype, and cancels the other classes' relevance to rounding.
        rest = ((1 - mask) * p).sum(dim=1, keepdim=True)
        return p_target * (mask * rest - (1 - mask) * p)
