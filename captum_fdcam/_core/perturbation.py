"""The perturbation engine shared by Score-CAM, Group-CAM, Ablation-CAM and FD-CAM.

Perturbed copies of one example are evaluated in batches of
``perturbations_per_eval`` (Captum's name and meaning), with an optional progress
bar (``show_progress``), and identical perturbations are evaluated once. Two
kinds of perturbation:

- of the input (:meth:`PerturbationEngine.input_scores`): full forward passes;
- of the layer's channels (:meth:`PerturbationEngine.switch_scores`): only the
  network after the layer runs (see :mod:`captum_fdcam._core.replay`), with a
  one-time warning and full forward passes where the model does not allow it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from captum._utils.progress import progress as captum_progress
from torch import Tensor

from captum_fdcam._core.hooks import LayerCapture
from captum_fdcam._core.layout import FeatureLayout
from captum_fdcam._core.replay import PreLayerRecorder, ReplayError, replay
from captum_fdcam._core.validation import (
    check_integer,
    model_scores,
    owning_module,
    select_target_scores,
)
from captum_fdcam.errors import ModelOutputError, NonFiniteError

#: How a perturbed copy's target score is read from the model's output: the output as it
#: is (``"logit"``), softmax over dimension 1 (``"probability"``), or an element-wise
#: sigmoid (``"sigmoid"``, a multi-label model's per-label probability).
ScoreType = Literal["logit", "probability", "sigmoid"]
#: What the methods' ``score`` takes: a :data:`ScoreType`, or ``"auto"`` (see
#: :meth:`PerturbationEngine.resolve_score`).
ScoreOption = Literal["auto", "logit", "probability", "sigmoid"]
_SCORES = ("auto", "logit", "probability", "sigmoid")


class NonFiniteScoreError(NonFiniteError):
    """The model's target score on a perturbed copy is NaN or infinite."""


def check_score_type(score: str, allowed: tuple[str, ...] = _SCORES) -> ScoreOption:
    if score not in allowed:
        raise ValueError(
            f"score must be one of {', '.join(repr(s) for s in allowed)}, got {score!r}."
        )
    return score  # type: ignore[return-value]


def check_perturbations_per_eval(perturbations_per_eval: int) -> int:
    return check_integer("perturbations_per_eval", perturbations_per_eval)


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype target scores are compared in: at least float32.

    Score-CAM's and Group-CAM's weights are differences of nearby probabilities, which
    keep few of their digits in float16's or bfloat16's short mantissa.
    """
    return torch.promote_types(dtype, torch.float32)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def unique_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Unique rows of a (M, ...) tensor and, for each row, the index of its unique row."""
    unique, inverse = torch.unique(rows.flatten(1), dim=0, return_inverse=True)
    return unique.view(-1, *rows.shape[1:]), inverse


