"""Quantus's own metrics as a report card: each configured once, here, with its settings.

The benchmark's ``quantus-faithfulness`` tables score the photos with Quantus's
faithfulness metrics, its ``quantus-localisation`` tables score the GridPG mosaics with
its localisation metrics, the explained image's cell being the mask. Every metric gives
one number per image (per mosaic cell), so that the paired statistics apply to it.
:func:`~captum_fdcam.evaluation.scoring.make_metric` builds them by name.

Settings (``size`` is the scored image's side: 224 for photos, 448 for mosaics):

* ``faithfulness_correlation`` (Bhatt et al., 2020): ``nr_runs = 50`` random subsets
  (Quantus's default is 100; halved for the 2-core runs: 51 forward passes per image)
  of ``subset_size = 3 * size * size // 28`` values (5376 at 224 x 224: as many values
  as one 1792-pixel step of insertion/deletion, 3.6 %; Quantus's default of 224 values,
  0.15 %, moves the probability by little more than float noise) set to Quantus's
  "black" (the image's minimum); Pearson correlation of the subsets' attribution sums
  with the probability drops. The subsets are drawn from a generator seeded per call,
  so that every method is scored on the same subsets of an image (paired).
* ``pixel_flipping`` (Bach et al., 2015): ``features_in_step = 3 * 8 * size`` values,
  8 rows of pixels (1792 pixels, 28 steps at 224 x 224; one row where 8 does not divide
  ``size``) set to black, most relevant first; the score is the AUC of the probability
  curve (lower is better). Quantus counts the 3 channels' values (so ``8 * size``, as
  before, was 84 steps of a third of that, 3 times the cost).
* ``road`` (Rong et al., 2022; :class:`~captum_fdcam.evaluation.road.ROAD`): the most
  relevant ``p`` % of pixels imputed by noisy linear imputation (noise 0.01, Quantus's
  default) at ``p`` in 10, 30, 50, 70, 90 (Quantus's default is 50 percentages, each a
  sparse solve: too slow here); one image's score is the fraction of those percentages
  at which the image is still classified as its label (MoRF; lower is better).
* ``pointing_game`` (Zhang et al., 2018): whether a maximum of the map lies in the cell
  (1 or 0).
* ``attribution_localisation`` (Kohlbrenner et al., 2020): the share of the map's
  positive attribution inside the cell (``positive_attributions=True, abs=False``: the
  CAMs' negative values count as no evidence, as in GridPG).
* ``top_k_intersection`` (Theiner et al., 2021): the fraction of the ``k = size**2 //
  16`` most relevant pixels (a quarter of a cell: 12544 at 448 x 448) inside the cell.
* ``relevance_rank_accuracy`` (Arras et al., 2021): the fraction of the ``|cell|`` most
  relevant pixels inside the cell.

Quantus's own normalisation (division by the maximum of ``|a|``) is left on: none of
these scores depends on the map's scale.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import quantus

from captum_fdcam.evaluation.road import ROAD

#: The images' colour channels (PixelFlipping counts values, 3 per pixel).
CHANNELS = 3
#: ROAD's percentages of pixels imputed.
ROAD_PERCENTAGES = (10, 30, 50, 70, 90)
#: FaithfulnessCorrelation's random subsets per image.
FC_RUNS = 50
#: The seed of FaithfulnessCorrelation's subsets, the same for every call.
FC_SEED = 0


class SeededFaithfulnessCorrelation(quantus.FaithfulnessCorrelation):
    """Quantus's FaithfulnessCorrelation drawing its subsets from a seeded generator.

    Quantus draws from numpy's global generator; this seeds it with ``seed`` for the
    call and restores its state afterwards, so that two methods scored on one image see
    the same subsets and their difference is the maps', not the draws'.
    """

    def __init__(self, *args: Any, seed: int = FC_SEED, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = np.random.get_state()  # noqa: NPY002 - Quantus reads the global generator
        np.random.seed(self.seed)  # noqa: NPY002
        try:
            return super().__call__(*args, **kwargs)
        finally:
            np.random.set_state(state)  # noqa: NPY002


class PerImageROAD(ROAD):
    """ROAD with one score per image: the fraction of ``percentages`` at which the
    image is still classified as its label (Quantus returns the accuracy per percentage
    over the batch)."""

    def custom_postprocess(self, **kwargs: Any) -> None:
        per_image = np.concatenate(self.evaluation_scores, axis=0)  # (N, len(percentages))
        self.evaluation_scores = per_image.mean(axis=1).tolist()


class QuietAttributionLocalisation(quantus.AttributionLocalisation):
    """Quantus's AttributionLocalisation without its spurious warnings.

    Quantus 0.6 computes the mask's share of the image as ``|mask| / x_batch[2:].size``,
    which slices the batch (not the shape): for a batch of one or two images it divides
    by 0 and warns that the mask is larger than ``max_size``. That ratio only feeds
    ``weighted`` (off here) and the warning; the score is the inside share either way.
    """

    def evaluate_batch(self, *args: Any, **kwargs: Any) -> Any:
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Ratio is smaller than max size")
            return super().evaluate_batch(*args, **kwargs)


class ValuePixelFlipping(quantus.PixelFlipping):
    """Quantus's PixelFlipping, whose check of ``features_in_step`` counts what it steps
    over: Quantus 0.6 checks the step against H x W but steps over the C x H x W values
    of the map broadcast over the channels."""

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> None:
        quantus.helpers.asserts.assert_features_in_step(
            features_in_step=self.features_in_step, input_shape=x_batch.shape[1:]
        )


def _faithfulness_correlation(size: int) -> Any:
    return SeededFaithfulnessCorrelation(
        nr_runs=FC_RUNS,
        subset_size=3 * size * size // 28,
        perturb_baseline="black",
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
    )


def _pixel_flipping(size: int) -> Any:
    # Quantus broadcasts the map over the 3 colour channels and counts values, not
    # pixels: 3 x 8 rows of values a step is 8 rows of pixels (1792 at 224 x 224, 28
    # steps, as the papers' insertion/deletion; a pixel's 3 values tie and sort together).
    # One row where 8 rows do not divide the image (Quantus needs whole steps).
    rows = 8 if size % 8 == 0 else 1
    return ValuePixelFlipping(
        features_in_step=CHANNELS * rows * size, perturb_baseline="black", disable_warnings=True
    )


def _road(size: int) -> Any:
    return PerImageROAD(percentages=list(ROAD_PERCENTAGES), disable_warnings=True)


def _pointing_game(size: int) -> Any:
    return quantus.PointingGame(disable_warnings=True)


def _attribution_localisation(size: int) -> Any:
    # Quantus prints a warning for abs=False at construction whatever disable_warnings
    # says; the positive part is what the CAMs' GridPG scores too, so it is meant.
    with contextlib.redirect_stdout(io.StringIO()):
        return QuietAttributionLocalisation(
            positive_attributions=True, abs=False, disable_warnings=True
        )


def _top_k_intersection(size: int) -> Any:
    return quantus.TopKIntersection(k=size * size // 16, disable_warnings=True)


def _relevance_rank_accuracy(size: int) -> Any:
    return quantus.RelevanceRankAccuracy(disable_warnings=True)


#: Each report card metric's constructor, given the image side in pixels.
REPORT_CARD: dict[str, Callable[[int], Any]] = {
    "faithfulness_correlation": _faithfulness_correlation,
    "pixel_flipping": _pixel_flipping,
    "road": _road,
    "pointing_game": _pointing_game,
    "attribution_localisation": _attribution_localisation,
    "top_k_intersection": _top_k_intersection,
    "relevance_rank_accuracy": _relevance_rank_accuracy,
}
