"""Layer-by-layer relevance propagation on any PyTorch model, by autograd.

How it works: during one forward pass, the output of every module that has a
rule is routed through a custom autograd function. The backward pass then
carries, at every tensor x, the *relevance per unit of activation* c = R / x
(Captum's ``LRP`` carries R itself). A module with a rule turns the c at its
output into ``R_out = y * c``, applies its rule, and hands ``c_in = R_in / x``
to autograd. Everything written as plain tensor code in a ``forward`` then
propagates relevance correctly by ordinary differentiation:

* a residual addition ``y = a + b`` gives both summands y's c, so
  ``R_a = a * c`` and ``R_b = b * c``: the relevance is split in proportion to
  each summand's contribution and ``R_a + R_b = R_y`` (Captum's ``LRP`` copies
  ``R_y`` to both, which doubles it at every block of a ResNet);
* concatenation, slicing, reshaping, zero padding and ``F.relu`` move c with
  the values, which keeps R with them;
* a module called several times (EfficientNet's shared activation) gets one
  routing per call.

Relevance reaching the model's own input through a rule is kept exactly
(z^B gives relevance to inputs whose value is 0, which c = R / x would lose).

No weight is changed, not even for an instant (another thread may run the same
model): rules compute with rewritten copies of the weights, on shallow copies of
the module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum._utils.common import _run_forward
from captum.attr._utils.lrp_rules import IdentityRule, PropagationRule
from torch import Tensor, nn
from torch.nn import Module
from torch.utils.hooks import RemovableHandle

from captum_fdcam._core.hooks import this_thread_only
from captum_fdcam._core.validation import layer_name, model_scores
from captum_fdcam.errors import LayerError, UnsupportedModuleError
from captum_fdcam.propagation.assignment import (
    PASSTHROUGH,
    RuleAssignment,
    missing_rule_message,
    unsupported_reason,
)
from captum_fdcam.propagation.modes import ContextRule, OperationGuard
from captum_fdcam.propagation.rules import relevance_ratio, rule_ratio, rule_relevance


class _StopForward(Exception):
    """Raised by the start layer's hook: nothing after it is needed."""


@dataclass
class _Frame:
    """One call of a module with a rule, between its pre-hook and its hook."""

    rule: PropagationRule
    args: tuple[Any, ...]
    slots: tuple[int | None, ...]
    grad_enabled: bool


@dataclass
class _RoutedCall:
    """What the backward pass needs of one call of a module with a rule."""

    session: _Session
    module: Module
    rule: PropagationRule
    output: Tensor
    slots: tuple[int | None, ...]


class _RuleFunction(torch.autograd.Function):
    """Identity in the forward pass; the module's rule in the backward pass."""

    @staticmethod
    def forward(ctx: Any, call: _RoutedCall, *inputs: Tensor) -> Tensor:
        ctx.call = call
        # Saved for autograd's check that no later in-place operation changed them.
        ctx.save_for_backward(*inputs)
        # Downstream code gets a copy: in-place operations on it (ResNet's
        # ``out += identity``) must not change the output the rule reads.
        return call.output.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        call: _RoutedCall = ctx.call
        inputs = tuple(x.detach() for x in ctx.saved_tensors)
        return (None, *call.session.rule_backward(call, inputs, grad_output))


