"""Scoring a method on images: what to score (:class:`Job`), the metrics, one image's
scores (:func:`score`).

``captum-fdcam evaluate`` and the benchmark's tables both score through here::

    job = Job("FD-CAM", "FD-CAM", layer="layer4", metrics=("insertion", "deletion"))
    scores = score(model, job, x, y)   # {"insertion": 0.61, "insertion_curve": [...], ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from captum_fdcam.evaluation.metric_info import METRICS

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from captum_fdcam.evaluation.memo import MapCache, WeightsCache


@dataclass(frozen=True)
class Job:
    """One attribution method, at one layer, scored by some metrics.

    Attributes:
        name: the row's name in the tables (``"FD-CAM, no grouping"``).
        method: what :func:`~captum_fdcam.evaluation.explain` runs (``"FD-CAM"``,
            ``"FG-Grad-CAM"``, ``"PropagationLRP"``, a Captum class name).
        layer: the explained layer's module name (for ``"FG-"`` methods: the base
            CAM's); None: the model's default layer, or no layer for input methods.
        method_kwargs: options of the method's constructor (the base CAM's for ``"FG-"``).
        metrics: names of :data:`~captum_fdcam.evaluation.metric_info.METRICS`.
        fg_layer: FG-CAM's layer for ``"FG-"`` methods; None: the input.
        fg_kwargs: FG-CAM's options for ``"FG-"`` methods (``denoise``, ...).
        positive_only: average drop / increase keep only positively attributed pixels
            when fewer than half are (FG-CAM's setting for its input-layer tables).
    """

    name: str
    method: str
    layer: str | None = None
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ("insertion", "deletion")
    fg_layer: str | None = None
    fg_kwargs: dict[str, Any] = field(default_factory=dict)
    positive_only: bool = False


def make_metric(name: str, size: int = 224, positive_only: bool = False) -> Any:
    """The Quantus metric called ``name`` (a key of ``METRICS``), configured as the
    papers use it on ``size`` x ``size`` images.

    Raises:
        ValueError: an unknown name, or one that is not scored on its own (``overall``).
    """
    from captum_fdcam.evaluation.metrics import (
        AverageDrop,
        AverageIncrease,
        Deletion,
        GridPointingGame,
        Insertion,
    )
    from captum_fdcam.evaluation.report_card import REPORT_CARD

    common = {"disable_warnings": True}
    keep_half = {"positive_only": positive_only, **common}
    if name == "insertion":
        # Steps of 8 rows (the metric's default): 1792 pixels at 224 x 224 as FD-CAM.
        return Insertion(**common)
    if name == "deletion":
        return Deletion(**common)
    if name == "average_drop":
        return AverageDrop(**keep_half)
    if name == "average_increase":
        return AverageIncrease(**keep_half)
    if name == "gridpg":
        return GridPointingGame(**common)
    if name in REPORT_CARD:  # Quantus's own metrics, configured in report_card.py
        return REPORT_CARD[name](size)
    known = ", ".join(n for n in METRICS if n != "overall")
    raise ValueError(f"Unknown metric {name!r}: use one of {known}.")


def attribution(
    model: nn.Module,
    job: Job,
    x: np.ndarray,
    y: np.ndarray,
    weights_cache: WeightsCache | None = None,
) -> np.ndarray:
    """The job's (N, 1, H, W) maps of images ``x`` for classes ``y`` (``weights_cache``:
    see :func:`~captum_fdcam.evaluation.explain`)."""
    import warnings

    from captum_fdcam.errors import ConstantMapWarning
    from captum_fdcam.evaluation.explainer import explain

    with warnings.catch_warnings():
        # Scored anyway, and the record says so (``constant_map``): one flag per image
        # rather than a warning per call.
        warnings.simplefilter("ignore", ConstantMapWarning)
        return explain(
            model,
            x,
            y,
            method=job.method,
            layer=job.layer,
            method_kwargs=job.method_kwargs,
            fg_layer=job.fg_layer,
            fg_kwargs=job.fg_kwargs,
            weights_cache=weights_cache,
        )


def score(
    model: nn.Module,
    job: Job,
    x: np.ndarray,
    y: np.ndarray,
    s: np.ndarray | None = None,
    weights_cache: WeightsCache | None = None,
    map_cache: MapCache | None = None,
    scoring_model: nn.Module | None = None,
) -> dict[str, Any]:
    """The job's scores of one image.

    Args:
        model: the classifier, in eval mode.
        job: what to explain and which metrics to compute.
        x: (1, C, H, W) the image, preprocessed.
        y: (1,) its class.
        s: (1, 1, H, W) the explained cell's mask, for ``gridpg``.
        weights_cache: shared by the jobs of one run, so that jobs over the same
            perturbation CAM compute its channel weights once per image (see
            :func:`~captum_fdcam.evaluation.explain`).
        map_cache: shared by jobs that score the same map (same method, layer, options,
            image and class) with different metrics, which then compute it once.
        scoring_model: the model the metrics run on the perturbed images, computing
            what ``model`` computes (:func:`captum_fdcam.models.inference_copy`);
            None: ``model``.

    Returns:
        Each metric's score, each curve metric's curve as ``<metric>_curve`` and its
        points' shares of pixels moved as ``<metric>_x_curve``, and
        ``constant_map: 1.0`` when the map was constant (then ranked by pixel index).

    Raises:
        FloatingPointError: the method gave a map with NaN or infinite values.
    """
    import numpy as np

    from captum_fdcam.evaluation.memo import digest
    from captum_fdcam.evaluation.metrics import curve_auc

    if map_cache is None:
        a = attribution(model, job, x, y, weights_cache)
    else:
        key = (
            map_cache.model_key(model),
            job.method,
            job.layer,
            job.fg_layer,
            digest((sorted(job.method_kwargs.items()), sorted(job.fg_kwargs.items()), x, y)),
        )
        a = map_cache.lookup(key, lambda: attribution(model, job, x, y, weights_cache))
    if not np.isfinite(a).all():
        raise FloatingPointError(f"{job.name} gave a non-finite map.")
    out: dict[str, Any] = {}
    parameter = next(model.parameters(), None)
    device = None if parameter is None else parameter.device
    if float(a.max()) == float(a.min()):
        # Quantus refuses constant maps. One ranks pixels by index (stable order),
        # which a decreasing ramp reproduces; the record says so.
        a = np.linspace(1.0, 0.5, a.size, dtype=np.float32).reshape(a.shape)
        out["constant_map"] = 1.0
    for name in job.metrics:
        metric = make_metric(name, x.shape[-1], job.positive_only)
        # Quantus moves the inputs to its ``device`` (the CPU unless told): the model's.
        value = metric(scoring_model or model, x, y, a_batch=a, s_batch=s, device=device)
        if name == "pixel_flipping":
            # Quantus's return_auc_per_sample calls np.trapz, which numpy 2.4 removed.
            out[name] = curve_auc(np.asarray(value[0], dtype=np.float64))
        else:
            out[name] = float(value[0])
        if hasattr(metric, "curves"):
            out[f"{name}_curve"] = [float(v) for v in metric.curves[0]]
            # Its x axis, the share of pixels moved at each point: the last step may be
            # short. Named *_curve so that summaries average it as a curve.
            out[f"{name}_x_curve"] = [float(v) for v in metric.fractions[0]]
    return out
