"""Evaluation on Quantus: an ``explain_func`` and the papers' metrics Quantus lacks."""

from captum_fdcam.evaluation.explain import explain, find_layer, method_class
from captum_fdcam.evaluation.grid import GridMosaics, grid_mosaics
from captum_fdcam.evaluation.metrics import (
    AverageDrop,
    AverageIncrease,
    Deletion,
    GridPointingGame,
    Insertion,
    curve_auc,
)
from captum_fdcam.evaluation.road import ROAD

__all__ = [
    "ROAD",
    "AverageDrop",
    "AverageIncrease",
    "Deletion",
    "GridMosaics",
    "GridPointingGame",
    "Insertion",
    "curve_auc",
    "explain",
    "find_layer",
    "grid_mosaics",
    "method_class",
]
