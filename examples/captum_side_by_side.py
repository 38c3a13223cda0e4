"""Captum's LayerGradCam and this library's CAMs, side by side, on the same call.

Every CAM here is a Captum ``LayerAttribution`` with ``LayerGradCam``'s constructor
and ``attribute`` signature, so switching method is switching class. Runs offline on
a random-weight ResNet-18 (no downloads) and prints, for each method, the map's shape,
its size after Captum's ``LayerAttribution.interpolate`` and its correlation with
Captum's Grad-CAM map (1.000 for Grad-CAM itself, and for XGrad-CAM, which equals
Grad-CAM when the gradient is constant over positions, as behind ResNet's global
average pooling and linear head). Last, FG-CAM over Captum's own ``LayerGradCam``. The table
is also written as markdown to ``--out``::

    python examples/captum_side_by_side.py [--out figures/examples] [--small]

``--small`` (for CI) leaves out Score-CAM and Group-CAM, which run the whole network
once per channel (512) or per group: about 90 s of Score-CAM on two CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam

from captum_fdcam import METHODS, FGCam

#: Perturbation CAMs that run the whole network many times: skipped with --small.
SLOW_METHODS = ("Score-CAM", "Group-CAM")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the comparison; returns each method's correlation with Captum's Grad-CAM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="skip Score-CAM, Group-CAM (CI)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 224, 224)
    labels = [3, 7]

    reference = LayerGradCam(model, model.layer4).attribute(images, target=labels).detach()
    print(f"captum LayerGradCam: {tuple(reference.shape)}")
    rows = ["| method | map | upsampled | correlation with Captum's Grad-CAM |", "|---" * 4 + "|"]
    correlations: dict[str, float] = {}
    for name, method in METHODS.items():
        if args.small and name in SLOW_METHODS:
            continue
        attr = method(model, model.layer4).attribute(images, target=labels).detach()
        corr = torch.corrcoef(torch.stack([attr.flatten(), reference.flatten()]))[0, 1]
        correlations[name] = float(corr)
        upsampled = LayerAttribution.interpolate(attr, (224, 224), "bilinear")
        print(
            f"{name:<13s} {tuple(attr.shape)} -> {tuple(upsampled.shape)}, "
            f"correlation with Captum's Grad-CAM {corr:.3f}"
        )
        rows.append(f"| {name} | {tuple(attr.shape)} | {tuple(upsampled.shape)} | {corr:.3f} |")

    # FG-CAM takes Captum's own LayerGradCam as its base CAM, too.
    fine = FGCam(LayerGradCam(model, model.layer4)).attribute(images, target=labels)
    print(f"FGCam over captum's LayerGradCam: {tuple(fine.shape)} (input resolution)")
    rows.append(f"| FG-CAM over Captum's LayerGradCam | {tuple(fine.shape)} | (input) | |")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "captum_side_by_side.md"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"Wrote {path}")
    return correlations


if __name__ == "__main__":
    main()
