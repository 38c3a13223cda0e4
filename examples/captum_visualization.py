"""Captum's ``visualize_image_attr`` on this library's maps of a real photo.

Explains scikit-image's ``chelsea`` photo (a cat, public domain) with the offline
EfficientNet-Lite0 at ``model.head_activation`` and draws every map with Captum's own
``captum.attr.visualization.visualize_image_attr``. What a user has to do in between:

1. upsample the layer's (1, 1, 7, 7) map to the input with
   ``LayerAttribution.interpolate`` (Captum wants the map and the image the same size);
2. put both in Captum's layout, (H, W, C) numpy arrays: ``permute(1, 2, 0)``;
3. undo the ImageNet normalisation of the image (``denormalize``): Captum reads an image
   whose maximum is at most 1 as [0, 1] floats and anything else as 0-255 values, so the
   normalised tensor (values from -2.1 to 2.6) would be drawn as a near-black image;
4. pick ``sign``: ``"positive"`` for CAMs with ``relu_attributions=True`` (Captum's
   default, ``"absolute_value"``, would light up negative evidence too), ``"all"`` for
   signed maps (``relu_attributions=False``, Captum's default).

Panels: the photo; Grad-CAM, FD-CAM and SmoothGrad of Grad-CAM (Captum's
``NoiseTunnel``) as blended heat maps; Grad-CAM's signed map of "espresso", a class the
photo does not show (``sign="all"``: red, evidence against);
FG-Grad-CAM at the input; FD-CAM's map as ``masked_image`` and ``alpha_scaling``. One
PNG, ``captum-visualization.png`` in ``--out`` (the figure of docs/captum.md is this
script's output with ``--out docs/images``)::

    python examples/captum_visualization.py [--out figures/examples] [--small]

``--small`` (for CI) uses 4 noisy copies for SmoothGrad instead of 16.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, NoiseTunnel, visualization
from torch import Tensor

from captum_fdcam import FGCam, LayerFDCam, LayerGradCam
from captum_fdcam.models import denormalize, efficientnet_lite0, imagenet_categories, preprocess
from captum_fdcam.visualization import figure_grid, figure_title, save_figure

FIGURE = "captum-visualization.png"
#: The layer explained.
LAYER = "head_activation"
#: Standard deviation of SmoothGrad's noise on the normalised input (whose values span
#: about 4.7): 0.5 is ~10% of that span, the low end of the SmoothGrad paper's 10-20%.
NOISE_STDEV = 0.5
#: A class the photo does not show (espresso), for the signed map.
ABSENT_CLASS = 967


@dataclass
class VisualizationResult:
    """The figure, the explained class, and what went into ``visualize_image_attr``."""

    figure: Path
    target: int
    category: str
    #: The photo as drawn: (H, W, 3) in [0, 1].
    image: np.ndarray
    #: Panel title -> the (H, W, 1) map handed to Captum (None for the photo's panel).
    maps: dict[str, np.ndarray | None]


def to_hwc(t: Tensor) -> np.ndarray:
    """One (1, C, H, W) tensor as Captum's (H, W, C) numpy array."""
    return t[0].permute(1, 2, 0).detach().cpu().numpy()


