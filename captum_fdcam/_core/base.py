"""The shared base of every CAM in this library.

A CAM method only says how its channel weights are computed (``weights``); this
module runs the forward pass with the layer hooked, selects and checks the
targets, takes the gradients when the method needs them, and turns weights into
the map ``sum_k w_k A^k`` exactly as Captum's ``LayerGradCam`` does (ReLU on
request, upsampling left to :meth:`LayerAttribution.interpolate`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import captum
import torch
import torch.nn.functional as F
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _run_forward,
)
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, LayerAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.nn import Module

import captum_fdcam
from captum_fdcam._core.hooks import LayerCapture, run_eagerly, uncompiled
from captum_fdcam._core.layout import FeatureLayout, ReshapeSpec
from captum_fdcam._core.perturbation import (
    PassStore,
    PerturbationEngine,
    batch_rows,
    check_perturbations_per_eval,
    distinct_examples,
    target_groups,
)
from captum_fdcam._core.replay import PreLayerRecorder
from captum_fdcam._core.validation import (
    check_gradients_possible,
    check_inputs,
    check_layer,
    check_model_device,
    check_no_script_modules,
    layer_name,
    model_scores,
    owning_module,
    select_target_scores,
    target_rows,
)
from captum_fdcam.architectures import AUTO, AutoLayout
from captum_fdcam.errors import ConstantMapWarning, FeatureMapError, LayerError, NonFiniteError

#: Modules whose forward pass depends on ``training`` in a way that couples the rows of
#: a batch (batch statistics) or makes passes random (dropout).
_TRAIN_MODE_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)
_LIBRARIES = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (captum_fdcam, captum))


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this library, Captum and contextlib: the
    user's call of ``attribute``, however deep the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_LIBRARIES)
        or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    return level


def _trains(model: Module) -> bool:
    """Whether ``model`` runs in training mode: a module with weights or buffers of its
    own in training mode (a wrapper created around a model in eval mode, training by
    default and computing nothing of its own, does not count; a model put in training
    mode does, dropout modules or not)."""
    return any(
        m.training and (m._parameters or m._buffers or isinstance(m, _TRAIN_MODE_DEPENDENT))
        for m in model.modules()
    )


def _reference_rows(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    extra: Any,
) -> tuple[list[int], list[int]] | None:
    """Where examples of the batch have the same input (every input and per-example
    additional argument equal bit for bit: one image explained for several targets),
    the first example of each distinct input and each example's index among them
    (:func:`~captum_fdcam._core.perturbation.distinct_examples`); None where all differ,
    or where the model runs in training mode (batch statistics couple the rows)."""
    if inputs[0].shape[0] < 2:
        return None
    model = owning_module(forward_func)
    if model is not None and _trains(model):
        return None
    first, inverse = distinct_examples(inputs, extra)
    return None if len(first) == len(inverse) else (first, inverse)


def _rows_of(extra: Any, rows: list[int], n: int) -> Any:
    """The additional forward arguments of examples ``rows`` of a batch of ``n``."""
    if extra is None:
        return None
    per_example = {id(a) for a in batch_rows(extra, n)}
    return tuple(a[rows] if id(a) in per_example else a for a in extra)


def _target_gradients(
    output: Any,
    raw: tuple[Tensor, ...],
    target: TargetType,
    inverse: list[int],
    grad_kwargs: dict[str, Any] | None,
) -> tuple[Tensor | None, ...]:
    """The gradient of each example's target score with respect to ``raw``, (N, ...)
    each, from a reference pass that ran once per distinct input (rows of ``raw``;
    ``inverse``: each example's row).

    One backward pass per round: round r takes the r-th distinct target of every
    distinct input (an input with fewer targets takes part with a zero gradient), so
    that each gradient is computed as in a batch of the distinct inputs with one target
    each: the same pass, the same seed gradient of ones.
    """
    scores = model_scores(output)
    rows = None if target is None else target_rows(target, len(inverse))
    per_input, source = target_groups(inverse, rows)
    wanted = [[None if rows is None else rows[j] for j in examples] for examples in per_input]
    round_of = [per_input[u].index(source[i]) for i, u in enumerate(inverse)]
    rounds = max(len(w) for w in wanted)
    options = dict(grad_kwargs or {})
    retain = options.pop("retain_graph", None)
    found = []
    for r in range(rounds):
        active = [r < len(w) for w in wanted]
        chosen = [w[r] if r < len(w) else w[0] for w in wanted]
        selected = select_target_scores(scores, None if rows is None else chosen)
        seed = torch.ones_like(selected)
        if not all(active):
            seed = seed * torch.tensor(active, dtype=seed.dtype, device=seed.device)
        found.append(
            torch.autograd.grad(
                selected,
                raw,
                grad_outputs=seed,
                allow_unused=True,
                retain_graph=True if r < rounds - 1 else retain,
                **options,
            )
        )
    return tuple(
        None
        if any(grads[k] is None for grads in found)
        else torch.cat([found[round_of[i]][k][u : u + 1] for i, u in enumerate(inverse)])
        for k in range(len(raw))
    )


def warn_if_training(model: Module, method: str) -> None:
    """Warns when a perturbation method runs a model in training mode.

    Captum's attributions run a train-mode model as it is, without a warning, and so do the
    gradient CAMs here (their maps equal Captum's ``LayerGradCam``'s). A perturbation
    method's scores would come from BatchNorm's statistics over a chunk of perturbed copies
    (so they change with ``perturbations_per_eval``) and from random dropout masks (modules
    or functional, which no module list shows): the map is not the model's explanation.
    """
    if not _trains(model):
        return
    listed = [
        name
        for name, m in model.named_modules()
        if m.training and isinstance(m, _TRAIN_MODE_DEPENDENT)
    ]
    named = f"{', '.join(repr(n) for n in listed[:3])}{', ...' if len(listed) > 3 else ''}"
    warnings.warn(
        f"captum_fdcam: {method} runs a model in training mode"
        + (f" ({named})" if listed else "")
        + ": the perturbed copies' scores then depend on how they are batched "
        "(perturbations_per_eval, through batch statistics) and on random dropout masks. "
        "The model's buffers (running statistics) are restored after the call. "
        "Call model.eval() first.",
        RuntimeWarning,
        stacklevel=_caller_stacklevel(),
    )


def _is_auto(transform: object) -> bool:
    return isinstance(transform, str) and transform == AUTO


def warn_constant_maps(maps: tuple[Tensor, ...], method: str) -> None:
    """Says once, naming the examples, when a map is the same value everywhere: such a
    map ranks no location above another, and nothing else would say so."""
    for attr in maps:
        if attr.dim() < 2 or attr[0].numel() < 1:
            continue
        flat = attr.detach().reshape(len(attr), -1)
        low, high = flat.min(dim=1).values, flat.max(dim=1).values
        constant = torch.nonzero(low == high).flatten().tolist()
        if not constant:
            continue
        values = sorted({float(low[i]) for i in constant})
        value = "all 0" if values == [0.0] else f"value {', '.join(f'{v:g}' for v in values[:3])}"
        shown = constant if len(constant) <= 10 else [*constant[:10], "..."]
        warnings.warn(
            f"captum_fdcam: {method}'s map is constant ({value}) for example(s) {shown} of "
            f"{len(attr)}: it ranks no location above another. Usually a 1 x 1 map at the "
            "layer, channel weights that are all 0, or, with relu_attributions, no positive "
            "evidence for the target at this layer.",
            ConstantMapWarning,
            stacklevel=_caller_stacklevel(),
        )


@contextmanager
def _buffers_restored(model: Module | None) -> Iterator[None]:
    """Puts every buffer of a model in training mode back as it was (BatchNorm's and
    InstanceNorm's running statistics, which each forward pass in training mode updates)."""
    if model is None or not any(m.training for m in model.modules()):
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextmanager
def attribution_call(
    forward_func: Callable[..., Any], method: str, perturbs: bool, *, propagates: bool = False
) -> Iterator[None]:
    """What every attribution of this library runs inside (the CAMs, FG-CAM, LRP, CLRP,
    SGLRP, FD-CAM's ``channel_scores``).

    - compiled parts of the model run eagerly (:func:`run_eagerly`: a compiled graph
      may skip this call's hooks);
    - a model in training mode gets its buffers back afterwards, and a perturbation
      method warns about it (:func:`warn_if_training`);
    - a method that hooks every module (``propagates``: FG-CAM, LRP) refuses a model
      with a TorchScript module, with a message that says so.
    """
    model = owning_module(uncompiled(forward_func))
    if propagates and model is not None:
        check_no_script_modules(model, method)
    if perturbs and model is not None:
        warn_if_training(model, method)
    with _buffers_restored(model), run_eagerly(forward_func):
        yield


@dataclass(frozen=True)
class CamState:
    """What the forward pass tells about one feature map of the layer: the input of the
    hooks a method overrides (:meth:`LayerCamBase.terms`, :meth:`WeightedLayerCam.weights`).

    A layer with several outputs (inputs) gives one state per feature map.

    Attributes:
        inputs: the formatted inputs, a tuple of tensors (N, ...).
        target: the target as the user gave it.
        additional_forward_args: formatted additional arguments of the model.
        scores: (N,) the score of each example's target (detached).
        activation: (N, K, h, w) the layer's feature map, detached.
        layout: how the layer's own output became ``activation`` (the
            ``reshape_transform``), to put maps back into the layer's layout.
    """

    inputs: tuple[Tensor, ...]
    target: TargetType
    additional_forward_args: Any
    scores: Tensor
    activation: Tensor
    layout: FeatureLayout


@dataclass(frozen=True)
class GradientCamState(CamState):
    """:class:`CamState` of a method that uses gradients (:class:`GradientLayerCam`).

    Attributes:
        gradient: (N, K, h, w) d scores / d ``activation``.
    """

    gradient: Tensor


@dataclass(frozen=True)
class PerturbationCamState(CamState):
    """:class:`CamState` of a method that evaluates perturbed copies
    (:class:`PerturbationLayerCam`).

    Attributes:
        engine: evaluates perturbed copies of the examples (of the input, or of the
            layer's channels with only the network after the layer running).
    """

    engine: PerturbationEngine


@dataclass(frozen=True)
class GradientPerturbationCamState(GradientCamState, PerturbationCamState):
    """:class:`CamState` with both ``gradient`` and ``engine``
    (:class:`GradientPerturbationLayerCam`: FD-CAM, Group-CAM)."""


#: The state a base class's hooks receive: :class:`CamState` or one of its family types.
StateT = TypeVar("StateT", bound=CamState)
# Named where it is public (the signatures of the hooks refer to it there).
StateT.__module__ = "captum_fdcam"


class LayerCamBase(LayerAttribution, Generic[StateT], metaclass=ABCMeta):
    """Shared machinery of the CAM attributions: hooks, targets, maps, checks.

    An abstract class: a method implements :meth:`terms` (or, through
    :class:`WeightedLayerCam` and its families, only :meth:`weights`). The hooks a
    method may override, each getting the :class:`CamState` of one feature map:

    - :meth:`terms` (abstract): the map split into terms, summed over dimension 1;
    - :meth:`components`: the map split over the K channels, FG-CAM's input;
    - :meth:`check_inputs`: checks of the method's own, before the model runs.
    """

    #: Whether the method needs the gradients of the target score (its state then is a
    #: :class:`GradientCamState`).
    requires_gradients: ClassVar[bool] = True
    #: Whether the method evaluates perturbed copies (its state then is a
    #: :class:`PerturbationCamState`).
    uses_perturbations: ClassVar[bool] = False
    #: Whether the method switches the layer's channels (then the reference pass
    #: records what runs before the layer, to evaluate only what follows it).
    switches_channels: ClassVar[bool] = False

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The forward function of the model or any
                modification of it.
            layer (torch.nn.Module): Layer for which attributions are computed. Its
                output (or input, with ``attribute_to_layer_input=True``) must be a
                4-D (N, C, H, W) feature map produced by a single call per forward
                pass, or become one through ``reshape_transform``.
            device_ids (list[int], optional): Accepted for signature compatibility
                with Captum's ``LayerGradCam``; models split over several devices
                with ``DataParallel`` are not supported.
            reshape_transform (Callable, optional): Takes the layer's output (N, ...)
                to the (N, C, h, w) feature map the CAM explains, by moving values
                only (reshape, permute, slicing), e.g.
                :class:`captum_fdcam.reshape.TokensToGrid` for a vision transformer's
                tokens or :class:`~captum_fdcam.reshape.ChannelsLastToFirst` for
                Swin's maps. ``"auto"``: read from the model (timm's
                ``num_prefix_tokens`` and ``patch_embed``, torchvision's and Hugging
                Face's ViTs, channels-last Swin and ConvNeXt stages; see
                :mod:`captum_fdcam.architectures`), with a clear error where the model
                does not say. ``None``: the output is the feature map. Default: None
        """
        check_layer(forward_func, layer)
        if reshape_transform is not None and not _is_auto(reshape_transform):
            if isinstance(reshape_transform, str) or not callable(reshape_transform):
                raise TypeError(
                    f"reshape_transform must be callable, 'auto' or None, got "
                    f"{reshape_transform!r}."
                )
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        self.reshape_transform = reshape_transform

    @abstractmethod
    def terms(self, state: StateT) -> Tensor:
        """The terms of the map, whose sum over dimension 1 is the map.

        Args:
            state: the feature map ``state.activation`` (N, K, h, w) and what the
                forward pass produced with it.

        Returns:
            (N, T, h, w): T terms per location, e.g. ``w_k A^k`` for K channels.
        """

    def components(self, state: StateT) -> Tensor:
        """The map split over the layer's K channels, (N, K, h, w): FG-CAM's input.

        :meth:`terms` by default; a method whose terms are not per channel (Group-CAM)
        splits them over the channels here, so that they still sum to the map.
        """
        return self.terms(state)

    def check_inputs(self, inputs: tuple[Tensor, ...]) -> None:
        """Checks of the method's own on the formatted inputs (N, ...), run before the
        model: nothing by default (the shared checks have run already)."""

    def format_inputs(self, inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The inputs as a tuple of tensors, checked: the shared checks (floating point,
        finite, one batch size, at least one example), then :meth:`check_inputs`."""
        formatted = _format_tensor_into_tuples(inputs)
        check_model_device(self.forward_func)
        check_inputs(formatted)
        self.check_inputs(formatted)
        return formatted

    def layer_state(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        *,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        record_graph: bool = False,
        inputs_checked: bool = False,
        pass_store: PassStore | None = None,
    ) -> tuple[StateT, ...]:
        """Runs the forward pass (and the backward pass to the layer when needed).

        ``attribute`` runs it; a method combining another CAM (FG-CAM) calls it, then
        the hooks on what it returns, inside the same guards as ``attribute``
        (compiled parts of the model run eagerly, see :func:`attribution_call`).

        ``inputs``, ``target``, ``additional_forward_args``, ``attribute_to_layer_input``
        and ``grad_kwargs`` are as in :meth:`attribute`; ``perturbations_per_eval`` and
        ``show_progress`` configure the perturbation engine, as in
        :meth:`PerturbationLayerCam.attribute`.

        Args:
            record_graph: keep gradients on before the layer, for a caller that also
                propagates through that part of the same pass (FG-CAM).
            inputs_checked: ``inputs`` come from :meth:`format_inputs` (or copies of
                them): skip formatting and checking them again.
            pass_store: where the perturbation engine keeps (and finds) the outputs of
                its target-independent passes across calls (FG-CAM's rounds).

        A perturbation method's reference pass runs once per distinct input: examples
        with the same input (one image explained for several targets) share its forward
        pass, each target getting its own backward pass where gradients are needed, and
        the engine shares their perturbed copies' passes too. Each example's state is
        then bit for bit that of a batch of the distinct inputs with one target each.
        Not with ``record_graph`` (the caller propagates through this very pass, row by
        row) nor for a model in training mode.

        Returns:
            One state per feature map of the layer (one for a layer with a single
            output): a :class:`GradientCamState` when :attr:`requires_gradients`, a
            :class:`PerturbationCamState` when :attr:`uses_perturbations`, both at once
            as a :class:`GradientPerturbationCamState`.
        """
        if self.requires_gradients:
            check_gradients_possible(type(self).__name__)
        elif record_graph:
            check_gradients_possible(f"FG-CAM (propagating {type(self).__name__})")
        if inputs_checked:
            formatted = _format_tensor_into_tuples(inputs)
        else:
            formatted = self.format_inputs(inputs)
        extra = _format_additional_forward_args(additional_forward_args)
        layer = self.layer
        forward_func = uncompiled(self.forward_func)
        shared = (
            _reference_rows(forward_func, formatted, extra)
            if self.uses_perturbations and not record_graph
            else None
        )
        run_inputs, run_extra = formatted, extra
        if shared is not None:
            first, inverse = shared
            run_inputs = tuple(x[first] for x in formatted)
            run_extra = _rows_of(extra, first, len(formatted[0]))
            rows = torch.tensor(inverse, device=formatted[0].device)
        name = layer_name(forward_func, layer)
        transform = self.reshape_transform
        if _is_auto(transform):
            image = formatted[0]
            size = (image.shape[-2], image.shape[-1]) if image.dim() == 4 else None
            transform = AutoLayout(owning_module(forward_func), layer, size)
        layout = FeatureLayout(transform, name)
        capture_factory = partial(
            LayerCapture,
            layer,
            name,
            attribute_to_layer_input=attribute_to_layer_input,
            layout=layout,
        )
        capture = capture_factory(requires_grad=self.requires_gradients)
        recorder = (
            PreLayerRecorder(layer, run_inputs[0].shape[0]) if self.switches_channels else None
        )
        # Nothing before the layer needs a graph: the forward pass starts without one
        # and the layer's hook switches gradients on (also when the caller runs under
        # torch.no_grad()), which saves the memory of the pre-layer graph.
        with torch.set_grad_enabled(record_graph):
            with capture, recorder or nullcontext():
                output = _run_forward(forward_func, run_inputs, None, run_extra)
        with torch.set_grad_enabled(self.requires_gradients):
            if shared is None:
                scores = select_target_scores(output, target)
            else:
                scores = select_target_scores(model_scores(output)[rows], target)
        raw = capture.activations
        if any(a.shape[0] != len(run_inputs[0]) for a in raw):
            raise FeatureMapError(
                f"The {'input' if attribute_to_layer_input else 'output'} of layer {name} has "
                f"{[a.shape[0] for a in raw]} rows for {len(run_inputs[0])} examples: a CAM "
                "needs one row per example (this layer folds something else into the batch "
                "dimension, as MobileViT's unfolded patches or a detector's boxes do); "
                "explain a layer with one row per example."
            )
        activations = tuple(layout.to_map(a) for a in raw)
        finite = torch.isfinite(scores.detach())
        if not finite.all():
            # Gradients and score differences of a NaN or infinite score are NaN: fail
            # here rather than return a NaN map.
            bad = torch.nonzero(~finite).flatten().tolist()
            raise NonFiniteError(
                f"The model's target score is NaN or infinite for examples {bad}; a CAM "
                "explains a finite score."
            )
        common: dict[str, Any] = {
            "inputs": formatted,
            "target": target,
            "additional_forward_args": extra,
            "scores": scores.detach(),
            "layout": layout,
        }
        per_map: list[dict[str, Any]] = [
            {"activation": a.detach() if shared is None else a.detach()[rows]} for a in activations
        ]
        if self.requires_gradients:
            unused = LayerError(
                f"The target score does not depend on layer {name}: the layer's "
                "output is not used to compute the model's output."
            )
            if not scores.requires_grad:
                raise unused
            if shared is None:
                grads = torch.autograd.grad(
                    scores,
                    raw,
                    grad_outputs=torch.ones_like(scores),
                    allow_unused=True,
                    **(grad_kwargs or {}),
                )
            else:
                grads = _target_gradients(output, raw, target, shared[1], grad_kwargs)
            if any(g is None for g in grads):
                raise unused
            # A finite score can still have a NaN gradient where the model's backward pass
            # divides 0 by 0 (log or sqrt at 0 in a branch the target does not use).
            finite = torch.stack([g.flatten(1).isfinite().all(dim=1) for g in grads]).all(0)
            if not finite.all():
                bad = torch.nonzero(~finite).flatten().tolist()
                raise NonFiniteError(
                    f"The gradient of the target score with respect to layer {name} is NaN "
                    f"or infinite for examples {bad}: the model's backward pass produces it "
                    "(e.g. log or sqrt of 0 in the model, even in a branch the target does "
                    "not use)."
                )
            # d score / d map is the gradient at the values the map was taken from.
            for fields, g in zip(per_map, grads, strict=True):
                fields["gradient"] = layout.to_map(g)
        if self.uses_perturbations:
            if len(activations) != 1:
                raise LayerError(
                    f"Layer {name} has {len(activations)} outputs (inputs); perturbation "
                    "methods explain a single feature map."
                )
            per_map[0]["engine"] = PerturbationEngine(
                forward_func=forward_func,
                inputs=formatted,
                output=model_scores(output).detach()
                if shared is None
                else model_scores(output).detach()[rows],
                additional_forward_args=extra,
                target_rows=None if target is None else target_rows(target, len(scores)),
                perturbations_per_eval=check_perturbations_per_eval(perturbations_per_eval),
                show_progress=show_progress,
                layer_name=name,
                capture_factory=partial(capture_factory, requires_grad=False),
                attribute_to_layer_input=attribute_to_layer_input,
                recorder=recorder,
                layout=layout,
                layer_output=raw[0].detach() if shared is None else raw[0].detach()[rows],
                activation=per_map[0]["activation"],
                pass_rows=None if shared is None else shared[1],
                store=pass_store,
            )
        state_class = _STATE_CLASSES[self.requires_gradients, self.uses_perturbations]
        return tuple(state_class(**common, **fields) for fields in per_map)  # type: ignore[misc]

    def _attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
        relu_attributions: bool,
        attr_dim_summation: bool,
        grad_kwargs: dict[str, Any] | None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        with attribution_call(self.forward_func, type(self).__name__, self.uses_perturbations):
            states = self.layer_state(
                inputs,
                target=target,
                additional_forward_args=additional_forward_args,
                attribute_to_layer_input=attribute_to_layer_input,
                grad_kwargs=grad_kwargs,
                perturbations_per_eval=perturbations_per_eval,
                show_progress=show_progress,
            )
            maps = []
            with torch.no_grad():
                for state in states:
                    scaled = self.terms(state)
                    if attr_dim_summation:
                        scaled = torch.sum(scaled, dim=1, keepdim=True)
                    if relu_attributions:
                        scaled = F.relu(scaled)
                    maps.append(scaled)
        warn_constant_maps(tuple(maps), type(self).__name__)
        return _format_output(len(maps) > 1, tuple(maps))

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input for which attributions are
                computed, (N, ...) with N the number of examples. A tuple when the
                model takes several tensors. Must be floating point; not modified.
            target (int, tuple, Tensor, or list, optional): Output indices to explain
                (for classification, the class), as in Captum: one int or tuple for
                all examples, or a list / 1-D tensor with one entry per example.
                May be omitted only when the model returns one score per example.
                Default: None
            additional_forward_args (Any, optional): Further arguments of the
                forward function, passed after ``inputs``; not attributed.
                Default: None
            attribute_to_layer_input (bool, optional): Explain the layer's input
                instead of its output. Default: False
            relu_attributions (bool, optional): Apply ReLU to the map, as the
                papers do. Captum's default (False) keeps the sign. Default: False
            attr_dim_summation (bool, optional): Sum the weighted activations over
                the channels (dimension 1). Default: True
            grad_kwargs (dict, optional): Extra keyword arguments of
                ``torch.autograd.grad``. Default: None

        The gradient CAMs take these arguments, Captum's ``LayerGradCam``'s, only; the
        perturbation CAMs (:class:`PerturbationLayerCam` and its kin: Score-CAM,
        Group-CAM, Ablation-CAM, FD-CAM) add ``perturbations_per_eval`` and
        ``show_progress``.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**: (N, 1, h, w) at the
            layer's resolution ((N, K, h, w) with ``attr_dim_summation=False``); a
            tuple when the layer has several outputs (inputs). Upsample with
            ``LayerAttribution.interpolate(attr, input.shape[-2:])``.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
            grad_kwargs,
        )


