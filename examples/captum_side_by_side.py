"""Captum's LayerGradCam and this library's CAMs, side by side, on the same call.

Runs offline on a random-weight ResNet-18 (no downloads) and prints, for each
method, the map's shape and its correlation with Captum's Grad-CAM map.

    python examples/captum_side_by_side.py
"""

from __future__ import annotations

import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam

from captum_fdcam import METHODS


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 224, 224)
    labels = [3, 7]

    reference = LayerGradCam(model, model.layer4).attribute(images, target=labels)
    print(f"captum LayerGradCam: {tuple(reference.shape)}")
    for name, method in METHODS.items():
        attr = method(model, model.layer4).attribute(images, target=labels)
        corr = torch.corrcoef(torch.stack([attr.flatten(), reference.flatten()]))[0, 1]
        upsampled = LayerAttribution.interpolate(attr, (224, 224), "bilinear")
        print(
            f"{name:<11s} {tuple(attr.shape)} -> {tuple(upsampled.shape)}, "
            f"correlation with Captum's Grad-CAM {corr:.3f}"
        )


if __name__ == "__main__":
    main()
