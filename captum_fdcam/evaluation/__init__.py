"""Scoring attribution methods on images, on Quantus.

* an ``explain_func`` for Quantus that runs any method of this library or of Captum
  (:func:`explain`), and the papers' metrics Quantus lacks (:class:`Insertion`, ...);
* several methods, each with its own options, in one ``quantus.evaluate`` call
  (:class:`Explainer`, :func:`evaluate`);
* what to score and one image's scores (:class:`Job`, :func:`make_metric`, :func:`score`),
  the metrics' directions and units (:data:`METRICS`);
* summaries with bootstrap CIs (:func:`summarise`, :func:`bootstrap_ci`), and their
  markdown tables and curve plots (:func:`markdown`, :func:`plot_curves`);
* images and labels (:func:`load_image`, :func:`folder_images`, :func:`read_labels`).

``captum-fdcam evaluate`` and the benchmark's tables both run through here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), as in captum_fdcam: the command line reads the metric
# table and the image suffixes at start-up, without waiting for torch and Quantus.
if TYPE_CHECKING:
    from captum_fdcam.evaluation.data import (
        IMAGE_SUFFIXES,
        LabelsError,
        folder_images,
        load_image,
        read_image,
        read_labels,
        sample_image,
    )
    from captum_fdcam.evaluation.explainer import (
        default_layer_name,
        explain,
        find_layer,
        method_class,
    )
    from captum_fdcam.evaluation.grid import GridMosaics, grid_mosaics
    from captum_fdcam.evaluation.memo import MapCache, WeightsCache
    from captum_fdcam.evaluation.metric_info import METRICS, MetricInfo
    from captum_fdcam.evaluation.metrics import (
        AverageDrop,
        AverageIncrease,
        Deletion,
        GridPointingGame,
        Insertion,
        curve_auc,
    )
    from captum_fdcam.evaluation.report import markdown, plot_curves
    from captum_fdcam.evaluation.road import ROAD
    from captum_fdcam.evaluation.saliency import channel_sum
    from captum_fdcam.evaluation.scoring import Job, make_metric, score
    from captum_fdcam.evaluation.stats import bootstrap_ci, summarise
    from captum_fdcam.evaluation.suite import Explainer, evaluate

_EXPORTS = {
    "IMAGE_SUFFIXES": "data",
    "LabelsError": "data",
    "folder_images": "data",
    "load_image": "data",
    "read_image": "data",
    "read_labels": "data",
    "sample_image": "data",
    "MapCache": "memo",
    "WeightsCache": "memo",
    "default_layer_name": "explainer",
    "explain": "explainer",
    "find_layer": "explainer",
    "method_class": "explainer",
    "GridMosaics": "grid",
    "grid_mosaics": "grid",
    "METRICS": "metric_info",
    "MetricInfo": "metric_info",
    "AverageDrop": "metrics",
    "AverageIncrease": "metrics",
    "Deletion": "metrics",
    "GridPointingGame": "metrics",
    "Insertion": "metrics",
    "curve_auc": "metrics",
    "markdown": "report",
    "plot_curves": "report",
    "ROAD": "road",
    "channel_sum": "saliency",
    "Job": "scoring",
    "make_metric": "scoring",
    "score": "scoring",
    "bootstrap_ci": "stats",
    "summarise": "stats",
    "Explainer": "suite",
    "evaluate": "suite",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "METRICS",
    "ROAD",
    "AverageDrop",
    "AverageIncrease",
    "Deletion",
    "Explainer",
    "GridMosaics",
    "GridPointingGame",
    "Insertion",
    "Job",
    "LabelsError",
    "MapCache",
    "MetricInfo",
    "WeightsCache",
    "bootstrap_ci",
    "channel_sum",
    "curve_auc",
    "default_layer_name",
    "evaluate",
    "explain",
    "find_layer",
    "folder_images",
    "grid_mosaics",
    "load_image",
    "make_metric",
    "markdown",
    "method_class",
    "plot_curves",
    "read_image",
    "read_labels",
    "sample_image",
    "score",
    "summarise",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
