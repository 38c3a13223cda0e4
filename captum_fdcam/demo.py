"""The main job: explain a bundled photograph with the offline ImageNet model.

Runs every CAM method of the library on scikit-image's ``chelsea`` photo (a cat;
public domain, shipped inside scikit-image) with pretrained EfficientNet-Lite0,
prints the model's top-5 classes, and writes one PNG: the photo and one overlay
per method, all explaining the top class at ``model.head_activation``.

Usage::

    python -m captum_fdcam.demo [--out figures/demo.png] [--image PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from captum_fdcam import METHODS
from captum_fdcam.models import (
    denormalize,
    efficientnet_lite0,
    imagenet_categories,
    preprocess,
    read_rgb,
)
from captum_fdcam.visualization import overlay_figure, upsample


def _load_image(path: str | None) -> np.ndarray:
    if path is None:
        from skimage import data

        return data.chelsea()
    return np.asarray(read_rgb(path))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/demo.png", help="figure to write")
    parser.add_argument("--image", default=None, help="photo (default: skimage chelsea)")
    args = parser.parse_args(argv)

    model = efficientnet_lite0(pretrained=True)
    layer = model.head_activation
    x = preprocess(_load_image(args.image))
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    categories = imagenet_categories()
    top = probs.topk(5)
    print("Top-5 classes (EfficientNet-Lite0):")
    for rank, (p, idx) in enumerate(zip(top.values, top.indices, strict=True), start=1):
        print(f"  {rank}. {categories[idx]:<24s} {p.item():6.2%}  (class {idx.item()})")
    target = int(top.indices[0])

    maps = {}
    for name, method in METHODS.items():
        cam = method(model, layer).attribute(x, target=target, relu_attributions=True)
        maps[name] = upsample(cam, x.shape[-2:])
    image = denormalize(x)[0].permute(1, 2, 0).numpy()
    path = overlay_figure(
        image, maps, args.out, title=f"EfficientNet-Lite0, class: {categories[target]}"
    )
    print(f"Wrote {path} ({', '.join(maps)})")
    return path


if __name__ == "__main__":
    main()