def main(argv: list[str] | None = None) -> VisualizationResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="4 noisy copies, not 16 (CI)")
    args = parser.parse_args(argv)

    from skimage import data

    model = efficientnet_lite0(pretrained=True)
    layer = model.get_submodule(LAYER)
    x = preprocess(data.chelsea())  # (1, 3, 224, 224), ImageNet-normalised
    with torch.no_grad():
        target = int(model(x).argmax())
    categories = imagenet_categories()
    category, absent = categories[target], categories[ABSENT_CLASS]
    print(f"Explaining {category!r} (class {target}) on chelsea")

    def upsampled(attr: Tensor) -> Tensor:
        return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")

    grad_cam = LayerGradCam(model, layer)
    cams = {
        "Grad-CAM": upsampled(grad_cam.attribute(x, target=target, relu_attributions=True)),
        "FD-CAM": upsampled(
            LayerFDCam(model, layer).attribute(x, target=target, relu_attributions=True)
        ),
    }
    samples = 4 if args.small else 16
    torch.manual_seed(0)  # NoiseTunnel draws its noise from torch's global generator
    smooth = NoiseTunnel(grad_cam).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=samples,
        stdevs=NOISE_STDEV,
        target=target,
        relu_attributions=True,
    )
    cams[f"SmoothGrad Grad-CAM ({samples} copies)"] = upsampled(smooth)
    # Captum's default relu_attributions=False keeps the sign. On the cat's own class the
    # map is positive everywhere; a class absent from the photo shows evidence against.
    signed = upsampled(grad_cam.attribute(x, target=ABSENT_CLASS))
    # FG-CAM's map is at the input's resolution already: nothing to upsample.
    fine = FGCam(grad_cam).attribute(x, target=target, relu_attributions=True)

    image = to_hwc(denormalize(x))  # (224, 224, 3) in [0, 1]
    smooth_title = f"SmoothGrad Grad-CAM ({samples} copies)"
    fd_cam = to_hwc(cams["FD-CAM"])
    panels: list[tuple[str, np.ndarray | None, str, str]] = [
        ("photo", None, "original_image", "positive"),
        ("Grad-CAM", to_hwc(cams["Grad-CAM"]), "blended_heat_map", "positive"),
        ("FD-CAM", fd_cam, "blended_heat_map", "positive"),
        (smooth_title, to_hwc(cams[smooth_title]), "blended_heat_map", "positive"),
        (f"Grad-CAM, {absent!r}, signed", to_hwc(signed), "blended_heat_map", "all"),
        ("FG-Grad-CAM at the input", to_hwc(fine), "heat_map", "positive"),
        ("FD-CAM, masked_image", fd_cam, "masked_image", "positive"),
        ("FD-CAM, alpha_scaling", fd_cam, "alpha_scaling", "positive"),
    ]

    fig, axes = figure_grid(2, 4, (12.8, 7.6))  # 0.6 inch more for the colour bars
    for ax, (title, attr, method, sign) in zip(axes.flat, panels, strict=True):
        visualization.visualize_image_attr(
            # original_image ignores the map, but Captum still normalises one.
            attr if attr is not None else image[..., :1],
            image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, ax),
            use_pyplot=False,  # no plt.show(): the figure is saved below
            alpha_overlay=0.5,
            # jet for the CAMs' usual look; Captum's red-green default for signed maps.
            cmap="jet" if method == "blended_heat_map" and sign == "positive" else None,
            title=title,
        )
        if method in ("blended_heat_map", "heat_map"):
            # What the colours mean: Captum scales each map by its 98th cumulative-sum
            # percentile to [0, 1], or [-1, 1] when signed. (Captum's own show_colorbar
            # adds axes that matplotlib's constrained layout does not make room for.)
            bar = fig.colorbar(ax.images[-1], ax=ax, location="bottom", shrink=0.8, pad=0.02)
            bar.ax.tick_params(labelsize=7)
        shape = "-" if attr is None else str(attr.shape)
        print(f"{title:<32s} {method:<16s} sign={sign:<9s} map {shape}")
    figure_title(
        fig,
        f"EfficientNet-Lite0, class: {category} ({target}); colour bars: relevance per map, "
        "divided by its 98th cumulative-sum percentile (signed: -1 to 1)",
        layer=f"{LAYER} (FG-Grad-CAM: propagated from it to the input)",
    )
    path = save_figure(fig, args.out / FIGURE, dpi=100)
    print(f"Wrote {path}")
    return VisualizationResult(
        path, target, category, image, {title: attr for title, attr, _, _ in panels}
    )


if __name__ == "__main__":
    main()
