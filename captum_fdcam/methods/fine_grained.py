"""FG-CAM: any CAM made fine-grained, down to a shallower layer or the input.

Qiu et al., "Empowering CAM-Based Methods with Capability to Generate
Fine-Grained and High-Faithfulness Explanations" (FG-CAM), AAAI 2024.
https://github.com/dongmo-qcq/FG-CAM

1. The base CAM's components at its layer, not summed:
   :math:`I = w \\circ A` (K, h, w) for channel weights w (pixel weights for
   Layer-CAM).
2. Optionally denoised (FG-CAM-D): each row of I reshaped to K x (h w) has its
   mean subtracted, and only the leading singular values are kept.
3. I is propagated towards the input layer by layer with LRP rules (signed z+
   in hidden layers, z^B at the input layer, bias ignored), see
   :mod:`captum_fdcam.propagation`.
4. The relevance is summed over the channels of the target layer.

Over a perturbation CAM, a batch holding the same input several times (one image
explained for several targets) is explained in rounds of distinct inputs, each a batch
of its own, the base CAM's target-independent passes shared between the rounds (see
:mod:`captum_fdcam._core.perturbation`): each map is bit for bit that of a call with one
target per input, and the perturbed copies are evaluated once.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, NamedTuple

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _is_tuple,
)
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, LayerAttribution
from captum.attr import LayerGradCam as CaptumLayerGradCam
from captum.attr._utils.lrp_rules import PropagationRule
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_fdcam._core.base import (
    LayerCamBase,
    _rows_of,
    attribution_call,
    warn_constant_maps,
)
from captum_fdcam._core.layout import FeatureLayout, ReshapeSpec
from captum_fdcam._core.perturbation import PassStore, distinct_examples, target_groups
from captum_fdcam._core.validation import (
    check_bool,
    check_integer,
    check_layer,
    check_no_script_modules,
    check_real,
    layer_name,
    owning_module,
    python_scalar,
    target_rows,
)
from captum_fdcam.architectures import AUTO, AutoLayout
from captum_fdcam.errors import LayerError
from captum_fdcam.methods.gradient import LayerGradCam
from captum_fdcam.propagation import Propagation, RuleAssignment, ZBoxRule
from captum_fdcam.propagation.assignment import RuleSpec
from captum_fdcam.propagation.engine import relevance_shares
from captum_fdcam.propagation.modes import AttentionMode


def singular_value_count(count: int | float, available: int) -> int:
    """How many singular values to keep: ``count`` itself, or a fraction of ``available``.

    The authors' code keeps ``int(0.1 * S)`` with S the number of singular
    values, min(K, h w) (4 for VGG16's 512 x 7 x 7); at least one is kept.
    """
    if isinstance(count, Integral) and not isinstance(count, bool):
        return min(int(count), available)
    return max(1, int(available * float(count)))


def check_singular_values(count: int | float) -> int | float:
    """A count (Python or numpy int, at least 1) or a fraction in (0, 1], as a Python number."""
    number = python_scalar(count)
    if isinstance(number, bool) or not isinstance(number, Real):
        raise TypeError(f"singular_values must be an int or a float, got {type(count).__name__}.")
    if isinstance(number, Integral):
        return check_integer("singular_values", number)
    fraction = check_real("singular_values", number)
    if not 0 < fraction <= 1:
        raise ValueError(
            f"A fractional singular_values must be in (0, 1], got {fraction} "
            "(an int keeps that many singular values)."
        )
    return fraction


def denoise_components(components: Tensor, singular_values: int | float) -> Tensor:
    """FG-CAM-D's denoising of the components, (N, K, h, w) -> (N, K, h, w).

    Per example: reshape to K x (h w), subtract each row's mean, keep the
    leading singular values of the SVD and reshape back. With every singular
    value kept this only subtracts the row means.
    """
    n, k = components.shape[:2]
    rows = components.reshape(n, k, -1)
    centred = rows - rows.mean(dim=2, keepdim=True)
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    r = singular_value_count(singular_values, s.shape[-1])
    kept = (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]
    return kept.reshape_as(components)


def _target_rounds(
    formatted: tuple[Tensor, ...], extra: Any, target: TargetType
) -> tuple[list[list[int]], list[int]] | None:
    """Rounds for a batch holding the same input several times: round r has the r-th
    distinct target of each distinct input (an example's index), so that no round
    repeats an input; and for each example, the example whose map it takes (itself, or
    an earlier one with the same input and target). None where all inputs differ."""
    first, inverse = distinct_examples(formatted, extra)
    if len(first) == len(inverse):
        return None
    rows = None if target is None else target_rows(target, len(inverse))
    per_input, source = target_groups(inverse, rows)
    count = max(len(examples) for examples in per_input)
    rounds = [[ex[r] for ex in per_input if r < len(ex)] for r in range(count)]
    return rounds, source


class _Options(NamedTuple):
    """What a call asks of FG-CAM besides its inputs and targets: where the map ends,
    then the options passed on to the base CAM."""

    layer: Module | None
    attribute_to_layer_input: bool
    relu_attributions: bool
    perturbations_per_eval: int
    show_progress: bool
    grad_kwargs: dict[str, Any] | None


def _as_base(base_cam: Any) -> LayerCamBase:
    if isinstance(base_cam, LayerCamBase):
        return base_cam
    if isinstance(base_cam, CaptumLayerGradCam):
        # Our LayerGradCam gives Captum's map bit for bit, and its components.
        return LayerGradCam(base_cam.forward_func, base_cam.layer, base_cam.device_ids)
    raise TypeError(
        "base_cam must be a CAM of captum_fdcam (e.g. LayerGradCam(model, layer)) or "
        f"Captum's LayerGradCam, got {type(base_cam).__name__}."
    )


class _FineGrained:
    """What FG-CAM at a layer and FG-CAM at the input share."""

    def __init__(
        self,
        base_cam: LayerCamBase | CaptumLayerGradCam,
        denoise: bool,
        singular_values: int | float,
        rules: Mapping[Module | type[Module], RuleSpec] | None,
        input_rule: PropagationRule | None,
        attention: AttentionMode = "cp",
        end_transform: ReshapeSpec = None,
    ) -> None:
        self.base_cam = _as_base(base_cam)
        self.end_transform = end_transform
        model = owning_module(self.base_cam.forward_func)
        if model is None:
            raise TypeError(
                "FG-CAM propagates through the model's modules: the base CAM's forward_func "
                "must be an nn.Module (or one of its bound methods)."
            )
        # Checked here too, for an error at construction rather than at the first call.
        check_no_script_modules(model, "FG-CAM")
        self.model = model
        self.denoise = check_bool("denoise", denoise)
        self.singular_values = check_singular_values(singular_values)
        self.rules = rules
        self.input_rule = ZBoxRule() if input_rule is None else input_rule
        RuleAssignment(None, None, attention)  # checks the mode now
        self.attention = attention

    def components(
        self,
        inputs: tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        perturbations_per_eval: int,
        show_progress: bool,
        grad_kwargs: dict[str, Any] | None,
        record_graph: bool = False,
        pass_store: PassStore | None = None,
    ) -> tuple[Tensor, FeatureLayout]:
        """The base CAM's components (N, K, h, w) and the layout of its layer, from
        inputs that :meth:`LayerCamBase.format_inputs` has checked."""
        base = self.base_cam
        states = base.layer_state(
            inputs,
            target=target,
            additional_forward_args=additional_forward_args,
            grad_kwargs=grad_kwargs,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
            record_graph=record_graph,
            inputs_checked=True,
            pass_store=pass_store,
        )
        if len(states) != 1:
            raise LayerError("FG-CAM needs a base CAM layer with a single output.")
        (state,) = states
        with torch.no_grad():
            components = base.components(state)
            if self.denoise:
                components = denoise_components(components, self.singular_values)
        return components, state.layout

    def relevance(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        """:meth:`_relevance` inside :func:`attribution_call` (compiled parts run
        eagerly, a train-mode model's buffers restored)."""
        base = self.base_cam
        with attribution_call(
            base.forward_func, type(base).__name__, base.uses_perturbations, propagates=True
        ):
            return self._relevance(*args, **kwargs)

    def _relevance(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        layer: Module | None,
        attribute_to_layer_input: bool,
        relu_attributions: bool,
        perturbations_per_eval: int,
        show_progress: bool,
        grad_kwargs: dict[str, Any] | None,
        shares: dict[str, float] | None = None,
    ) -> tuple[Tensor, ...]:
        # Checked once, here: the propagation needs them before the base CAM's pass.
        formatted = self.base_cam.format_inputs(inputs)
        extra = _format_additional_forward_args(additional_forward_args)
        options = _Options(
            layer,
            attribute_to_layer_input,
            relu_attributions,
            perturbations_per_eval,
            show_progress,
            grad_kwargs,
        )
        rounds = (
            _target_rounds(formatted, extra, target)
            if shares is None and self.base_cam.uses_perturbations
            else None
        )
        if rounds is None:
            maps = self._maps(formatted, target, extra, options, shares)
        else:
            maps = self._maps_in_rounds(formatted, target, extra, rounds, options)
        if shares is None:
            warn_constant_maps(maps, f"FG-CAM over {type(self.base_cam).__name__}")
        return maps

    def _maps_in_rounds(
        self,
        formatted: tuple[Tensor, ...],
        target: TargetType,
        extra: Any,
        rounds: tuple[list[list[int]], list[int]],
        options: _Options,
    ) -> tuple[Tensor, ...]:
        """The maps of a batch with repeated inputs, a round of distinct inputs at a time
        (:func:`_target_rounds`), the base CAM's passes shared through one store."""
        groups, source = rounds
        n = formatted[0].shape[0]
        rows = None if target is None else target_rows(target, n)
        store = PassStore()
        where: dict[int, tuple[int, int]] = {}
        found = []
        for r, group in enumerate(groups):
            found.append(
                self._maps(
                    tuple(x[group] for x in formatted),
                    None if rows is None else [rows[i] for i in group],
                    _rows_of(extra, group, n),
                    options,
                    pass_store=store,
                )
            )
            where.update({i: (r, position) for position, i in enumerate(group)})
        return tuple(
            torch.cat([found[where[j][0]][k][where[j][1] : where[j][1] + 1] for j in source])
            for k in range(len(found[0]))
        )

    def _maps(
        self,
        formatted: tuple[Tensor, ...],
        target: TargetType,
        extra: Any,
        settings: _Options,
        shares: dict[str, float] | None = None,
        pass_store: PassStore | None = None,
    ) -> tuple[Tensor, ...]:
        """FG-CAM's maps of checked inputs, without the constant-map warning."""
        layer, attribute_to_layer_input, relu_attributions = settings[:3]
        options = (target, extra, *settings[3:])
        if layer is self.base_cam.layer and not attribute_to_layer_input:
            relevances: tuple[Tensor, ...] = (
                self.components(formatted, *options, pass_store=pass_store)[0],
            )
            if shares is not None:
                shares["start"] = float(relevances[0].sum())
        else:
            # The base CAM's forward pass also records the propagation graph of
            # the network before its layer: one forward pass serves both.
            with Propagation(
                self.model,
                RuleAssignment(self.rules, self.input_rule, self.attention),
                formatted,
                start=self.base_cam.layer,
                end=layer,
                end_input=attribute_to_layer_input,
                stop_at_start=False,
            ) as run:
                components, layout = self.components(
                    run.inputs, *options, record_graph=True, pass_store=pass_store
                )
                # With a reshape_transform the relevance starts in the layer's own
                # layout; values the transform drops (a class token) start with none.
                relevances = run.relevance(lambda start: layout.scatter(components, start), shares)
        if layer is not None and not (
            layer is self.base_cam.layer and not attribute_to_layer_input
        ):
            relevances = self._on_grid(
                relevances, layer, formatted, attribute_to_layer_input, shares
            )
        maps = tuple(r.sum(dim=1, keepdim=True) for r in relevances)
        return tuple(torch.relu(m) for m in maps) if relu_attributions else maps

    def _on_grid(
        self,
        relevances: tuple[Tensor, ...],
        layer: Module,
        formatted: tuple[Tensor, ...],
        to_input: bool,
        shares: dict[str, float] | None,
    ) -> tuple[Tensor, ...]:
        """The relevance at ``layer``, in its own layout, as (N, C, h, w) maps: tokens and
        channels-last maps through the end layer's ``reshape_transform``."""
        transform = self.end_transform
        if isinstance(transform, str) and transform == AUTO:
            image = formatted[0]
            size = (image.shape[-2], image.shape[-1]) if image.dim() == 4 else None
            transform = AutoLayout(self.model, layer, size)
        layout = FeatureLayout(transform, layer_name(self.model, layer))
        mapped = []
        for relevance in relevances:
            layout.check(relevance, "input" if to_input else "output")
            mapped.append(layout.to_map(relevance))
        if shares is not None:
            # Tokens the map leaves out (the class token of a block's output) keep theirs.
            outside = sum(float(r.sum()) for r in relevances) - sum(float(m.sum()) for m in mapped)
            shares["tokens outside the map"] = outside
        return tuple(mapped)

    def shares(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        layer: Module | None,
        attribute_to_layer_input: bool,
        perturbations_per_eval: int,
        grad_kwargs: dict[str, Any] | None,
    ) -> dict[str, Tensor]:
        """:func:`~captum_fdcam.propagation.engine.relevance_shares` of FG-CAM's
        propagation, one example at a time (see ``relevance_shares`` of the classes)."""
        formatted = self.base_cam.format_inputs(inputs)
        count = formatted[0].shape[0]
        extra = _format_additional_forward_args(additional_forward_args)
        rows = target_rows(target, count) if target is not None else None

        def one(i: int, found: dict[str, float]) -> tuple[Tensor, ...]:
            example = tuple(x[i : i + 1] for x in formatted)
            example_extra = (
                None
                if extra is None
                else tuple(
                    a[i : i + 1] if isinstance(a, Tensor) and a.dim() and len(a) == count else a
                    for a in extra
                )
            )
            return self.relevance(
                example,
                None if rows is None else [rows[i]],
                example_extra,
                layer,
                attribute_to_layer_input,
                False,
                perturbations_per_eval,
                False,
                grad_kwargs,
                found,
            )

        return relevance_shares(one, count)


_ARGS_DOC = r"""
            inputs (Tensor or tuple[Tensor, ...]): Input for which attributions are
                computed, (N, C, H, W) with N the number of examples; not modified.
            target (int, tuple, Tensor, or list, optional): Output indices to explain,
                as in Captum (one for all examples, or one per example).
            additional_forward_args (Any, optional): Further arguments of the model.
            relu_attributions (bool, optional): Apply ReLU to the map ("for display",
                as the paper does). Default: False
            perturbations_per_eval (int, optional): Passed to a perturbation base CAM
                (Score-CAM, FD-CAM, ...). Default: 64
            show_progress (bool, optional): Displays the progress of a perturbation
                base CAM's weights: its own bar over the perturbed copies (see
                :meth:`~captum_fdcam.PerturbationLayerCam.attribute`), the same as
                ``base_cam.attribute(..., show_progress=True)`` shows; the
                propagation (one backward pass) has none. Ignored over a gradient
                base CAM. Default: False
            grad_kwargs (dict, optional): Extra arguments of ``torch.autograd.grad``
                for the base CAM's gradients."""

_INIT_DOC = r"""
        denoise (bool): FG-CAM-D: denoise the components by a truncated SVD
            before propagating them. Default: False
        singular_values (int or float): singular values kept when denoising:
            an int keeps that many (the paper: 10); a float in (0, 1] keeps
            that fraction of them (the authors' code: 0.1). Default: 10
        rules (dict, optional): LRP rules by module or module type, overriding
            the defaults (:func:`captum_fdcam.propagation.default_rules`); a
            module's own ``rule`` attribute, as in Captum's ``LRP``, wins.
        input_rule (PropagationRule, optional): rule of the layers that receive
            the model's input. Default: ``ZBoxRule()`` (bounds: each image's
            minimum and maximum).
        attention (str): how relevance crosses attention
            (:class:`~captum_fdcam.propagation.AttentionRule`): ``"cp"``, the
            attention weights held constant (CP-LRP), or ``"attnlrp"``. LayerNorm
            and its kin hold their standard deviation constant
            (:class:`~captum_fdcam.propagation.NormRule`). Default: ``"cp"``"""


class LayerFGCam(LayerAttribution, GradientAttribution):
    __doc__ = (
        r"""FG-CAM at a layer: a base CAM's explanation lifted to a shallower layer.

    The base CAM's components :math:`I = w \circ A` at its layer are propagated
    with LRP rules (signed z+ in hidden layers, relevance split in proportion
    to the summands at residual additions) to ``layer`` and summed over its
    channels. At the base CAM's own layer this is the base CAM's map.

    Cost: the base CAM, whose forward pass also records the propagation, plus one
    backward pass from the base layer (each convolution's rule costs a convolution
    and its input gradient; two of each where the layer's input has negative values).

    Qiu et al., "Empowering CAM-Based Methods with Capability to Generate
    Fine-Grained and High-Faithfulness Explanations", AAAI 2024.
    https://github.com/dongmo-qcq/FG-CAM

    Args:
        base_cam: a CAM of this library or Captum's ``LayerGradCam``; its layer
            is where the explanation starts.
        layer (torch.nn.Module): the layer to explain, called before the base CAM's
            layer (or the base CAM's layer itself).
        reshape_transform: how ``layer``'s output becomes the (N, C, h, w) map whose
            channels are summed: ``"auto"`` (the default) reads it from the model as the
            CAMs do (a transformer's tokens, Swin's channels-last maps; nothing for a
            CNN's maps), a callable, or ``None``. Relevance of tokens the map leaves out
            (a block's class token) is reported by :meth:`relevance_shares`."""
        + _INIT_DOC
    )

    def __init__(
        self,
        base_cam: LayerCamBase | CaptumLayerGradCam,
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        denoise: bool = False,
        singular_values: int | float = 10,
        rules: Mapping[Module | type[Module], RuleSpec] | None = None,
        input_rule: PropagationRule | None = None,
        attention: AttentionMode = "cp",
        reshape_transform: ReshapeSpec = AUTO,
    ) -> None:
        if reshape_transform is not None and not isinstance(reshape_transform, str):
            if not callable(reshape_transform):
                raise TypeError(f"reshape_transform must be callable, got {reshape_transform!r}.")
        elif isinstance(reshape_transform, str) and reshape_transform != AUTO:
            raise TypeError(
                f"reshape_transform must be callable, 'auto' or None, got {reshape_transform!r}."
            )
        self._fg = _FineGrained(
            base_cam,
            denoise,
            singular_values,
            rules,
            ZBoxRule() if input_rule is None else input_rule,
            attention,
            reshape_transform,
        )
        forward_func = self._fg.base_cam.forward_func
        check_layer(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    @property
    def base_cam(self) -> LayerCamBase:
        return self._fg.base_cam

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        maps = self._fg.relevance(
            inputs,
            target,
            additional_forward_args,
            self.layer,
            attribute_to_layer_input,
            relu_attributions,
            perturbations_per_eval,
            show_progress,
            grad_kwargs,
        )
        return _format_output(len(maps) > 1, maps)

    attribute.__doc__ = (
        r"""
        Args:"""
        + _ARGS_DOC
        + r"""
            attribute_to_layer_input (bool, optional): Explain the layer's input
                instead of its output. Default: False

        Returns:
            *Tensor* of **attributions**, (N, 1, h, w) at the layer's resolution (a
            tuple when the layer's input has several tensors).
        """
    )

    def relevance_shares(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 64,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Where each example's CAM mass at the base layer (``start``) ends: the map's
        sum (``end``), or parameters (position embeddings, class tokens, biases), the
        rules, the rest. (N,) float64 tensors; one propagation per example. See
        :func:`captum_fdcam.propagation.engine.relevance_shares`."""
        return self._fg.shares(
            inputs,
            target,
            additional_forward_args,
            self.layer,
            attribute_to_layer_input,
            perturbations_per_eval,
            grad_kwargs,
        )


class FGCam(GradientAttribution):
    __doc__ = (
        r"""FG-CAM at the input: a base CAM's explanation at the input's resolution.

    As :class:`LayerFGCam`, propagated through every layer down to the input;
    the layers receiving the input use ``input_rule`` (z^B). The map is the
    relevance summed over the input's channels.

    Args:
        base_cam: a CAM of this library or Captum's ``LayerGradCam``."""
        + _INIT_DOC
    )

    def __init__(
        self,
        base_cam: LayerCamBase | CaptumLayerGradCam,
        *,
        denoise: bool = False,
        singular_values: int | float = 10,
        rules: Mapping[Module | type[Module], RuleSpec] | None = None,
        input_rule: PropagationRule | None = None,
        attention: AttentionMode = "cp",
    ) -> None:
        self._fg = _FineGrained(
            base_cam,
            denoise,
            singular_values,
            rules,
            ZBoxRule() if input_rule is None else input_rule,
            attention,
        )
        GradientAttribution.__init__(self, self._fg.base_cam.forward_func)

    @property
    def base_cam(self) -> LayerCamBase:
        return self._fg.base_cam

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        relu_attributions: bool = False,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        maps = self._fg.relevance(
            inputs,
            target,
            additional_forward_args,
            None,
            False,
            relu_attributions,
            perturbations_per_eval,
            show_progress,
            grad_kwargs,
        )
        return _format_output(_is_tuple(inputs), maps)

    attribute.__doc__ = (
        r"""
        Args:"""
        + _ARGS_DOC
        + r"""

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, (N, 1, H, W) per
            input: the relevance summed over the input's channels.
        """
    )

    def relevance_shares(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 64,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Where each example's CAM mass at the base layer (``start``) ends: the map's
        sum (``end``), or parameters (position embeddings, class tokens, biases), the
        rules, the rest. (N,) float64 tensors; one propagation per example. See
        :func:`captum_fdcam.propagation.engine.relevance_shares`."""
        return self._fg.shares(
            inputs,
            target,
            additional_forward_args,
            None,
            False,
            perturbations_per_eval,
            grad_kwargs,
        )