_STATE_CLASSES: dict[tuple[bool, bool], type[CamState]] = {
    (False, False): CamState,
    (True, False): GradientCamState,
    (False, True): PerturbationCamState,
    (True, True): GradientPerturbationCamState,
}


class WeightedLayerCam(LayerCamBase[StateT]):
    """A CAM whose map is :math:`\\sum_k w_k A^k`: it implements only :meth:`weights`."""

    @abstractmethod
    def weights(self, state: StateT) -> Tensor:
        """Weights of the channels of ``state.activation`` (N, K, h, w).

        Returns:
            (N, K, 1, 1) channel weights, or (N, K, h, w) weights per location.
        """

    def terms(self, state: StateT) -> Tensor:
        """``w_k A^k``: :meth:`weights` times the activation, (N, K, h, w)."""
        return self.weights(state) * state.activation


class GradientLayerCam(WeightedLayerCam[GradientCamState], GradientAttribution):
    """Base of the CAMs whose weights come from one backward pass to the layer.

    A method implements ``weights(state)`` from ``state.activation`` and
    ``state.gradient``, both (N, K, h, w) (a :class:`GradientCamState`).
    """

    requires_gradients = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
    ) -> None:
        LayerCamBase.__init__(
            self, forward_func, layer, device_ids, reshape_transform=reshape_transform
        )
        GradientAttribution.__init__(self, forward_func)


