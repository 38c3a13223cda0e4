"""What each metric of ``captum-fdcam evaluate`` and the benchmark measures: the one
table of metrics that the command line's ``--metrics`` choices and the markdown tables
(``scores.md``, ``tables.md``) read.

Only the standard library is imported (``captum-fdcam --help`` lists the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricInfo:
    """One metric's column in the tables.

    Attributes:
        better: ``"higher"`` or ``"lower"``: which direction means a better explanation.
        unit: what one image's score is, and its range.
        per_image: scored on single labelled images (``captum-fdcam evaluate
            --metrics``); False for the grid pointing game (mosaics) and ``overall``
            (derived from insertion and deletion).
        on_mosaics: scored on GridPG mosaic cells, the cell being the mask (``s_batch``).
    """

    better: Literal["higher", "lower"]
    unit: str
    per_image: bool = True
    on_mosaics: bool = False


#: Every metric, by the name of its column, in the order of ``--metrics``' choices.
METRICS: dict[str, MetricInfo] = {
    "insertion": MetricInfo(
        "higher",
        "probability AUC: the class's softmax probability averaged over the fraction of "
        "pixels inserted into a blurred copy, most important first (0-1)",
    ),
    "deletion": MetricInfo(
        "lower",
        "probability AUC: the class's softmax probability averaged over the fraction of "
        "pixels deleted (set to 0), most important first (0-1)",
    ),
    "average_drop": MetricInfo(
        "lower",
        "percent of the class probability lost when the less important half of the pixels "
        "is blurred (0-100)",
    ),
    "average_increase": MetricInfo(
        "higher",
        "percent of images whose class probability rises when the less important half of "
        "the pixels is blurred (0-100)",
    ),
    "pixel_flipping": MetricInfo(
        "lower",
        "probability AUC: the class's softmax probability averaged over the fraction of "
        "pixels set to black, most important first (Quantus PixelFlipping; 0-1)",
    ),
    "faithfulness_correlation": MetricInfo(
        "higher",
        "Pearson correlation of attribution sums and probability drops over random pixel "
        "subsets (Quantus FaithfulnessCorrelation; -1 to 1)",
    ),
    "gridpg": MetricInfo(
        "higher",
        "fraction of cells: the share of positive attribution inside the explained image's "
        "cell of a 2x2 mosaic (0-1; 0.25 is chance)",
        per_image=False,
        on_mosaics=True,
    ),
    "road": MetricInfo(
        "lower",
        "fraction of the percentages 10, 30, 50, 70, 90 of most relevant pixels imputed "
        "(noisy linear imputation) at which the image keeps its class (Quantus ROAD, MoRF; "
        "0-1)",
    ),
    "pointing_game": MetricInfo(
        "higher",
        "1 if a maximum of the map lies in the explained image's cell of a 2x2 mosaic, "
        "else 0 (Quantus PointingGame; 0.25 is chance)",
        per_image=False,
        on_mosaics=True,
    ),
    "attribution_localisation": MetricInfo(
        "higher",
        "share of the positive attribution inside the explained image's cell of a 2x2 "
        "mosaic (Quantus AttributionLocalisation; 0-1, 0.25 is chance)",
        per_image=False,
        on_mosaics=True,
    ),
    "top_k_intersection": MetricInfo(
        "higher",
        "fraction of the k most relevant pixels (k = a quarter of a cell) inside the "
        "explained image's cell of a 2x2 mosaic (Quantus TopKIntersection; 0-1, 0.25 is "
        "chance)",
        per_image=False,
        on_mosaics=True,
    ),
    "relevance_rank_accuracy": MetricInfo(
        "higher",
        "fraction of the |cell| most relevant pixels inside the explained image's cell of "
        "a 2x2 mosaic (Quantus RelevanceRankAccuracy; 0-1, 0.25 is chance)",
        per_image=False,
        on_mosaics=True,
    ),
    "overall": MetricInfo(
        "higher",
        "insertion - deletion of each image, probability AUC difference (-1 to 1)",
        per_image=False,
    ),
}


#: Per-record flags, not metrics: counted ("k of n images"), never averaged or compared.
#: ``constant_map``: the map was constant (all zero after the ReLU: no positive evidence
#: at that layer), so it could not rank pixels and was scored with pixels in index order.
FLAGS = ("constant_map",)

#: The report card's metrics (configured in report_card.py): Quantus's faithfulness
#: metrics, scored on the photos, and its localisation metrics, on the mosaics' cells.
QUANTUS_FAITHFULNESS = ("faithfulness_correlation", "pixel_flipping", "road")
QUANTUS_LOCALISATION = (
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
)


def mosaic_metrics() -> tuple[str, ...]:
    """The metrics scored on GridPG mosaic cells (the benchmark builds mosaics for them)."""
    return tuple(name for name, info in METRICS.items() if info.on_mosaics)


def per_image_metrics() -> tuple[str, ...]:
    """The metrics ``captum-fdcam evaluate`` can score (``--metrics``' choices)."""
    return tuple(name for name, info in METRICS.items() if info.per_image)


def legend(names: list[str]) -> list[str]:
    """Markdown lines saying, for each metric named, which direction is better and its
    unit (names without an entry are left out)."""
    return [
        f"- {name}: {METRICS[name].better} is better; {METRICS[name].unit}"
        for name in names
        if name in METRICS
    ]
