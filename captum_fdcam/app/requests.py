"""What the application services are asked to do: one frozen dataclass per service.

The command line parses its arguments into these; Python callers build them directly.
Only the standard library is imported: the command line builds a request before it
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# ModelRequest is the model service's own request; it is part of every request here.
from captum_fdcam.loading import OFFLINE_MODEL, ModelRequest

__all__ = [
    "BENCHMARK_OUT",
    "DEFAULT_METHODS",
    "DEFAULT_METRICS",
    "BenchmarkRequest",
    "EvaluateRequest",
    "ExplainRequest",
    "ModelRequest",
]

#: The metrics ``evaluate`` scores unless told otherwise.
DEFAULT_METRICS = ("insertion", "deletion", "average_drop", "average_increase")
#: The benchmark's output folder unless told otherwise: in the current directory, not
#: the repository's committed results.
BENCHMARK_OUT = Path("captum-fdcam-benchmark")
#: The methods ``explain`` and ``evaluate`` run unless told otherwise.
DEFAULT_METHODS = ("Grad-CAM", "FD-CAM")


@dataclass(frozen=True)
class ExplainRequest:
    """Explain image files with methods, writing figures and maps into a folder.

    Attributes:
        images: image files and folders of images; empty: the bundled sample photo.
        methods: method names (``"Grad-CAM"``, ``"FG-Grad-CAM"``, ``"IntegratedGradients"``).
        target: the class to explain; None: each image's top class.
        out: the output folder (created when the first image's maps exist).
        save_maps: also write each map as ``<stem>.<method>.npy``.
        progress: progress bars (per image, and inside the perturbation CAMs).
    """

    images: tuple[Path, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    model: ModelRequest = field(default_factory=ModelRequest)
    target: int | None = None
    out: Path = Path("figures")
    save_maps: bool = True
    progress: bool = True


@dataclass(frozen=True)
class EvaluateRequest:
    """Score methods with metrics on image files, resumably, into a folder.

    Attributes:
        images: image files and folders of images.
        labels: a CSV with columns ``file,class_index`` (names relative to the CSV's
            folder); it may list more images than are scored, but every scored image
            needs a row. None: ``labels.csv`` beside the images if there is one, else
            the model's top class.
        methods: method names, as for :class:`ExplainRequest`.
        metrics: metric names of ``captum_fdcam.evaluation.metric_info.per_image_metrics()``.
        limit: the first N images only.
        out: the output folder; a run resumes the scores already there.
        progress: progress bars.
    """

    images: tuple[Path, ...]
    labels: Path | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    model: ModelRequest = field(default_factory=ModelRequest)
    limit: int | None = None
    out: Path = Path("evaluation")
    progress: bool = True


@dataclass(frozen=True)
class BenchmarkRequest:
    """Reproduce the papers' tables on a labelled folder (``captum_fdcam.benchmark``).

    Attributes:
        data: the folder of images, with a ``labels.csv`` unless ``labels`` is given.
        labels: the labels CSV; None: ``data/labels.csv``.
        out: the output folder; a run resumes the scores already there.
        tables: the tables to compute (``captum_fdcam.benchmark.TABLES``); empty: all.
        cams: the CAMs of the tables; empty: all.
        model: the offline model (``efficientnet-lite0``, ``-lite1``, ``-lite2``:
            ``captum_fdcam.loading.OFFLINE_MODELS``).
        limit: the first N labelled images by file name.
        mosaics: GridPG mosaics, at most.
        image_size: the resize/crop size; None: the model's own (224, 240, 260).
        labelled_only: score only the images the labels file lists; otherwise an image
            of ``data`` without a label is an error naming it.
        fast_cpu: run the model in channels-last memory format, and the metrics'
            forward passes on :func:`captum_fdcam.models.inference_copy` (BatchNorm
            folded into the convolutions): about 2x faster on CPUs, the scores equal the
            default's up to float rounding (which can move FD-CAM's discrete channel
            grouping). Part of the run's fingerprint, so that a folder's scores are all
            computed one way.
        tables_only: compute nothing; write the tables of the records already in
            ``out`` (after a stopped run, whose tables are those of the run before).
        progress: progress bars.
    """

    data: Path
    labels: Path | None = None
    out: Path = BENCHMARK_OUT
    tables: tuple[str, ...] = ()
    cams: tuple[str, ...] = ()
    model: str = OFFLINE_MODEL
    limit: int | None = None
    mosaics: int = 24
    image_size: int | None = None
    labelled_only: bool = False
    fast_cpu: bool = False
    tables_only: bool = False
    progress: bool = True
