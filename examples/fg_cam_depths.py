"""FG-CAM at several depths of EfficientNet-Lite0, next to plain Grad-CAM at each depth.

FG-CAM (Qiu et al., AAAI 2024) takes a CAM's components at the last layer
(``model.head_activation``, 7x7) and propagates them with LRP rules to a shallower
layer or to the input, where the map is finer. Grad-CAM computed directly at a
shallow layer is the naive alternative: its gradients there are noisy and its maps
often point at edges everywhere. This example explains scikit-image's ``chelsea``
photo (a cat, public domain) at ``head_activation``, ``_blocks.10`` (14x14),
``_blocks.4`` (28x28), ``_blocks.2`` (56x56) and the input (224x224) with

* Grad-CAM at that layer (``LayerGradCam(model, layer)``; none at the input),
* FG-Grad-CAM (``LayerFGCam(base, layer)``, ``FGCam(base)`` at the input),
* FG-Grad-CAM-D (the same with ``denoise=True``),

prints each map's size and its correlation with the base Grad-CAM map at the head
(FG-CAM should keep the base map's location; Grad-CAM at shallow layers drifts), and
writes one figure with a row per depth::

    python examples/fg_cam_depths.py [--out figures/examples] [--small] [--base Layer-CAM]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captum_fdcam import METHODS, FGCam, LayerFGCam, LayerGradCam
from captum_fdcam.models import denormalize, efficientnet_lite0, imagenet_categories, preprocess
from captum_fdcam.visualization import (
    figure_grid,
    finish_figure,
    normalize_map,
    overlay_scaled,
    save_figure,
    upsample,
)

#: Depths, shallowest last; None is the input.
FULL_DEPTHS = ("head_activation", "_blocks.10", "_blocks.4", "_blocks.2", None)
SMALL_DEPTHS = ("_blocks.10", None)
#: What the figure's colours mean (:func:`display_map`).
DISPLAY_SCALE = "relevance per map, min-max normalised, top 0.5% saturated (0-1)"


@dataclass
class DepthsResult:
    """The figure and, per depth and method, the map's (h, w) and its correlation."""

    figure: Path
    target: int
    #: depth name ("input" for the input) -> method -> (h, w) of the map at that depth.
    sizes: dict[str, dict[str, tuple[int, int]]]
    #: depth -> method -> Pearson correlation with the head's Grad-CAM map (224x224).
    correlations: dict[str, dict[str, float]]


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two maps of the same size (0 if either is constant)."""
    stacked = torch.stack([a.flatten(), b.flatten()]).double()
    if (stacked.std(dim=1) == 0).any():
        return 0.0
    return float(torch.corrcoef(stacked)[0, 1])


def display_map(cam: Tensor) -> np.ndarray:
    """The map scaled to [0, 1] with its top 0.5% saturated.

    Fine-grained maps are heavy-tailed: a few pixels carry most of the relevance, and
    a min-max scale would leave everything else invisible.
    """
    scaled = normalize_map(cam)
    high = float(np.quantile(scaled, 0.995))
    return np.clip(scaled / high, 0, 1) if high > 0 else scaled


def draw(
    image: np.ndarray,
    rows: dict[str, dict[str, Tensor | None]],
    path: Path,
    title: str,
    layer: str,
) -> Path:
    """One row per depth: the photo, then each method's map upsampled onto it."""
    columns = 1 + max(len(maps) for maps in rows.values())
    # 0.6 inch more for the colour bar under the panels.
    fig, axes = figure_grid(len(rows), columns, (2.0 * columns, 1.0 + 2.2 * len(rows)))
    for ax_row, (depth, maps) in zip(axes, rows.items(), strict=True):
        ax_row[0].imshow(image)
        ax_row[0].set_title(depth if depth == "input" else f"layer {depth}", fontsize=9)
        for ax, (name, cam) in zip(ax_row[1:], maps.items(), strict=False):
            if cam is None:
                ax.text(0.5, 0.5, f"no {name}\nat the input", ha="center", va="center")
                continue
            overlay_scaled(ax, image, display_map(cam))
            ax.set_title(name, fontsize=9)
    finish_figure(fig, axes, title, layer=layer, scale=DISPLAY_SCALE)
    return save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> DepthsResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="two depths only (CI)")
    parser.add_argument(
        "--base",
        default="Grad-CAM",
        choices=list(METHODS),
        help="the CAM that FG-CAM refines (Score-CAM and Group-CAM are slow)",
    )
    args = parser.parse_args(argv)

    model = efficientnet_lite0(pretrained=True)
    from skimage import data

    x = preprocess(data.chelsea())
    with torch.no_grad():
        target = int(model(x).argmax())
    category = imagenet_categories()[target]
    print(f"Explaining {category!r} (class {target}) on chelsea, base CAM: {args.base}")

    base = METHODS[args.base](model, model.head_activation)
    reference = upsample(
        LayerGradCam(model, model.head_activation).attribute(
            x, target=target, relu_attributions=True
        ),
        x.shape[-2:],
    )
    fg_name = f"FG-{args.base}"
    rows: dict[str, dict[str, Tensor | None]] = {}
    sizes: dict[str, dict[str, tuple[int, int]]] = {}
    correlations: dict[str, dict[str, float]] = {}
    print(f"{'depth':<16s} {'method':<18s} {'size':>8s}  corr. with head Grad-CAM")
    for depth in SMALL_DEPTHS if args.small else FULL_DEPTHS:
        maps: dict[str, Tensor | None] = {}
        if depth is None:
            label = "input"
            maps["Grad-CAM"] = None
            maps[fg_name] = FGCam(base).attribute(x, target=target, relu_attributions=True)
            maps[f"{fg_name}-D"] = FGCam(base, denoise=True).attribute(
                x, target=target, relu_attributions=True
            )
        else:
            label = depth
            layer = model.get_submodule(depth)
            maps["Grad-CAM"] = LayerGradCam(model, layer).attribute(
                x, target=target, relu_attributions=True
            )
            maps[fg_name] = LayerFGCam(base, layer).attribute(
                x, target=target, relu_attributions=True
            )
            maps[f"{fg_name}-D"] = LayerFGCam(base, layer, denoise=True).attribute(
                x, target=target, relu_attributions=True
            )
        rows[label], sizes[label], correlations[label] = {}, {}, {}
        for name, cam in maps.items():
            if cam is None:
                rows[label][name] = None
                continue
            full = upsample(cam, x.shape[-2:])
            rows[label][f"{name} {cam.shape[-2]}x{cam.shape[-1]}"] = full
            sizes[label][name] = (cam.shape[-2], cam.shape[-1])
            correlations[label][name] = correlation(full, reference)
            size = f"{cam.shape[-2]}x{cam.shape[-1]}"
            print(f"{label:<16s} {name:<18s} {size:>8s}  {correlations[label][name]:+.3f}")

    image = denormalize(x)[0].permute(1, 2, 0).numpy()
    figure = draw(
        image,
        rows,
        args.out / "fg_cam_depths.png",
        f"EfficientNet-Lite0, {category}: Grad-CAM at each layer vs FG-CAM from the head",
        "per row (FG-CAM's base CAM at head_activation)",
    )
    print(f"Wrote {figure}")
    return DepthsResult(figure, target, sizes, correlations)


if __name__ == "__main__":
    main()