def _switch_plan(activation: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Which switched copies of (K, h, w) ``activation`` need a pass, for (M, K) ``keep``.

    Returns the live (not all-zero) channels (K,), the distinct effective masks (U, K),
    each copy's mask index (M,), which masks equal the unswitched activation (U,), and
    the indices of the masks to evaluate: the others.
    """
    live = activation.flatten(1).ne(0).any(dim=1)
    unique, inverse = unique_rows(keep & live)
    is_reference = (unique == live).all(dim=1)
    return live, unique, inverse, is_reference, torch.nonzero(~is_reference).flatten()


@dataclass
class PerturbationEngine:
    """Evaluates perturbed copies of each example of a batch, in chunks.

    Built by the CAM base for one ``attribute`` call; methods use it through
    :meth:`input_scores` and :meth:`switch_scores`.
    """

    forward_func: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    output: Tensor
    additional_forward_args: Any
    target_rows: list[tuple[int, ...]] | None
    perturbations_per_eval: int
    show_progress: bool
    layer_name: str
    capture_factory: Callable[..., LayerCapture]
    attribute_to_layer_input: bool = False
    recorder: PreLayerRecorder | None = None
    #: The layer's feature layout and its own output (N, ...), in which the switched
    #: copies go back into the network.
    layout: FeatureLayout | None = None
    layer_output: Tensor | None = None
    _bar: Any = None
    _fallback_warned: bool = field(default=False)

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    # ----------------------------------------------------------------- helpers

    def _example_args(self, sample: int, rows: int) -> tuple[Any, ...]:
        """Additional forward args of example ``sample``, expanded to ``rows``."""
        if self.additional_forward_args is None:
            return ()
        out = []
        for arg in self.additional_forward_args:
            if isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == self.batch_size:
                arg = arg[sample : sample + 1].expand(rows, *arg.shape[1:])
            out.append(arg)
        return tuple(out)

    def resolve_score(self, score: ScoreOption) -> ScoreType:
        """The score unit of this call: ``score`` itself, or for ``"auto"``:

        - the ``default_score`` the model declares (an attribute of the module behind
          ``forward_func``: the wrappers of :mod:`captum_fdcam.targets`, whose outputs
          are the scores to explain, declare ``"logit"``);
        - ``"logit"`` for a model with one output per example (a regression, a single
          logit), where a softmax would be 1 for every input;
        - ``"probability"`` otherwise (softmax over the classes, as the papers).

        Raises:
            ModelOutputError: ``"probability"`` asked for a model with one output.
        """
        per_example = self.output[0].numel() if self.output.dim() > 0 else 1
        if score == "auto":
            declared = getattr(owning_module(self.forward_func), "default_score", None)
            if declared in ("logit", "probability", "sigmoid"):
                score = declared
            else:
                score = "logit" if per_example == 1 else "probability"
        if score == "probability" and (self.output.dim() < 2 or self.output.shape[1] == 1):
            raise ModelOutputError(
                f"score='probability' takes a softmax over dimension 1 of the model's output, "
                f"which has shape {tuple(self.output.shape)}: with one output it is 1 for every "
                "input and every weight is 0. Use score='logit' (the default 'auto' picks it "
                "for one-output models) or score='sigmoid' for a binary or multi-label model."
            )
        return score

    def _scores(self, output: Any, sample: int, score: ScoreType) -> Tensor:
        output = model_scores(output)
        output = output.to(score_dtype(output.dtype))
        if score == "probability":
            output = output.softmax(dim=1)
        elif score == "sigmoid":
            output = output.sigmoid()
        rows = None if self.target_rows is None else [self.target_rows[sample]] * len(output)
        scores = select_target_scores(output, rows)
        if not torch.isfinite(scores).all():
            # A NaN score would make every weight, and so the map, NaN (e.g. a model that
            # normalises its input divides by zero on Score-CAM's all-zero baseline).
            raise NonFiniteScoreError(
                f"The model's target score is NaN or infinite on a perturbed copy of example "
                f"{sample}; the perturbation methods need finite scores (for Score-CAM, "
                "try another baseline)."
            )
        return scores

    def _forward(self, inputs: tuple[Tensor, ...], sample: int) -> Tensor:
        return self.forward_func(*inputs, *self._example_args(sample, inputs[0].shape[0]))

    def reference(self, sample: int, score: ScoreType) -> Tensor:
        """The unperturbed target score of example ``sample`` (0-d tensor)."""
        return self._scores(self.output[sample : sample + 1], sample, score)[0]

    @contextmanager
    def progress(
        self, total: int | Callable[[], int], desc: str, unit: str | None = None
    ) -> Iterator[None]:
        """Shows a progress bar of the perturbed copies evaluated, when ``show_progress``.

        The one progress bar of the perturbation methods: :meth:`input_scores` and
        :meth:`switch_scores` advance it by one step per perturbed copy they evaluate
        (one row of a forward call of up to ``perturbations_per_eval`` rows), so a
        method only wraps its loop over the examples in ``with engine.progress(...)``.
        The bar is Captum's ``progress`` helper (tqdm, written to stderr), titled
        ``desc`` (the method's name), with ``unit`` (what a step is, e.g. ``"masked
        inputs"``) as its postfix: ``Score-CAM: 100%|...| 13/13 [..., masked inputs]``.

        ``total`` counts what will really run (copies left after deduplication and
        short-cuts), so that the bar ends at 100%; a function is called only when
        the bar is shown, for totals that cost a pass over the activations to count.
        The reference forward (and backward) pass of ``attribute`` is not counted.
        Without ``show_progress`` nothing is created or written.
        """
        if self.show_progress:
            self._bar = captum_progress(desc=desc, total=total() if callable(total) else total)
            # Captum's fallback bar where tqdm is missing (Captum < 0.8) has no postfix.
            if unit is not None and hasattr(self._bar, "set_postfix_str"):
                self._bar.set_postfix_str(unit)
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    # ------------------------------------------------------- input perturbation

    @torch.no_grad()
    def input_scores(
        self,
        sample: int,
        count: int,
        make_inputs: Callable[[int, int], tuple[Tensor, ...]],
        score: ScoreType,
    ) -> Tensor:
        """Scores of ``count`` perturbed inputs of example ``sample``.

        Args:
            sample: the example's index in the batch.
            count: the number of perturbed inputs.
            make_inputs: ``(start, stop) -> inputs`` of the perturbations
                ``start:stop``, each tensor of shape (stop - start, ...).
            score: ``'logit'`` or ``'probability'`` (softmax over dimension 1).

        Returns:
            (count,) target scores.
        """
        out = []
        for start, stop in _chunks(count, self.perturbations_per_eval):
            output = self._forward(make_inputs(start, stop), sample)
            out.append(self._scores(output, sample, score))
            self._advance(stop - start)
        if not out:  # in the dtype of the scores, as for count > 0
            return self.output.new_zeros(0, dtype=score_dtype(self.output.dtype))
        return torch.cat(out)

    # ----------------------------------------------------- channel switching

    @torch.no_grad()
    def switch_scores(
        self,
        sample: int,
        activation: Tensor,
        keep: Tensor,
        reference: Tensor,
        score: ScoreType,
    ) -> Tensor:
        """Scores of the network after the layer on channel-switched activations.

        Args:
            sample: the example's index in the batch.
            activation: (K, h, w) the example's activations at the layer.
            keep: (M, K) boolean, the channels kept (switched on) in each copy.
            reference: the example's unswitched score, in the same ``score`` unit.
            score: ``'logit'`` or ``'probability'``.

        Returns:
            (M,) target scores. Copies whose switched activations are identical
            (they differ only on all-zero channels) are evaluated once; a copy equal
            to the unswitched activation gets ``reference`` without evaluation.
        """
        live, unique, inverse, is_reference, todo = _switch_plan(activation, keep)
        scores = torch.empty(len(unique), dtype=reference.dtype, device=reference.device)
        scores[is_reference] = reference
        # The first batch carries the unswitched activation too: if the short-cut
        # forward does not reproduce the reference score, it is not trusted.
        check = self.recorder is not None
        for start, stop in _chunks(len(todo), self.perturbations_per_eval):
            masks = unique[todo[start:stop]]
            if check:
                masks = torch.cat([live[None], masks])
            if self.layout is not None and self.layer_output is not None:
                raw = self.layer_output[sample : sample + 1]
                copies = self.layout.switched(raw, activation, masks)
            else:
                copies = activation[None] * masks[:, :, None, None].to(activation.dtype)
            result = self._switched_forward(sample, copies, reference, score, check)
            if check:
                result = result[1:]
                check = False
            scores[todo[start:stop]] = result.to(scores.dtype)
            self._advance(stop - start)
        return scores[inverse]

    @staticmethod
    def switch_passes(activation: Tensor, keep: Tensor) -> int:
        """How many copies :meth:`switch_scores` evaluates for these arguments."""
        return len(_switch_plan(activation, keep)[-1])

    def _switched_forward(
        self, sample: int, copies: Tensor, reference: Tensor, score: ScoreType, check: bool
    ) -> Tensor:
        rows = copies.shape[0]
        inputs = tuple(x[sample : sample + 1].expand(rows, *x.shape[1:]) for x in self.inputs)
        if self.recorder is not None and self.recorder.usable:
            try:
                output = replay(
                    lambda: self._forward(inputs, sample),
                    self.recorder,
                    sample,
                    copies,
                    self.attribute_to_layer_input,
                )
                result = self._scores(output, sample, score)
                if not check or torch.allclose(
                    result[0], reference, rtol=1e-3, atol=1e-4 * (1 + reference.abs().item())
                ):
                    return result
                reason = "the unswitched copy did not reproduce the model's score"
            except NonFiniteScoreError:
                raise  # the model's own scores, not the replay: full passes give the same
            except (ReplayError, RuntimeError, ValueError, IndexError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.recorder = None
            if not self._fallback_warned:
                warnings.warn(
                    f"captum_fdcam: cannot run only the network after layer {self.layer_name} "
                    f"({reason}); falling back to full forward passes for the switched "
                    "copies (slower: the part before the layer is recomputed).",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._fallback_warned = True
        capture = self.capture_factory(replace=lambda _: (copies,))
        with capture:
            output = self._forward(inputs, sample)
        return self._scores(output, sample, score)