class _PerturbationAttribute(LayerCamBase[StateT]):
    """Captum's ``perturbations_per_eval`` and ``show_progress`` in ``attribute``, for
    every CAM that evaluates perturbed copies (weighted or not, as Group-CAM)."""

    requires_gradients = False
    uses_perturbations = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
    ) -> None:
        LayerCamBase.__init__(
            self, forward_func, layer, device_ids, reshape_transform=reshape_transform
        )
        PerturbationAttribution.__init__(self, forward_func)
        if self.requires_gradients:
            GradientAttribution.__init__(self, forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""
        ``inputs``, ``target``, ``additional_forward_args``, ``attribute_to_layer_input``,
        ``relu_attributions``, ``attr_dim_summation`` and ``grad_kwargs`` are as in
        :meth:`LayerCamBase.attribute` (Captum's ``LayerGradCam``).

        Args:
            perturbations_per_eval (int, optional): How many perturbed copies of an
                example go through the model in one forward call, as in Captum's
                perturbation methods. Memory grows with it. Default: 64
            show_progress (bool, optional): Displays the progress of computation: a
                tqdm bar on stderr (Captum's ``progress`` helper, as in Captum's
                ``FeatureAblation``), titled with the method's name, over the
                perturbed copies the method evaluates, one step per copy (one row of
                a forward call of up to ``perturbations_per_eval`` rows; Captum's
                bar counts forward calls instead), the postfix naming them:
                Score-CAM's masked inputs (one per distinct mask, at most K) and
                baseline, Group-CAM's masked inputs (at most ``groups``) and blurred
                input, Ablation-CAM's and FD-CAM's switched copies through the
                network after the layer (K and 2K, fewer where copies coincide), for
                each example; examples with the same input (one image for several
                targets) share all but Group-CAM's masked inputs, which come from the
                target's gradient. The total is known before the first pass and the bar
                ends at 100%; the reference forward (and backward) pass is not
                counted. Weights found in a
                :class:`~captum_fdcam.evaluation.memo.WeightsCache`, or passes it
                stored for the same image and another target, evaluate nothing and
                show no bar. The gradient CAMs do not take this argument.
                Default: False

        Returns:
            *Tensor* of **attributions**, (N, 1, h, w) at the layer's resolution.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
            grad_kwargs,
            perturbations_per_eval,
            show_progress,
        )


class PerturbationLayerCam(
    _PerturbationAttribute[PerturbationCamState],
    WeightedLayerCam[PerturbationCamState],
    PerturbationAttribution,
):
    """Base of the CAMs whose weights come from evaluating perturbed copies.

    A method implements ``weights(state)``, evaluating copies through
    ``state.engine`` (a :class:`PerturbationEngine`, in a :class:`PerturbationCamState`).
    Adds Captum's ``perturbations_per_eval`` and ``show_progress`` to ``attribute``.
    Set :attr:`switches_channels` when the method perturbs the layer's channels.
    """


class GradientPerturbationLayerCam(
    _PerturbationAttribute[GradientPerturbationCamState],
    WeightedLayerCam[GradientPerturbationCamState],
    PerturbationAttribution,
    GradientAttribution,
):
    """Base of the CAMs that use both gradients and perturbations (FD-CAM): ``weights``
    gets a :class:`GradientPerturbationCamState`, with ``gradient`` and ``engine``."""

    requires_gradients = True


#: The name of :class:`CamState` before the states were typed per family; kept for code
#: that imported it.
LayerState = CamState
