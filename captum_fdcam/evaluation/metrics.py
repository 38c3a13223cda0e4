"""The papers' metrics that Quantus lacks, as Quantus metrics.

Each is a subclass of ``quantus.Metric``: configured in the constructor, called as
``metric(model, x_batch, y_batch, a_batch=None, explain_func=..., ...)``, usable in
``quantus.evaluate``, returning one score per example (or their aggregate with
``return_aggregate=True``). Attributions are summed over channels to rank pixels.

* :class:`Insertion`, :class:`Deletion`: RISE's causal metrics (Petsiuk et al., 2018)
  as FD-CAM reports them.
* :class:`AverageDrop`, :class:`AverageIncrease`: FG-CAM's Table 1 (Chattopadhyay et
  al.'s Grad-CAM++ metrics, with the unimportant half of the pixels blurred).
* :class:`GridPointingGame`: GridPG (Böhle et al., 2022) on 2x2 mosaics, see
  :func:`captum_fdcam.evaluation.grid_mosaics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
from quantus.metrics.base import Metric
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam.evaluation.saliency import channel_sum


def blur_images(x: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Gaussian blur of (N, C, H, W) images (torchvision's, reflect padding)."""
    return blur_tensor(torch.from_numpy(np.ascontiguousarray(x)), kernel_size, sigma).numpy()


def blur_tensor(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """:func:`blur_images` on a tensor."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}.")
    size = min(kernel_size, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding limit
    return gaussian_blur(x, [size] * 2, [sigma] * 2)


def pixel_ranking(a: np.ndarray) -> np.ndarray:
    """Pixel indices (flattened H x W) from most to least important, ties in index order."""
    return np.argsort(-channel_sum(a).reshape(-1), kind="stable")


def curve_auc(scores: np.ndarray, fractions: np.ndarray | None = None) -> float:
    """Trapezoid area under a curve sampled at ``fractions`` of the pixels changed.

    Args:
        scores: the curve, one score per point.
        fractions: each point's x position, the share of pixels changed (0 to 1); None:
            evenly spaced on [0, 1]. With a short last step (the step does not divide
            the image) the last trapezoid is as narrow as that step, so it weighs by its
            width, not like the others. Where every step is equal this is the
            equal-spacing formula ``(sum - first/2 - last/2) / (n - 1)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n < 2:
        raise ValueError("A curve needs at least two points.")
    if fractions is None:
        return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (n - 1))
    x = np.asarray(fractions, dtype=np.float64)
    if x.shape != scores.shape or (np.diff(x) < 0).any():
        raise ValueError("fractions must be increasing, one per score.")
    return float(((scores[1:] + scores[:-1]) / 2 * np.diff(x)).sum())


def step_counts(n_pixels: int, step: int) -> np.ndarray:
    """Pixels changed at each point of a curve: 0, step, 2 step, ..., n_pixels (the last
    step short when ``step`` does not divide ``n_pixels``)."""
    return np.minimum(np.arange(math.ceil(n_pixels / step) + 1) * step, n_pixels)


