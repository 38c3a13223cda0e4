"""FD-CAM on an image with two objects of two classes, one map per class.

The FD-CAM paper's Fig. 1 explains "cat" and "dog" separately on one photo with both
animals: a class-discriminative map lights up the explained animal only. No dog photo
ships with any installed package and this repository must not ship ImageNet photos,
so **by default the image is a stand-in**: scikit-image's ``chelsea`` (a cat) beside
its ``coffee`` (a cup of espresso), both public domain, each preprocessed to 224x224
and put side by side on a 224x448 canvas (EfficientNet-Lite0 pools adaptively, so it
takes the wider input). Each half's class is the one the model predicts for that
photo alone.

Both classes are explained on the composite with ``LayerFDCam`` at
``model.head_activation`` (7x14 maps here), next to Grad-CAM and a few other CAMs.
The script prints, for each class and method, the share of the map's positive mass
that falls in that class's half (1.0: only its own object; 0.5: no preference) and
writes one figure, a row per class.

Run it on your own photo (the paper's cat-and-dog one, for instance; resized to 224
rows, uncropped) with the first class on the left and the second on the right;
classes by ImageNet index or name::

    python examples/fd_cam_two_classes.py [--out figures/examples] [--small]
    python examples/fd_cam_two_classes.py --image cat_dog.jpg --classes "bull mastiff" 282
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captum_fdcam import METHODS
from captum_fdcam.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    efficientnet_lite0,
    imagenet_categories,
    preprocess,
)
from captum_fdcam.visualization import (
    MINMAX_SCALE,
    figure_grid,
    finish_figure,
    normalize_map,
    overlay_scaled,
    save_figure,
    upsample,
)

#: Compared with FD-CAM by default; all are cheap at the head layer (Score-CAM and
#: Group-CAM would run the whole network hundreds of times).
FULL_METHODS = ("FD-CAM", "Grad-CAM", "Grad-CAM++", "Layer-CAM", "Ablation-CAM")
SMALL_METHODS = ("FD-CAM", "Grad-CAM")
SIDES = ("left", "right")


@dataclass
class TwoClassResult:
    """What the example computed: the figure, the classes (left, right) and the shares."""

    figure: Path
    class_indices: list[int]
    class_names: list[str]
    #: method -> "left" / "right" -> share of the positive mass of the map of that
    #: side's class in that side's half.
    shares: dict[str, dict[str, float]]
    #: Softmax probability of each class (left, right) on the two-object image.
    probabilities: list[float]


def parse_class(value: str, categories: list[str]) -> int:
    """An ImageNet class from its index ("282") or its name ("tiger cat", any case)."""
    if value.isdigit() and int(value) < len(categories):
        return int(value)
    lowered = [name.lower() for name in categories]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    close = [name for name in categories if value.lower() in name.lower()][:8]
    hint = f" Close: {', '.join(close)}." if close else ""
    raise ValueError(f"Unknown ImageNet class {value!r}.{hint}")


def bundled_pair() -> tuple[np.ndarray, np.ndarray]:
    """The stand-in for the paper's cat-and-dog photo: a cat and a cup (scikit-image)."""
    from skimage import data

    return data.chelsea(), data.coffee()


def side_by_side(left: np.ndarray, right: np.ndarray) -> Tensor:
    """Both photos preprocessed as usual, then joined: (1, 3, 224, 448)."""
    return torch.cat([preprocess(left), preprocess(right)], dim=-1)


