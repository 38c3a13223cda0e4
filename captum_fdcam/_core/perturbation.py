"""The perturbation engine shared by Score-CAM, Group-CAM, Ablation-CAM and FD-CAM.

Perturbed copies of one example are evaluated in batches of
``perturbations_per_eval`` (Captum's name and meaning), with an optional progress
bar (``show_progress``), and identical perturbations are evaluated once. Two
kinds of perturbation:

- of the input (:meth:`PerturbationEngine.input_scores`): full forward passes;
- of the layer's channels (:meth:`PerturbationEngine.switch_scores`): only the
  network after the layer runs (see :mod:`captum_fdcam._core.replay`), with a
  one-time warning and full forward passes where the model does not allow it.

These passes do not depend on the target: each gives every class's score at once and
only the target's is read. Examples of a batch with the same input (the rows of one
image explained for several targets, see :func:`distinct_examples`) share them: the
reference pass runs once per distinct input (:meth:`LayerCamBase.layer_state
<captum_fdcam._core.base.LayerCamBase.layer_state>`), and the engine evaluates each
shared set of perturbed copies once for the group, reading each example's target from
the same outputs. A :class:`PassStore` (the one of a
:class:`~captum_fdcam.evaluation.memo.WeightsCache`, or FG-CAM's for one call) keeps
those outputs for later calls on the same input with other targets.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
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


def digest(value: Any) -> str:
    """A hash of tensors' and arrays' shapes, dtypes and values (nested in tuples /
    lists), or of the ``repr`` of anything else."""
    h = hashlib.blake2b(digest_size=16)

    def add(v: Any) -> None:
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            # numpy has no bfloat16: its values are exact in float32
            h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        elif isinstance(v, tuple | list):
            h.update(f"S{len(v)}".encode())
            for x in v:
                add(x)
        else:
            h.update(repr(v).encode())

    add(value)
    return h.hexdigest()


_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _row_bits(t: Tensor, n: int) -> Tensor:
    """The bits of each of the n rows of ``t`` as integers, (n, B): rows with equal bits
    are equal here, and only they (``-0.0`` and ``0.0`` differ, as NaNs of one payload
    do not)."""
    flat = t.detach().reshape(n, -1)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8)
    size = flat.element_size()
    if size in _INTEGER_OF_SIZE:
        return flat.view(_INTEGER_OF_SIZE[size])
    return flat.contiguous().view(torch.int64)  # complex128: two int64 per value


def batch_rows(args: Any, n: int) -> list[Tensor]:
    """The tensors of ``args`` (formatted additional forward arguments) with one row per
    example: those the engine slices per example (``arg[i : i + 1]``)."""
    if args is None:
        return []
    return [a for a in args if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n]


def distinct_examples(inputs: Sequence[Tensor], args: Any = None) -> tuple[list[int], list[int]]:
    """Which examples of a batch are the same: equal bit for bit in every input and in
    every per-example additional forward argument.

    Rows are fingerprinted on their device (sums of their bits as integers, plain and
    position-weighted; one synchronisation), and rows with equal fingerprints are
    confirmed bit for bit (``torch.equal`` of the bits).

    Returns:
        The index of the first example of each distinct one, in order (U,), and for each
        example the index of its distinct example among them (N,).
    """
    n = inputs[0].shape[0]
    if n <= 1:
        return list(range(n)), list(range(n))
    bits = [_row_bits(t, n) for t in (*inputs, *batch_rows(args, n))]
    prints = []
    for b in bits:
        wide = b.to(torch.int64)
        weights = torch.arange(wide.shape[1], device=wide.device, dtype=torch.int64) % 8191 + 1
        prints += [wide.sum(dim=1), (wide * weights).sum(dim=1)]
    keys = [tuple(row) for row in torch.stack(prints, dim=1).tolist()]
    first: list[int] = []
    inverse: list[int] = []
    candidates: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(keys):
        for u in candidates.get(key, ()):
            j = first[u]
            if all(torch.equal(b[i], b[j]) for b in bits):
                inverse.append(u)
                break
        else:
            candidates.setdefault(key, []).append(len(first))
            inverse.append(len(first))
            first.append(i)
    return first, inverse


def target_groups(inverse: list[int], rows: list[Any] | None) -> tuple[list[list[int]], list[int]]:
    """For each distinct input (``inverse``: each example's, :func:`distinct_examples`),
    its first example of each distinct target, in order; and for each example, the
    example whose input and target it shares (itself, or an earlier one). ``rows``:
    each example's target (None: the model's one output)."""
    seen: dict[tuple[int, Any], int] = {}
    per_input: list[list[int]] = [[] for _ in range(max(inverse, default=-1) + 1)]
    source = []
    for i, u in enumerate(inverse):
        key = (u, None if rows is None else rows[i])
        if key not in seen:
            seen[key] = i
            per_input[u].append(i)
        source.append(seen[key])
    return per_input, source


@dataclass(frozen=True)
class StoredPasses:
    """The outputs of one set of perturbed copies of one input, every class's score
    (after the score's softmax or sigmoid), in the order they were evaluated.

    Attributes:
        outputs: (M, ...) one row per copy.
        check: for copies through the network after the layer only, the output of the
            unswitched copy that checked that short-cut (one row); ``None`` otherwise.
    """

    outputs: Tensor
    check: Tensor | None = None

    @property
    def nbytes(self) -> int:
        extra = 0 if self.check is None else self.check.numel() * self.check.element_size()
        return self.outputs.numel() * self.outputs.element_size() + extra


class PassStore:
    """Outputs of target-independent perturbation passes, by what they were computed
    from, keeping the latest up to ``max_bytes``.

    Keys name the method's tag, the example (its inputs', additional arguments',
    activation's and layer output's digests), the kind of copies, the score unit and
    ``perturbations_per_eval``: a later call on the same input with another target reads
    its target's scores from the stored outputs, which are those its own passes would
    compute (the same copies, in the same batches). Sets of copies whose outputs exceed
    ``max_bytes`` (a dense model output) are not kept.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._store: OrderedDict[Hashable, StoredPasses] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> StoredPasses | None:
        found = self._store.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return found

    def put(self, key: Hashable, value: StoredPasses) -> None:
        if value.nbytes > self.max_bytes:
            return
        old = self._store.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._store[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes:
            _, dropped = self._store.popitem(last=False)
            self._bytes -= dropped.nbytes


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


def _reproduces(score: Tensor, reference: Tensor) -> bool:
    """Whether the unswitched copy's score, through the network after the layer only,
    is the model's own (``reference``)."""
    return torch.allclose(score, reference, rtol=1e-3, atol=1e-4 * (1 + reference.abs().item()))


@dataclass
class PerturbationEngine:
    """Evaluates perturbed copies of each example of a batch, in chunks.

    Built by the CAM base for one ``attribute`` call; methods use it through
    :meth:`input_scores` and :meth:`switch_scores`.

    Examples with the same input share their target-independent passes: the passes of
    :meth:`switch_scores`, and of :meth:`input_scores` where the method names the copies
    (``shared``). The first example of a group that asks evaluates the copies once and
    reads every member's target from the outputs; the others get theirs without a pass.
    The groups are those of the reference pass (:attr:`pass_rows`).
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
    #: The feature map (N, K, h, w): part of what names an example in :attr:`store`.
    activation: Tensor | None = None
    #: Each example's row in the reference pass, where it ran once per distinct input
    #: (examples with the same row form a group and share their passes; the recorder
    #: holds those rows); ``None``: it ran on the batch as given, each example alone.
    pass_rows: list[int] | None = None
    #: Outputs of target-independent passes kept across calls (a WeightsCache's, or
    #: FG-CAM's across its rounds), and the tag naming the method in its keys.
    store: PassStore | None = None
    store_tag: Hashable = None
    _bar: Any = None
    _fallback_warned: bool = field(default=False)
    #: (kind, example) -> the scores a group's pass computed for that example.
    _memo: dict[Hashable, Any] = field(default_factory=dict)
    #: store key -> what the store held when first asked in this call (pinned).
    _fetched: dict[Hashable, StoredPasses | None] = field(default_factory=dict)
    _row_keys: dict[int, str] = field(default_factory=dict)

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

    @staticmethod
    def _transform(output: Any, score: ScoreType) -> Tensor:
        """Every score of the model's output, in the score unit (at least float32)."""
        output = model_scores(output)
        output = output.to(score_dtype(output.dtype))
        if score == "probability":
            output = output.softmax(dim=1)
        elif score == "sigmoid":
            output = output.sigmoid()
        return output

    def _select(self, scores: Tensor, sample: int) -> Tensor:
        """Example ``sample``'s target score in each row of :meth:`_transform`'s output."""
        rows = None if self.target_rows is None else [self.target_rows[sample]] * len(scores)
        selected = select_target_scores(scores, rows)
        if not torch.isfinite(selected).all():
            # A NaN score would make every weight, and so the map, NaN (e.g. a model that
            # normalises its input divides by zero on Score-CAM's all-zero baseline).
            raise NonFiniteScoreError(
                f"The model's target score is NaN or infinite on a perturbed copy of example "
                f"{sample}; the perturbation methods need finite scores (for Score-CAM, "
                "try another baseline)."
            )
        return selected

    def _scores(self, output: Any, sample: int, score: ScoreType) -> Tensor:
        return self._select(self._transform(output, score), sample)

    def _forward(self, inputs: tuple[Tensor, ...], sample: int) -> Tensor:
        return self.forward_func(*inputs, *self._example_args(sample, inputs[0].shape[0]))

    def reference(self, sample: int, score: ScoreType) -> Tensor:
        """The unperturbed target score of example ``sample`` (0-d tensor)."""
        return self._scores(self.output[sample : sample + 1], sample, score)[0]

    def _empty_scores(self) -> Tensor:
        return self.output.new_zeros(0, dtype=score_dtype(self.output.dtype))

    # ------------------------------------------------------------ shared passes

    def members(self, sample: int) -> list[int]:
        """The examples with the same input as ``sample`` (itself included), in order:
        they share its target-independent passes."""
        if self.pass_rows is None:
            return [sample]
        row = self.pass_rows[sample]
        return [i for i, r in enumerate(self.pass_rows) if r == row]

    def _pass_row(self, sample: int) -> int:
        """Example ``sample``'s row in the reference pass (and in the recorder)."""
        return sample if self.pass_rows is None else self.pass_rows[sample]

    def _store_key(self, kind: Hashable, sample: int) -> Hashable:
        """What names example ``sample``'s copies of ``kind`` in :attr:`store`."""
        if sample not in self._row_keys:
            self._row_keys[sample] = digest(
                [
                    [x[sample : sample + 1] for x in self.inputs],
                    list(self._example_args(sample, 1)),
                    None if self.activation is None else self.activation[sample],
                    None if self.layer_output is None else self.layer_output[sample],
                ]
            )
        return (self.store_tag, self._row_keys[sample], kind, self.perturbations_per_eval)

    def _stored(self, kind: Hashable | None, sample: int) -> StoredPasses | None:
        """The stored outputs of example ``sample``'s copies of ``kind``, if any; asked of
        the store once per call (what it held then is kept for this call)."""
        if kind is None or self.store is None:
            return None
        key = self._store_key(kind, sample)
        if key not in self._fetched:
            self._fetched[key] = self.store.get(key)
        return self._fetched[key]

    def _save(self, kind: Hashable, sample: int, passes: StoredPasses) -> None:
        if self.store is not None:
            key = self._store_key(kind, sample)
            self.store.put(key, passes)
            self._fetched[key] = passes

    def _computes(self, kind: Hashable, sample: int) -> bool:
        """Whether example ``sample`` evaluates its copies of ``kind`` itself: it is the
        first of its group (the methods go through the examples in order) and the store
        does not hold them."""
        return self.members(sample)[0] == sample and self._stored(kind, sample) is None

    def _keep(self, kept: list[Tensor] | None, output: Tensor) -> list[Tensor] | None:
        """``kept`` with a batch's outputs added, for the store; None (nothing kept) once
        they exceed what the store takes (a dense model output)."""
        if kept is None or self.store is None:
            return None
        kept.append(output)
        size = sum(t.numel() * t.element_size() for t in kept)
        return kept if size <= self.store.max_bytes else None

    @staticmethod
    def _kept_outputs(kept: list[Tensor] | None) -> Tensor | None:
        """The outputs of a set of copies, for the store (None: not kept)."""
        return torch.cat(kept) if kept else None

    def _distribute(self, kind: Hashable, sample: int, results: dict[int, Any]) -> Any:
        """Keeps the group's other members' results for their own calls; ``sample``'s."""
        for member, value in results.items():
            if member != sample:
                self._memo[kind, member] = value
        return results[sample]

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

        ``total`` counts what will really run (copies left after deduplication,
        short-cuts, sharing within a group of examples with the same input and outputs
        found in :attr:`store`: see :meth:`input_passes` and :meth:`switch_passes`), so
        that the bar ends at 100%; a function is called only when the bar is shown, for
        totals that cost a pass over the activations to count. Where nothing runs
        (total 0) no bar is shown. The reference forward (and backward) pass is not
        counted. Without ``show_progress`` nothing is created or written.
        """
        if self.show_progress:
            count = total() if callable(total) else total
            if count > 0:
                self._bar = captum_progress(desc=desc, total=count)
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

    @staticmethod
    def _input_kind(shared: Hashable, score: ScoreType, count: int) -> Hashable:
        return ("input", shared, score, count)

    def input_passes(self, sample: int, count: int, score: ScoreType, shared: Hashable) -> int:
        """How many of the ``count`` copies ``shared`` of example ``sample`` (see
        :meth:`input_scores`) are evaluated for it: 0 where another example of its group
        or the store provides them. For progress totals; call before evaluating."""
        return count if self._computes(self._input_kind(shared, score, count), sample) else 0

    @torch.no_grad()
    def input_scores(
        self,
        sample: int,
        count: int,
        make_inputs: Callable[[int, int], tuple[Tensor, ...]],
        score: ScoreType,
        shared: Hashable | None = None,
    ) -> Tensor:
        """Scores of ``count`` perturbed inputs of example ``sample``.

        Args:
            sample: the example's index in the batch.
            count: the number of perturbed inputs.
            make_inputs: ``(start, stop) -> inputs`` of the perturbations
                ``start:stop``, each tensor of shape (stop - start, ...).
            score: ``'logit'`` or ``'probability'`` (softmax over dimension 1).
            shared: a name for these perturbed inputs, given where they depend only on
                the example's input and activation (not on the target: Score-CAM's
                masked inputs, a baseline, Group-CAM's blurred input): the examples with
                the same input then share one evaluation (and the :attr:`store` keeps
                it). ``None``: evaluated for this example alone.

        Returns:
            (count,) target scores.
        """
        kind = None if shared is None else self._input_kind(shared, score, count)
        if kind is not None and (kind, sample) in self._memo:
            return self._memo.pop((kind, sample))
        members = [sample] if kind is None else self.members(sample)
        if count == 0:  # in the dtype of the scores, as for count > 0
            return self._distribute(kind, sample, {m: self._empty_scores() for m in members})
        stored = self._stored(kind, sample)
        if stored is not None:
            results = {m: self._select(stored.outputs, m) for m in members}
            return self._distribute(kind, sample, results)
        parts: dict[int, list[Tensor]] = {m: [] for m in members}
        kept: list[Tensor] | None = [] if kind is not None and self.store is not None else None
        for start, stop in _chunks(count, self.perturbations_per_eval):
            output = self._transform(self._forward(make_inputs(start, stop), sample), score)
            for m in members:
                parts[m].append(self._select(output, m))
            kept = self._keep(kept, output)
            self._advance(stop - start)
        outputs = self._kept_outputs(kept)
        if kind is not None and outputs is not None:
            self._save(kind, sample, StoredPasses(outputs))
        return self._distribute(kind, sample, {m: torch.cat(p) for m, p in parts.items()})

    # ----------------------------------------------------- channel switching

    def _switch_kind(self, keep: Tensor, score: ScoreType) -> Hashable:
        mode = "replay" if self.recorder is not None and self.recorder.usable else "full"
        # ``keep`` names the copies in the store only (it costs a copy to the CPU).
        return ("switch", score, mode, digest(keep) if self.store is not None else None)

    def switch_passes(
        self,
        activation: Tensor,
        keep: Tensor,
        sample: int | None = None,
        score: ScoreType | None = None,
    ) -> int:
        """How many copies :meth:`switch_scores` evaluates for these arguments: for
        example ``sample`` in unit ``score`` (given both), 0 where another example of its
        group or the store provides them. For progress totals; call before evaluating."""
        if sample is not None and score is not None and self.members(sample)[0] != sample:
            return 0  # the first example of its group evaluates them
        count = len(_switch_plan(activation, keep)[-1])
        if sample is None or score is None or count == 0:
            return count
        return count if self._computes(self._switch_kind(keep, score), sample) else 0

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
            to the unswitched activation gets ``reference`` without evaluation. The
            examples with the same input (and so the same activation) share one
            evaluation of the copies.
        """
        (_, unique, inverse, is_reference, todo), evaluated = self._switched_scores(
            sample, activation, keep, score
        )
        scores = torch.empty(len(unique), dtype=reference.dtype, device=reference.device)
        scores[is_reference] = reference
        if len(todo):
            scores[todo] = evaluated.to(scores.dtype)
        return scores[inverse]

    def _switched_scores(
        self, sample: int, activation: Tensor, keep: Tensor, score: ScoreType
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """The plan of the copies (:func:`_switch_plan`) and example ``sample``'s target
        scores on those to evaluate, both computed once for its group."""
        memo = ("switch", score)
        found = self._memo.pop((memo, sample), None)
        members = self.members(sample)
        if found is not None:
            group_activation, group_keep, plan, result = found
            if torch.equal(group_activation, activation) and torch.equal(group_keep, keep):
                return plan, result
            members = [sample]  # not the copies the group evaluated: its own
        plan = _switch_plan(activation, keep)
        live, unique, _, _, todo = plan
        if not len(todo):
            results = {m: self._empty_scores() for m in members}
        else:
            kind = self._switch_kind(keep, score)
            stored = self._stored(kind, sample)
            if stored is not None and self._check_stored(stored, members, score):
                results = {m: self._select(stored.outputs, m) for m in members}
            else:
                masks = unique[todo]
                results = self._evaluate_switched(
                    kind, sample, members, activation, live, masks, score
                )
        if len(members) == 1:
            return plan, results[sample]
        shared = {m: (activation, keep, plan, r) for m, r in results.items()}
        return plan, self._distribute(memo, sample, shared)[3]

    def _check_stored(self, stored: StoredPasses, members: list[int], score: ScoreType) -> bool:
        """Whether stored short-cut outputs reproduce each member's own score on the
        unswitched copy (what the short-cut's first batch checks)."""
        if stored.check is None:
            return True
        return all(
            _reproduces(self._select(stored.check, m)[0], self.reference(m, score)) for m in members
        )

    def _evaluate_switched(
        self,
        kind: Hashable,
        sample: int,
        members: list[int],
        activation: Tensor,
        live: Tensor,
        masks: Tensor,
        score: ScoreType,
    ) -> dict[int, Tensor]:
        parts: dict[int, list[Tensor]] = {m: [] for m in members}
        kept: list[Tensor] | None = [] if self.store is not None else None
        check_row: Tensor | None = None
        modes = set()
        # The first batch carries the unswitched activation too: if the short-cut
        # forward does not reproduce the reference score, it is not trusted.
        check = self.recorder is not None
        for start, stop in _chunks(len(masks), self.perturbations_per_eval):
            chunk = masks[start:stop]
            if check:
                chunk = torch.cat([live[None], chunk])
            if self.layout is not None and self.layer_output is not None:
                raw = self.layer_output[sample : sample + 1]
                copies = self.layout.switched(raw, activation, chunk)
            else:
                copies = activation[None] * chunk[:, :, None, None].to(activation.dtype)
            output, mode = self._switched_forward(sample, members, copies, score, check)
            modes.add(mode)
            for m in members:
                result = self._select(output, m)
                parts[m].append(result[1:] if check else result)
            if check:
                if mode == "replay":
                    check_row = output[:1]
                output = output[1:]
                check = False
            kept = self._keep(kept, output)
            self._advance(stop - start)
        outputs = self._kept_outputs(kept)
        if outputs is not None and len(modes) == 1:
            # Under the mode that computed them: a call that would evaluate the copies
            # the other way (full passes after a fallback) does not read them.
            (mode,) = modes
            stored = StoredPasses(outputs, check_row if mode == "replay" else None)
            self._save((*kind[:2], mode, *kind[3:]), sample, stored)
        return {m: torch.cat(p) for m, p in parts.items()}

    def _switched_forward(
        self, sample: int, members: list[int], copies: Tensor, score: ScoreType, check: bool
    ) -> tuple[Tensor, str]:
        """Every score of the network on ``copies`` of example ``sample``'s layer output
        (transformed to ``score``), and how: ``"replay"`` (only the network after the
        layer) or ``"full"`` (full forward passes with the layer's output replaced)."""
        rows = copies.shape[0]
        inputs = tuple(x[sample : sample + 1].expand(rows, *x.shape[1:]) for x in self.inputs)
        if self.recorder is not None and self.recorder.usable:
            try:
                output = replay(
                    lambda: self._forward(inputs, sample),
                    self.recorder,
                    self._pass_row(sample),
                    copies,
                    self.attribute_to_layer_input,
                )
                result = self._transform(output, score)
                # Each member's own target, on the unswitched copy in row 0.
                if not check or all(
                    _reproduces(self._select(result[:1], m)[0], self.reference(m, score))
                    for m in members
                ):
                    return result, "replay"
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
                    stacklevel=6,
                )
                self._fallback_warned = True
        capture = self.capture_factory(replace=lambda _: (copies,))
        with capture:
            output = self._forward(inputs, sample)
        return self._transform(output, score), "full"
