"""A Quantus evaluation of CAMs on bundled photos with ``quantus.evaluate``.

Photos: public-domain images shipped inside scikit-image and matplotlib that the
offline EfficientNet-Lite0 classifies with some confidence (chelsea: Egyptian cat,
coffee: espresso, rocket: missile, camera: tripod, motorcycle: moped, Grace Hopper:
mortarboard); each is explained for the model's top class. Methods go through
``captum_fdcam.evaluation.evaluate`` (``quantus.evaluate``, one
``captum_fdcam.evaluation.Explainer`` per method) at ``model.head_activation``: Grad-CAM, FD-CAM,
Layer-CAM and FG-Grad-CAM (FG-CAM at the input). Metrics: this library's
``Insertion`` (higher is better), ``Deletion`` (lower), ``AverageDrop`` (lower) and
Quantus's own ``PixelFlipping`` (the class probability as the most relevant pixels
are set to 0, i.e. the mean colour, step by step; its AUC on [0, 1] as for Deletion;
lower is better).

Prints a table of mean scores over the photos and writes it as markdown::

    python examples/quantus_evaluation.py [--out figures/examples] [--small]

The full run takes 2-3 minutes on two CPU cores (about 1,700 forward passes, mostly
Insertion and Deletion); ``--small`` (for CI): two photos, three methods and coarse
steps (10% of the pixels a step instead of 3.6%). Six photos are far too few to rank
methods: this shows the workflow; ``python -m captum_fdcam.benchmark`` runs the
papers' tables. Pixel-level maps (FG-Grad-CAM) and region maps do not compare fairly on
pixel-removal metrics: removing scattered pixels breaks the image faster than removing
a region, whatever they show, so FG-Grad-CAM's Deletion and PixelFlipping look far
better and its Insertion worse.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import quantus
import torch

from captum_fdcam.evaluation import (
    AverageDrop,
    Deletion,
    Explainer,
    Insertion,
    curve_auc,
    evaluate,
)
from captum_fdcam.models import efficientnet_lite0, imagenet_categories, preprocess

FULL_METHODS = ("Grad-CAM", "FD-CAM", "Layer-CAM", "FG-Grad-CAM")
SMALL_METHODS = ("Grad-CAM", "FD-CAM", "Layer-CAM")
#: Arrow after each metric's name in the table: which way is better.
BETTER = {"Insertion": "↑", "Deletion": "↓", "AverageDrop": "↓", "PixelFlipping": "↓"}


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        # stereo_motorcycle is a (left, right, disparity) triple; camera is greyscale.
        image = image[0] if isinstance(image, tuple) else image
        return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "camera": _skimage("camera"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "grace_hopper": _grace_hopper,
}
SMALL_PHOTOS = ("chelsea", "coffee")


@dataclass
class EvaluationResult:
    """Mean score per method and metric, the markdown file, and what was explained."""

    table: dict[str, dict[str, float]]
    markdown: Path
    photos: list[str]
    targets: list[int]


def metrics(small: bool) -> dict[str, quantus.Metric]:
    """The metrics, configured; ``small`` takes coarser steps (fewer forward passes)."""
    # None: the paper's steps of 8 rows (1792 pixels at 224 x 224, 28 steps).
    step = 0.1 if small else None
    # PixelFlipping counts the values of the (3, 224, 224) image, in steps that must
    # divide 224 x 224: 24 steps of 4.2% (3 of a third with --small).
    flip_step = 224 * 224 if small else 224 * 28
    quiet = {"disable_warnings": True}
    return {
        "Insertion": Insertion(pixels_per_step=step, **quiet),
        "Deletion": Deletion(pixels_per_step=step, **quiet),
        "AverageDrop": AverageDrop(**quiet),
        "PixelFlipping": quantus.PixelFlipping(
            features_in_step=flip_step,
            perturb_baseline=0.0,
            # Not return_auc_per_sample=True: Quantus 0.6 calls np.trapz, gone in numpy 2.4.
            **quiet,
        ),
    }


def mean_score(scores: list[Any]) -> float:
    """The mean over images of a score, or of a curve's AUC (PixelFlipping's curves)."""
    return float(np.mean([curve_auc(np.asarray(s)) if np.ndim(s) else s for s in scores]))


def markdown_table(table: dict[str, dict[str, float]], caption: str) -> str:
    """The caption, then a row per method and a column per metric."""
    names = list(next(iter(table.values())))
    header = "| method | " + " | ".join(f"{n} {BETTER.get(n, '')}".strip() for n in names)
    lines = [caption, "", header + " |", "|---" * (len(names) + 1) + "|"]
    for method, scores in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{scores[n]:.4g}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> EvaluationResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="2 photos, 3 methods (CI)")
    args = parser.parse_args(argv)

    model = efficientnet_lite0(pretrained=True)
    categories = imagenet_categories()
    names = list(SMALL_PHOTOS if args.small else PHOTOS)
    x = torch.cat([preprocess(PHOTOS[name]()) for name in names])
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)
    top_p, targets = probs.max(dim=-1)
    for name, p, t in zip(names, top_p, targets, strict=True):
        print(f"{name:<13s} {categories[t]:<20s} p = {p.item():.3f}")

    methods = SMALL_METHODS if args.small else FULL_METHODS
    # quantus.evaluate's arguments; a failing metric stops it with an error naming the
    # method and the metric (quantus.evaluate itself prints it and goes on).
    results = evaluate(
        metrics=metrics(args.small),
        # An Explainer per method, which could bind options of its own (method_kwargs,
        # another layer, ...): see docs/evaluation.md, "Suites with quantus.evaluate".
        xai_methods={name: Explainer(name) for name in methods},
        explain_func_kwargs={"layer": "head_activation", "batch_size": 8},  # shared
        model=model,
        x_batch=x.numpy(),
        y_batch=targets.numpy(),
        agg_func=mean_score,
        call_kwargs={"cpu": {"device": "cpu", "batch_size": 64}},
    )

    caption = (
        f"Mean over {len(names)} photos ({', '.join(names)}), EfficientNet-Lite0, "
        "target = top class; ↑ higher is better, ↓ lower is better."
    )
    table = {m: {k: float(v) for k, v in scores.items()} for m, scores in results.items()}
    text = markdown_table(table, caption)
    print(text)
    missing = [(m, k) for m, s in table.items() for k, v in s.items() if not math.isfinite(v)]
    if missing:
        print(f"Warning: no finite score for {missing}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "quantus_evaluation.md"
    path.write_text(text, encoding="utf-8")
    print(f"Wrote {path}")
    return EvaluationResult(table, path, names, [int(t) for t in targets])


if __name__ == "__main__":
    main()