def load_whole(path: str | Path, height: int = 224) -> Tensor:
    """A photo resized to ``height`` rows, keeping its aspect ratio and uncropped.

    The usual centre crop would cut off the objects at the sides of a wide photo.
    Both sides are rounded to multiples of 32, the network's stride, so the map's
    cells line up with the image.
    """
    from PIL import Image
    from torchvision.transforms import v2

    image = Image.open(path).convert("RGB")
    width = max(32, round(image.width * height / image.height / 32) * 32)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((height, width), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return transform(image).unsqueeze(0)


def half_shares(cam: Tensor) -> tuple[float, float]:
    """Shares of the positive mass of a (1, 1, H, W) map in its left and right halves."""
    positive = cam.clamp(min=0)[0, 0]
    total = positive.sum()
    if total <= 0:
        return 0.0, 0.0
    middle = positive.shape[-1] // 2
    left = float(positive[:, :middle].sum() / total)
    return left, 1.0 - left


def draw(
    image: np.ndarray, rows: dict[str, dict[str, Tensor]], path: Path, title: str, layer: str
) -> Path:
    """One row per class: the image, then each method's overlay (min-max per map)."""
    columns = 1 + max(len(maps) for maps in rows.values())
    aspect = image.shape[1] / image.shape[0]
    # Panel height: the image's plus room for its title, so titles never overlap; 0.8 inch
    # more width for the colour bar at the right.
    fig, axes = figure_grid(
        len(rows), columns, (0.8 + 1.8 * aspect * columns, 0.4 + 2.2 * len(rows))
    )
    for ax_row, (label, maps) in zip(axes, rows.items(), strict=True):
        ax_row[0].imshow(image)
        ax_row[0].set_title(f"explaining {label}", fontsize=9)
        for ax, (name, cam) in zip(ax_row[1:], maps.items(), strict=False):
            overlay_scaled(ax, image, normalize_map(cam))
            ax.set_title(name, fontsize=9)
    finish_figure(fig, axes, title, layer=layer, scale=MINMAX_SCALE, location="right")
    return save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> TwoClassResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="FD-CAM and Grad-CAM only (CI)")
    parser.add_argument("--image", default=None, help="your own two-object photo")
    parser.add_argument(
        "--classes", nargs=2, metavar=("LEFT", "RIGHT"), help="with --image: two classes"
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="CAMs to run")
    args = parser.parse_args(argv)
    if (args.image is None) != (args.classes is None):
        parser.error("--image and --classes go together")

    model = efficientnet_lite0(pretrained=True)
    categories = imagenet_categories()
    if args.image is None:
        photos = bundled_pair()
        with torch.no_grad():
            alone = [int(model(preprocess(photo)).argmax()) for photo in photos]
        x = side_by_side(*photos)
        targets = alone
    else:
        x = load_whole(args.image)
        try:
            targets = [parse_class(value, categories) for value in args.classes]
        except ValueError as err:
            parser.error(str(err))
    names = [categories[t] for t in targets]
    if len(set(targets)) < 2:
        raise SystemExit(f"Both halves are {names[0]!r}: pick two different classes.")

    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    top = ", ".join(f"{categories[i]} {p:.3f}" for p, i in zip(*probs.topk(3), strict=True))
    print(f"Image {tuple(x.shape[-2:])}, top-3 classes: {top}")
    print("Explained classes (left, right) and their probability on this image:")
    for side, t in zip(SIDES, targets, strict=True):
        print(f"  {side:<5s} {categories[t]:<20s} (class {t:3d})  p = {probs[t].item():.3f}")

    methods = args.methods or (SMALL_METHODS if args.small else FULL_METHODS)
    layer_name = "head_activation"
    layer = model.get_submodule(layer_name)
    # Keyed by side too: ImageNet repeats a few names ("crane", "maillot").
    labels = [f"{side}: {name}" for side, name in zip(SIDES, names, strict=True)]
    rows: dict[str, dict[str, Tensor]] = {label: {} for label in labels}
    shares: dict[str, dict[str, float]] = {}
    print("Share of each map's positive mass in its own object's half (0.5 = none):")
    for method in methods:
        cam = METHODS[method](model, layer)
        # One call for both classes: the same image twice, one target each.
        maps = cam.attribute(x.expand(2, -1, -1, -1), target=targets, relu_attributions=True)
        maps = upsample(maps, tuple(x.shape[-2:]))
        shares[method] = {}
        for index, (row, m) in enumerate(zip(rows.values(), maps, strict=True)):
            row[method] = m
            shares[method][SIDES[index]] = half_shares(m[None])[index]
        cells = "  ".join(
            f"{label} {share:.3f}"
            for label, share in zip(labels, shares[method].values(), strict=True)
        )
        print(f"  {method:<13s} {cells}")

    image = denormalize(x)[0].permute(1, 2, 0).numpy()
    figure = draw(
        image,
        rows,
        args.out / "fd_cam_two_classes.png",
        "EfficientNet-Lite0, one map per class",
        layer_name,
    )
    print(f"Wrote {figure}")
    return TwoClassResult(figure, targets, names, shares, [probs[t].item() for t in targets])


if __name__ == "__main__":
    main()