def _torch_model(model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The module a Quantus ``PyTorchModel`` predicts with (softmax added as asked), to
    call on tensors directly: no numpy copy per batch. None for other wrappers."""
    if not hasattr(model, "get_softmax_arg_model") or not isinstance(
        getattr(model, "model", None), torch.nn.Module
    ):
        return None
    if model.model.training:
        raise AttributeError("Torch model needs to be in the evaluation mode.")
    net = model.get_softmax_arg_model()
    kwargs = dict(model.model_predict_kwargs or {})
    device = model.device

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x.to(device), **kwargs)

    return predict


class _PixelMetric(Metric):
    """Shared constructor arguments and model evaluation of the metrics here."""

    data_applicability: ClassVar[set[DataType]] = {DataType.IMAGE}
    model_applicability: ClassVar[set[ModelType]] = {ModelType.TORCH}
    evaluation_category = EvaluationCategory.FAITHFULNESS

    def __init__(
        self,
        *,
        abs: bool = False,
        normalise: bool = False,
        normalise_func: Callable[[np.ndarray], np.ndarray] | None = None,
        normalise_func_kwargs: dict[str, Any] | None = None,
        return_aggregate: bool = False,
        aggregate_func: Callable | None = None,
        default_plot_func: Callable | None = None,
        disable_warnings: bool = False,
        display_progressbar: bool = False,
        predict_batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            abs=abs,
            normalise=normalise,
            normalise_func=normalise_func,
            normalise_func_kwargs=normalise_func_kwargs,
            return_aggregate=return_aggregate,
            aggregate_func=aggregate_func,
            default_plot_func=default_plot_func,
            disable_warnings=disable_warnings,
            display_progressbar=display_progressbar,
            **kwargs,
        )
        if predict_batch_size < 1:
            raise ValueError(f"predict_batch_size must be positive, got {predict_batch_size}.")
        self.predict_batch_size = predict_batch_size

    def _scores(self, model: Any, images: np.ndarray, label: int) -> np.ndarray:
        """The model's score (softmax or logit, as the call asked) of ``label``."""
        return self._batched_scores(model, [(torch.from_numpy(images), label)])[0]

    def _batched_scores(
        self, model: Any, copies: Iterable[tuple[torch.Tensor, int]]
    ) -> list[np.ndarray]:
        """The score of its label on every image of each ``(images, label)`` of
        ``copies`` (an iterable of (K, C, H, W) tensors), sent to the model in batches of
        ``predict_batch_size`` that may span several items: one forward call per batch,
        the copies of the next item built only when the batch needs them."""
        predict = _torch_model(model)
        out: list[list[np.ndarray]] = []
        pending: list[tuple[int, torch.Tensor, int]] = []  # (item, images, label)
        size = 0

        def flush() -> None:
            batch = torch.cat([images for _, images, _ in pending])
            if predict is not None:
                probs = predict(batch).detach().cpu()
            else:  # another wrapper: through its numpy interface
                array = batch.numpy()
                shaped = model.shape_input(array, array.shape, channel_first=True, batched=True)
                probs = torch.from_numpy(np.asarray(model.predict(shaped)))
            start = 0
            for item, images, label in pending:
                out[item].append(probs[start : start + len(images), label].numpy())
                start += len(images)
            pending.clear()

        for item, (images, label) in enumerate(copies):
            out.append([])
            while len(images):
                take = images[: self.predict_batch_size - size]
                pending.append((item, take, label))
                size += len(take)
                images = images[len(take) :]
                if size == self.predict_batch_size:
                    flush()
                    size = 0
        if pending:
            flush()
        return [np.concatenate(parts).astype(np.float32) for parts in out]

    def __call__(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray | None = None,
        s_batch: np.ndarray | None = None,
        channel_first: bool | None = True,
        explain_func: Callable | None = None,
        explain_func_kwargs: dict[str, Any] | None = None,
        model_predict_kwargs: dict[str, Any] | None = None,
        softmax: bool | None = True,
        device: str | None = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> Any:
        """Scores of each example; see ``quantus.Metric.__call__`` (softmax on by default)."""
        return super().__call__(
            model=model,
            x_batch=x_batch,
            y_batch=y_batch,
            a_batch=a_batch,
            s_batch=s_batch,
            custom_batch=None,
            channel_first=channel_first,
            explain_func=explain_func,
            explain_func_kwargs=explain_func_kwargs,
            softmax=softmax,
            device=device,
            model_predict_kwargs=model_predict_kwargs,
            batch_size=batch_size,
            **kwargs,
        )


class _CausalMetric(_PixelMetric):
    """Insertion and deletion: move pixels in order of importance, score each step."""

    inserts: bool = False

    def __init__(
        self,
        *,
        pixels_per_step: int | float | None = None,
        substrate: Literal["zeros", "blur"] | float = "zeros",
        blur_kernel_size: int = 11,
        blur_sigma: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(pixels_per_step, float):
            if not 0 < pixels_per_step <= 1:
                raise ValueError(
                    f"A fractional pixels_per_step must be in (0, 1], got {pixels_per_step}."
                )
        elif pixels_per_step is not None and pixels_per_step < 1:
            raise ValueError(f"pixels_per_step must be positive, got {pixels_per_step}.")
        self.pixels_per_step = pixels_per_step
        self.substrate = substrate
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = float(blur_sigma)
        #: Per example, the score after each step (step 0: nothing moved yet).
        self.curves: list[np.ndarray] = []
        #: Per example, each point's share of the pixels moved (the curve's x axis).
        self.fractions: list[np.ndarray] = []

    def step_size(self, height: int, width: int | None = None) -> int:
        """Pixels per step on an image of ``height`` x ``width`` pixels (``width``
        None: ``height`` is the pixel count, for a fraction or a pixel count only)."""
        if self.pixels_per_step is None:  # the papers' 8 rows: 1792 at 224 x 224
            if width is None:
                raise ValueError("The default step (8 rows) needs the image's width.")
            return 8 * width
        n_pixels = height * width if width is not None else height
        if isinstance(self.pixels_per_step, float):
            return max(1, round(self.pixels_per_step * n_pixels))
        return int(self.pixels_per_step)

    def _substrate(self, x: torch.Tensor) -> torch.Tensor:
        """The substrate of (N, C, H, W) images."""
        if self.substrate == "blur":
            return blur_tensor(x, self.blur_kernel_size, self.blur_sigma)
        if self.substrate == "zeros":
            return torch.zeros_like(x)
        return torch.full_like(x, float(self.substrate))

    def _copies(
        self, x: torch.Tensor, substrate: torch.Tensor, a: np.ndarray, counts: np.ndarray
    ) -> torch.Tensor:
        """The (len(counts), C, H, W) images of one curve: point i has the ``counts[i]``
        most important pixels moved, built at once from each pixel's rank."""
        _, h, w = x.shape
        rank = np.empty(h * w, dtype=np.int64)
        rank[pixel_ranking(a)] = np.arange(h * w)
        moved = torch.from_numpy(rank).view(1, 1, h, w) < torch.from_numpy(counts).view(-1, 1, 1, 1)
        start, finish = (substrate, x) if self.inserts else (x, substrate)
        return torch.where(moved, finish, start)

    def curve(self, model: Any, x: np.ndarray, label: int, a: np.ndarray) -> np.ndarray:
        """The scores along the insertion (deletion) path of one image (C, H, W)."""
        return self._curves(model, x[None], np.array([label]), a[None])[0][0]

    def _curves(
        self, model: Any, x_batch: np.ndarray, y_batch: np.ndarray, a_batch: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Every image's curve and the points' fractions of pixels moved."""
        _, _, h, w = x_batch.shape
        counts = step_counts(h * w, self.step_size(h, w))
        x = torch.from_numpy(np.ascontiguousarray(x_batch, dtype=np.float32))
        substrate = self._substrate(x)  # once per image, all images at once

        def copies() -> Iterator[tuple[torch.Tensor, int]]:
            for i in range(len(x)):
                yield self._copies(x[i], substrate[i], a_batch[i], counts), int(y_batch[i])

        return self._batched_scores(model, copies()), counts / (h * w)

    def evaluate_batch(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> list[float]:
        curves, fractions = self._curves(model, x_batch, y_batch, a_batch)
        self.curves.extend(curves)
        self.fractions.extend(fractions.copy() for _ in curves)
        return [curve_auc(c, fractions) for c in curves]


class Deletion(_CausalMetric):
    """Deletion AUC (RISE): the class score as the most important pixels are removed.

    Pixels (all channels) are replaced by the substrate ``pixels_per_step`` at a time,
    in order of the attribution summed over channels; the score is the softmax
    probability of the class after each step (``n + 1`` points including the
    original), and the AUC the trapezoid over the share of pixels moved at each point
    (:func:`curve_auc`): a short last step weighs by its width. Lower is better.

    Args:
        pixels_per_step: pixels per step: an ``int`` counts pixels, a ``float`` in
            (0, 1] is a fraction of the image; None: the papers' 8 rows, ``8 * W`` at
            H x W (FD-CAM: 1792 = 224 x 8 at 224 x 224, exactly 28 steps; ``ceil(H / 8)``
            steps elsewhere, the last one short when 8 does not divide H). Group-CAM's
            script uses 448 = 224 x 2. Default: None
        predict_batch_size: perturbed copies per forward call; the copies of several
            images share a call. Default: 64
        substrate: ``"zeros"`` (zeros of the normalised input, RISE and FD-CAM),
            ``"blur"`` or a constant. Default: ``"zeros"``
        blur_kernel_size, blur_sigma: the blur for ``substrate="blur"``.
        Others: Quantus's ``abs``, ``normalise``, ``return_aggregate``, ...

    After a call, :attr:`curves` holds each example's scores and :attr:`fractions`
    their x positions (pixels moved / pixels).
    """

    name = "Deletion"
    score_direction = ScoreDirection.LOWER


class Insertion(_CausalMetric):
    """Insertion AUC (RISE): the class score as the most important pixels are put back
    into a blurred copy. Higher is better.

    Args:
        pixels_per_step: as :class:`Deletion` (8 rows). Default: None
        substrate: the starting image: ``"blur"`` (RISE: kernel 11, sigma 5;
            Group-CAM's script: 51 / 50), ``"zeros"`` or a constant. Default: ``"blur"``
        blur_kernel_size, blur_sigma: Default: 11, 5.0
    """

    name = "Insertion"
    score_direction = ScoreDirection.HIGHER
    inserts = True

    def __init__(self, *, substrate: Literal["zeros", "blur"] | float = "blur", **kwargs: Any):
        super().__init__(substrate=substrate, **kwargs)


class _KeepHalfMetric(_PixelMetric):
    """Average drop / increase: keep the most important pixels, blur the rest."""

    def __init__(
        self,
        *,
        keep: float = 0.5,
        positive_only: bool = False,
        blur_kernel_size: int = 51,
        blur_sigma: float = 50.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}.")
        self.keep = keep
        self.positive_only = positive_only
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = float(blur_sigma)

    def _mask(self, a: np.ndarray, h: int, w: int) -> torch.Tensor:
        """(1, H, W) True at the ``keep`` most important pixels of map ``a``."""
        count = round(self.keep * h * w)
        if self.positive_only:
            count = min(count, int((channel_sum(a) > 0).sum()))
        mask = np.zeros(h * w, dtype=bool)
        mask[pixel_ranking(a)[:count]] = True
        return torch.from_numpy(mask).view(1, h, w)

    def masked(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``x`` with all but its ``keep`` most important pixels blurred."""
        h, w = x.shape[-2:]
        image = torch.from_numpy(np.ascontiguousarray(x))
        blurred = blur_tensor(image[None], self.blur_kernel_size, self.blur_sigma)[0]
        return torch.where(self._mask(a, h, w), image, blurred).numpy()

    @staticmethod
    def score(original: float, masked: float) -> float:
        """The metric of one image from the class probability before and after."""
        raise NotImplementedError

    def evaluate_batch(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> list[float]:
        h, w = x_batch.shape[-2:]
        x = torch.from_numpy(np.ascontiguousarray(x_batch, dtype=np.float32))
        blurred = blur_tensor(x, self.blur_kernel_size, self.blur_sigma)  # all at once
        pairs = (
            (
                torch.stack([x[i], torch.where(self._mask(a_batch[i], h, w), x[i], blurred[i])]),
                int(y),
            )
            for i, y in enumerate(y_batch)
        )
        return [
            self.score(float(before), float(after))
            for before, after in self._batched_scores(model, pairs)
        ]


class AverageDrop(_KeepHalfMetric):
    """Average drop (%), FG-CAM Table 1: ``100 * max(0, Y - O) / Y`` per image, with
    Y the class probability of the image and O that of the image whose least
    important half is blurred. Lower is better; the aggregate is the mean.

    Args:
        keep: share of pixels kept. Default: 0.5
        positive_only: keep only positively attributed pixels when fewer than
            ``keep`` are (FG-CAM's setting for input-layer maps). Default: False
        blur_kernel_size, blur_sigma: the blur. Default: 51, 50.0
    """

    name = "Average Drop"
    score_direction = ScoreDirection.LOWER

    @staticmethod
    def score(original: float, masked: float) -> float:
        return 100 * max(0.0, original - masked) / original


class AverageIncrease(_KeepHalfMetric):
    """Average increase (%), FG-CAM Table 1: ``100 * 1[Y < O]`` per image (as
    :class:`AverageDrop`); the aggregate is the share of images whose score rose.
    Higher is better."""

    name = "Average Increase"
    score_direction = ScoreDirection.HIGHER

    @staticmethod
    def score(original: float, masked: float) -> float:
        return 100.0 * (original < masked)


class GridPointingGame(_PixelMetric):
    """Grid pointing game (GridPG): the share of positive attribution inside the cell
    of the explained class, on mosaics of confidently classified images.

    Call with ``x_batch`` the mosaics, ``y_batch`` the class explained and
    ``s_batch`` (N, 1, H, W) the mask of that class's cell, as
    :func:`captum_fdcam.evaluation.grid_mosaics` builds them. 1.0 means all
    positive attribution lies in the right cell; 0.25 is chance on 2x2 mosaics.
    Images with no positive attribution score 0.
    """

    name = "Grid Pointing Game"
    score_direction = ScoreDirection.HIGHER
    evaluation_category = EvaluationCategory.LOCALISATION

    def evaluate_batch(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        s_batch: np.ndarray | None = None,
        **kwargs: Any,
    ) -> list[float]:
        if s_batch is None:
            raise ValueError("GridPointingGame needs s_batch: the mask of each explained cell.")
        scores = []
        for a, s in zip(a_batch, s_batch, strict=True):
            positive = np.clip(channel_sum(a).reshape(a.shape[-2:]), 0, None)
            cell = s.reshape(s.shape[-2:]).astype(bool)
            total = positive.sum()
            scores.append(float(positive[cell].sum() / total) if total > 0 else 0.0)
        return scores