@dataclass
class _Session:
    """Hooks and bookkeeping of one propagation; removed when it ends."""

    model: Module
    assignment: RuleAssignment
    leaves: tuple[Tensor, ...]
    start: Module | None
    end: Module | None
    end_input: bool
    #: Stop the forward pass at ``start`` (else the rest runs without routing).
    stop_at_start: bool = True
    paused: bool = False
    inside: int = 0
    frames: list[_Frame | None] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)
    start_output: Tensor | None = None
    start_depth: int = 0
    #: The latest routed call: (what it returned, the call, its inputs).
    last_routed: tuple[Tensor, _RoutedCall, tuple[Tensor, ...]] | None = None
    #: The routed call that produced the start tensor, if one did.
    start_call: tuple[_RoutedCall, tuple[Tensor, ...]] | None = None
    end_tensors: tuple[Tensor, ...] | None = None
    input_relevance: list[Tensor] = field(default_factory=list)
    #: The context rules' calls in progress: (module, its entered context).
    contexts: list[tuple[Module, Any]] = field(default_factory=list)
    #: The modules being run, innermost last (for messages).
    running: list[Module] = field(default_factory=list)
    guard: OperationGuard | None = None
    #: Relevance the routed rules keep, by kind, while shares are asked for.
    accounting: dict[str, float] | None = None

    def install(self) -> None:
        self.input_relevance = [torch.zeros_like(x) for x in self.leaves]
        # A softmax outside every attention module's rule would be crossed by its plain
        # gradient: refused while the propagation's part of the forward pass runs.
        self.guard = OperationGuard(
            lambda: not self.paused and not self.inside,
            lambda: self._name(self.running[-1]) if self.running else "The model",
        )
        self.guard.__enter__()
        own = this_thread_only
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(own(self._pre)))
            self.handles.append(module.register_forward_hook(own(self._post)))
        # Captures run before the rules' pre-hooks (to see the original inputs)
        # and after the rules' hooks (to see the routed outputs).
        if self.end is not None:
            if self.end_input:
                self.handles.append(
                    self.end.register_forward_pre_hook(own(self._capture_end_input), prepend=True)
                )
            else:
                self.handles.append(self.end.register_forward_hook(own(self._capture_end_output)))
        if self.start is not None:
            self.handles.append(
                self.start.register_forward_pre_hook(own(self._enter_start), prepend=True)
            )
            self.handles.append(self.start.register_forward_hook(own(self._capture_start)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.close_contexts()
        if self.guard is not None:
            self.guard.__exit__(None, None, None)
            self.guard = None
        self.running.clear()
        # The autograd graph refers to this session (through each routed call) and
        # these refer to the graph: a cycle through C++ nodes that Python's
        # collector cannot break, so it is cut here.
        self.frames.clear()
        self.last_routed = None
        self.start_call = None
        self.start_output = None
        self.end_tensors = None

    def _name(self, module: Module) -> str:
        return layer_name(self.model, module)

    def pause(self) -> None:
        """Stops recording: later module calls run as if the hooks were not there, and the
        softmax guard, whose check costs every torch call a Python dispatch, is left
        where nothing was entered after it (a start layer inside an attention module
        keeps it until the session ends)."""
        self.paused = True
        if self.guard is not None and not self.contexts:
            self.guard.__exit__(None, None, None)
            self.guard = None

    def close_contexts(self) -> None:
        """Leaves the context rules' contexts a stopped forward pass left entered."""
        while self.contexts:
            self.contexts.pop()[1].__exit__(None, None, None)

    def _slot(self, value: Any) -> int | None:
        for i, leaf in enumerate(self.leaves):
            if value is leaf:
                return i
        return None

    def _pre(self, module: Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.paused:
            return None
        self.running.append(module)
        if self.inside or not self.assignment.has_rule(module):
            if not self.inside:
                # Checked on composite modules too: MultiheadAttention's children
                # are never called, so nothing inside it would raise.
                reason = unsupported_reason(module)
                if reason is not None:
                    raise UnsupportedModuleError(f"No LRP rule for {self._name(module)}: {reason}")
                if next(module.children(), None) is None and not isinstance(module, PASSTHROUGH):
                    raise UnsupportedModuleError(missing_rule_message(self.model, module))
            self.frames.append(None)
            return None
        slots = tuple(self._slot(a) for a in args)
        receives_input = any(s is not None for s in slots)
        rule = self.assignment.rule(module, receives_input=receives_input)
        assert rule is not None  # has_rule() said so
        if isinstance(rule, ContextRule):
            # The module's forward pass builds a changed graph, which relevance follows;
            # the modules it calls keep their rules.
            context = rule.context(module)
            context.__enter__()
            self.contexts.append((module, context))
            self.frames.append(None)
            return None
        if (
            type(module) is nn.ReLU
            and type(rule) is IdentityRule
            and not receives_input
            and not self.start_depth
        ):
            # ReLU's own gradient already is the identity rule for R / x: autograd
            # does it in one pass, without routing. Not where relevance starts,
            # which may be non-zero where the ReLU's output is 0.
            self.frames.append(None)
            return None
        self.frames.append(_Frame(rule, args, slots, torch.is_grad_enabled()))
        self.inside += 1
        # The module's own graph is never used: the rule replaces it.
        torch.set_grad_enabled(False)
        if getattr(module, "inplace", False):
            # An in-place module would overwrite the input its rule reads.
            return tuple(a.clone() if isinstance(a, Tensor) else a for a in args)
        return None

    def _post(self, module: Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
        if self.guard is not None and self.guard.problem is not None:
            raise UnsupportedModuleError(self.guard.problem)
        if self.contexts and self.contexts[-1][0] is module:
            # Also after the start layer paused the session: the context was entered.
            self.contexts.pop()[1].__exit__(None, None, None)
        if self.running and self.running[-1] is module:
            self.running.pop()
        if self.paused:
            return None
        frame = self.frames.pop()
        if frame is None:
            return None
        self.inside -= 1
        torch.set_grad_enabled(frame.grad_enabled)
        if not isinstance(output, Tensor):
            raise UnsupportedModuleError(
                f"{self._name(module)} returns {type(output).__name__}; relevance propagates "
                "through modules that return one tensor."
            )
        pairs = [
            (a, s) for a, s in zip(frame.args, frame.slots, strict=True) if isinstance(a, Tensor)
        ]
        inputs = tuple(a for a, _ in pairs)
        call = _RoutedCall(self, module, frame.rule, output.detach(), tuple(s for _, s in pairs))
        routed = _RuleFunction.apply(call, *inputs)
        self.last_routed = (routed, call, inputs)
        return routed

    def _check_outside_rule(self, module: Module) -> None:
        if self.inside:
            raise LayerError(
                f"{self._name(module)} is inside a module whose rule covers it as a whole: "
                "no relevance is computed for it. Choose a layer outside that module."
            )

    def _capture_end_input(self, module: Module, args: tuple[Any, ...]) -> None:
        if self.paused:
            return
        self._check_outside_rule(module)
        if self.end_tensors is not None:
            raise LayerError(
                f"{self._name(module)} is called more than once in one forward pass; its "
                "input is ambiguous. Explain a module called once."
            )
        self.end_tensors = tuple(a for a in args if isinstance(a, Tensor))

    def _capture_end_output(self, module: Module, args: tuple[Any, ...], output: Any) -> Any:
        if self.paused:
            return None
        self._check_outside_rule(module)
        if self.end_tensors is not None:
            raise LayerError(
                f"{self._name(module)} is called more than once in one forward pass; its "
                "output is ambiguous. Explain a module called once."
            )
        if not isinstance(output, Tensor):
            raise UnsupportedModuleError(
                f"{self._name(module)} returns {type(output).__name__}, not a tensor."
            )
        self.end_tensors = (output,)
        # The rest of the network gets a copy, so in-place operations cannot
        # change the values the relevance is read from.
        return output.clone()

    def _capture_start(self, module: Module, args: tuple[Any, ...], output: Any) -> None:
        if self.paused:
            return
        self._check_outside_rule(module)
        if not isinstance(output, Tensor):
            raise UnsupportedModuleError(
                f"{self._name(module)} returns {type(output).__name__}, not a tensor."
            )
        self.start_output = output
        self.start_call = self.routed_call(output)
        if self.stop_at_start:
            raise _StopForward
        # Nothing after the start layer propagates relevance: the rest of this
        # pass, and any later pass, runs as if the hooks were not there, and
        # without a graph unless the caller's own hooks switch it back on.
        self.pause()
        torch.set_grad_enabled(False)

    def _enter_start(self, module: Module, args: tuple[Any, ...]) -> None:
        if not self.paused:
            self.start_depth += 1

    def routed_call(self, output: Tensor) -> tuple[_RoutedCall, tuple[Tensor, ...]] | None:
        """The routed call that returned ``output``, if the latest one did."""
        if self.last_routed is not None and self.last_routed[0] is output:
            return self.last_routed[1], self.last_routed[2]
        return None

    def rule_backward(
        self, call: _RoutedCall, inputs: tuple[Tensor, ...], grad_output: Tensor
    ) -> list[Tensor | None]:
        return self.input_ratios(call, inputs, call.output * grad_output)

    def input_ratios(
        self, call: _RoutedCall, inputs: tuple[Tensor, ...], relevance: Tensor
    ) -> list[Tensor | None]:
        """``R_in / x`` for each input of a routed call from the relevance at its
        output; relevance of the model's own inputs goes to ``input_relevance``."""
        exact = any(slot is not None for slot in call.slots)
        apply = rule_relevance if exact else rule_ratio
        results = apply(call.rule, call.module, inputs, call.output, relevance)
        if len(results) != len(inputs):
            raise RuntimeError(
                f"The rule of {self._name(call.module)} returned {len(results)} relevance "
                f"tensors for {len(inputs)} inputs."
            )
        if self.accounting is not None:
            # What the rule did not pass on (a bias in its denominator, a 0 / 0 it
            # dropped): the rules' share of the start relevance.
            passed = sum(
                (r if exact else x * r).sum() for x, r in zip(inputs, results, strict=True)
            )
            self.accounting["rules"] = self.accounting.get("rules", 0.0) + float(
                relevance.sum() - passed
            )
        if not exact:
            return list(results)
        grads: list[Tensor | None] = []
        for x, r, slot in zip(inputs, results, call.slots, strict=True):
            if slot is None:
                grads.append(relevance_ratio(r, x))
            else:
                # The model's input keeps its relevance exactly (z^B gives some
                # to pixels whose value is 0).
                self.input_relevance[slot] += r
                grads.append(None)
        return grads


class Propagation:
    """One forward pass with rules attached, then the relevance backward pass.

    Use as a context manager: the hooks are removed when it ends, also on errors.
    Inside it, run the model once on :attr:`inputs` (gradients must be enabled
    for the part before ``start``), then call :meth:`relevance`. With
    ``stop_at_start=False`` the forward pass runs to the end, unrouted after
    ``start``, so the same pass can serve another method (a base CAM).

    Args:
        model: the model.
        assignment: the rule of each module.
        inputs: the model's inputs (not modified; :attr:`inputs` are detached
            copies that require gradients).
        start: the module where relevance starts (``None``: the model's output).
        end: the layer whose output (input with ``end_input``) receives the
            relevance, where propagation ends; ``None`` for the model's inputs. (Not
            called ``target``: that is the class explained, everywhere else.)
        end_input: relevance of ``end``'s input instead of its output.
        stop_at_start: stop the forward pass at ``start``.
    """

    def __init__(
        self,
        model: Module,
        assignment: RuleAssignment,
        inputs: tuple[Tensor, ...],
        start: Module | None = None,
        end: Module | None = None,
        end_input: bool = False,
        stop_at_start: bool = True,
    ) -> None:
        self.inputs = tuple(x.detach().requires_grad_() for x in inputs)
        self._session = _Session(
            model, assignment, self.inputs, start, end, end_input, stop_at_start
        )
        self.output: Tensor | None = None

    def __enter__(self) -> Propagation:
        self._session.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.remove()

    def forward(self, additional_forward_args: Any) -> None:
        """Runs the model (up to ``start`` when stopping there)."""
        with torch.enable_grad():
            try:
                self.output = _run_forward(
                    self._session.model, self.inputs, None, additional_forward_args
                )
            except _StopForward:
                self.output = None
                self._session.close_contexts()

    def relevance(
        self, start_relevance: Callable[[Tensor], Tensor], shares: dict[str, float] | None = None
    ) -> tuple[Tensor, ...]:
        """Propagates from ``start`` to ``end``.

        Args:
            start_relevance: maps the (detached) output of ``start`` (or the
                model's output) to the relevance there, same shape.
            shares: a dict to fill with where the start relevance went, summed over
                the batch (see :func:`relevance_shares`).

        Returns:
            The relevance of each tensor of ``end`` (or of each input), detached.
        """
        session = self._session
        if shares is not None:
            session.accounting = {}
        session.pause()
        start, end = session.start, session.end
        if start is None:
            # A Hugging Face output object: relevance starts at its logits.
            origin = model_scores(self.output)
        else:
            origin = session.start_output
            if origin is None:
                raise LayerError(f"{session._name(start)} was not called in the forward pass.")
        if end is None:
            wrt: Sequence[Tensor] = self.inputs
        elif session.end_tensors is None:
            where = "" if start is None else f" before {session._name(start)}"
            raise LayerError(
                f"{session._name(end)} is not called{where} in the forward pass: "
                "relevance propagates from the output towards the input only."
            )
        else:
            wrt = session.end_tensors
        value = origin.detach()
        relevance = start_relevance(value)
        # Parameters the relevance can end on in code without a rule (class tokens,
        # position embeddings, biases of LayerNorm and attention): their gradient x value.
        kept = _additive_parameters(session.model) if shares is not None else []
        routed = session.start_call if start is not None else session.routed_call(origin)
        with torch.enable_grad():
            if routed is None:
                outputs, ratios = [origin], [relevance_ratio(relevance, value)]
            else:
                # The module that produced the start tensor applies its rule to the
                # relevance itself: R / x would drop relevance where its output is 0
                # (denoised components, a ReLU's dead units).
                call, call_inputs = routed
                found = session.input_ratios(
                    call, tuple(x.detach() for x in call_inputs), relevance
                )
                pairs = [(x, c) for x, c in zip(call_inputs, found, strict=True) if c is not None]
                outputs = [x for x, _ in pairs if x.requires_grad]
                ratios = [c for x, c in pairs if x.requires_grad]
            targets = [*wrt, *(p for _, p in kept)]
            found_grads = (
                torch.autograd.grad(outputs, targets, ratios, allow_unused=True)
                if outputs
                else (None,) * len(targets)
            )
            grads = found_grads[: len(wrt)]
        if shares is not None:
            shares["start"] = float(relevance.sum())
            for (kind, parameter), grad in zip(kept, found_grads[len(wrt) :], strict=True):
                share = 0.0 if grad is None else float((parameter.detach() * grad).sum())
                shares[kind] = shares.get(kind, 0.0) + share
            shares.update(session.accounting or {})
            session.accounting = None
        results = []
        for tensor, grad in zip(wrt, grads, strict=True):
            slot = session._slot(tensor)
            if grad is None and slot is None:
                name = "The input" if end is None else session._name(end)
                raise LayerError(
                    f"{name} does not lead to the layer where relevance starts: no "
                    "relevance reaches it."
                )
            own = torch.zeros_like(tensor) if grad is None else tensor.detach() * grad
            results.append(own if slot is None else own + session.input_relevance[slot])
        return tuple(results)


#: The kinds of parameters relevance can end on, by the last part of their names.
_POSITION = ("pos_embed", "pos_embedding", "position_embeddings", "absolute_pos_embed")
_TOKENS = (
    "cls_token",
    "class_token",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)


def _additive_parameters(model: Module) -> list[tuple[str, Tensor]]:
    """The parameters that enter the network by addition or concatenation, by kind:
    relevance reaching them (gradient x value) stays there. Multiplicative ones (weights,
    layer scales) are left out: their gradient x value is not relevance kept."""
    kept = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        if last in _POSITION:
            kept.append(("position embeddings", parameter))
        elif last in _TOKENS:
            kept.append(("class, distillation and register tokens", parameter))
        elif "bias" in last:
            kept.append(("biases", parameter))
    return kept


def propagate(
    model: Module,
    assignment: RuleAssignment,
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any,
    start_relevance: Callable[[Tensor], Tensor],
    start: Module | None = None,
    end: Module | None = None,
    end_input: bool = False,
    shares: dict[str, float] | None = None,
) -> tuple[Tensor, ...]:
    """Propagates relevance from ``start`` (or the model's output) to ``end``.

    One forward pass (stopped at ``start``) and one backward pass; see
    :class:`Propagation` for the arguments and ``shares``.
    """
    with Propagation(model, assignment, inputs, start, end, end_input) as run:
        run.forward(additional_forward_args)
        return run.relevance(start_relevance, shares)


#: The kinds of :func:`relevance_shares`, in the order of its dict.
SHARE_KINDS = (
    "start",
    "end",
    "position embeddings",
    "class, distillation and register tokens",
    "biases",
    "rules",
    "tokens outside the map",
    "other",
)


def relevance_shares(
    run_one: Callable[[int, dict[str, float]], tuple[Tensor, ...]], count: int
) -> dict[str, Tensor]:
    """Where each example's start relevance ends, one propagation per example.

    ``run_one(i, shares)`` propagates example ``i`` alone, filling ``shares`` (see
    :meth:`Propagation.relevance`), and returns the relevance at the end. The result
    has one (N,) float64 tensor per kind of :data:`SHARE_KINDS`:

    - ``start``: the relevance where propagation starts (the target's logit for LRP, the
      CAM's mass at its layer for FG-CAM);
    - ``end``: the relevance at the end (the input's or the layer's), the map's sum;
    - ``position embeddings``, ``class, distillation and register tokens``, ``biases``:
      what parameters that enter by addition keep (gradient x value), in the code
      without a rule (LayerNorm and attention included: their biases);
    - ``rules``: what the layers with a routed rule keep (z+ ignores biases; a neuron
      whose every contribution is 0 keeps its relevance);
    - ``tokens outside the map``: FG-CAM at a token layer: what its class token (or
      another token the layer's map leaves out) holds;
    - ``other``: the rest (AttnLRP's softmax remainder, buffers added in the forward
      pass, rounding): ``start - end - the others``.
    """
    kinds = {kind: [] for kind in SHARE_KINDS}
    for i in range(count):
        shares: dict[str, float] = {}
        ends = run_one(i, shares)
        shares["end"] = float(sum(r.sum() for r in ends))
        shares["other"] = shares["start"] - sum(
            value for kind, value in shares.items() if kind not in ("start", "other")
        )
        for kind in SHARE_KINDS:
            kinds[kind].append(shares.get(kind, 0.0))
    return {kind: torch.tensor(values, dtype=torch.float64) for kind, values in kinds.items()}
