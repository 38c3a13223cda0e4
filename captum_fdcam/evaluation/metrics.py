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
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
from quantus.metrics.base import Metric
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam.evaluation.saliency import channel_sum


def blur_images(x: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Gaussian blur of (N, C, H, W) images (torchvision's, reflect padding)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}.")
    size = min(kernel_size, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding limit
    blurred = gaussian_blur(torch.from_numpy(np.ascontiguousarray(x)), [size] * 2, [sigma] * 2)
    return blurred.numpy()


def pixel_ranking(a: np.ndarray) -> np.ndarray:
    """Pixel indices (flattened H x W) from most to least important, ties in index order."""
    return np.argsort(-channel_sum(a).reshape(-1), kind="stable")


def curve_auc(scores: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at evenly spaced points on [0, 1]."""
    n = len(scores)
    if n < 2:
        raise ValueError("A curve needs at least two points.")
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (n - 1))


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
        out = []
        for start in range(0, len(images), self.predict_batch_size):
            chunk = images[start : start + self.predict_batch_size]
            shaped = model.shape_input(chunk, chunk.shape, channel_first=True, batched=True)
            out.append(model.predict(shaped)[:, label])
        return np.concatenate(out)

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
        pixels_per_step: int | float = 0.036,
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
        elif pixels_per_step < 1:
            raise ValueError(f"pixels_per_step must be positive, got {pixels_per_step}.")
        self.pixels_per_step = pixels_per_step
        self.substrate = substrate
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = float(blur_sigma)
        #: Per example, the score after each step (step 0: nothing moved yet).
        self.curves: list[np.ndarray] = []

    def step_size(self, n_pixels: int) -> int:
        if isinstance(self.pixels_per_step, float):
            return max(1, round(self.pixels_per_step * n_pixels))
        return int(self.pixels_per_step)

    def _substrate(self, x: np.ndarray) -> np.ndarray:
        if self.substrate == "blur":
            return blur_images(x, self.blur_kernel_size, self.blur_sigma)
        if self.substrate == "zeros":
            return np.zeros_like(x)
        return np.full_like(x, float(self.substrate))

    def curve(self, model: Any, x: np.ndarray, label: int, a: np.ndarray) -> np.ndarray:
        """The scores along the insertion (deletion) path of one image (C, H, W)."""
        c, h, w = x.shape
        order = pixel_ranking(a)
        step = self.step_size(h * w)
        n_steps = math.ceil(h * w / step)
        start, finish = (self._substrate(x[None])[0], x) if self.inserts else (x, None)
        finish = self._substrate(x[None])[0] if finish is None else finish
        images = np.repeat(start[None], n_steps + 1, axis=0).reshape(n_steps + 1, c, h * w)
        flat_finish = finish.reshape(c, h * w)
        for i in range(1, n_steps + 1):
            moved = order[: i * step]
            images[i][:, moved] = flat_finish[:, moved]
        return self._scores(model, images.reshape(n_steps + 1, c, h, w), label)

    def evaluate_batch(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> list[float]:
        scores = []
        for x, y, a in zip(x_batch, y_batch, a_batch, strict=True):
            curve = self.curve(model, x, int(y), a)
            self.curves.append(curve)
            scores.append(curve_auc(curve))
        return scores


class Deletion(_CausalMetric):
    """Deletion AUC (RISE): the class score as the most important pixels are removed.

    Pixels (all channels) are replaced by the substrate ``pixels_per_step`` at a time,
    in order of the attribution summed over channels; the score is the softmax
    probability of the class after each step (``n + 1`` points including the
    original), and the AUC their trapezoid mean. Lower is better.

    Args:
        pixels_per_step: pixels per step: an int, or a fraction of the image (FD-CAM:
            3.6%, 1792 at 224x224; Group-CAM's script: 448 = 224 x 2). Default: 0.036
        substrate: ``"zeros"`` (zeros of the normalised input, RISE and FD-CAM),
            ``"blur"`` or a constant. Default: ``"zeros"``
        blur_kernel_size, blur_sigma: the blur for ``substrate="blur"``.
        predict_batch_size: images per forward pass. Default: 64
        Others: Quantus's ``abs``, ``normalise``, ``return_aggregate``, ...

    After a call, :attr:`curves` holds each example's scores.
    """

    name = "Deletion"
    score_direction = ScoreDirection.LOWER


class Insertion(_CausalMetric):
    """Insertion AUC (RISE): the class score as the most important pixels are put back
    into a blurred copy. Higher is better.

    Args:
        pixels_per_step: as :class:`Deletion`. Default: 0.036
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

    def masked(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``x`` with all but its ``keep`` most important pixels blurred."""
        h, w = x.shape[-2:]
        order = pixel_ranking(a)
        count = round(self.keep * h * w)
        if self.positive_only:
            count = min(count, int((channel_sum(a) > 0).sum()))
        mask = np.zeros(h * w, dtype=bool)
        mask[order[:count]] = True
        blurred = blur_images(x[None], self.blur_kernel_size, self.blur_sigma)[0]
        return np.where(mask.reshape(1, h, w), x, blurred)

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
        scores = []
        for x, y, a in zip(x_batch, y_batch, a_batch, strict=True):
            before, after = self._scores(model, np.stack([x, self.masked(x, a)]), int(y))
            scores.append(self.score(float(before), float(after)))
        return scores


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
