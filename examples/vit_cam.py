"""CAMs on a vision transformer, with ``reshape_transform=TokensToGrid()``.

No pretrained ViT is available offline, so this example trains one that has something
to find: a small torchvision ``VisionTransformer`` (32 px images, 8 px patches, a 4x4
grid of patch tokens plus the class token) learns to name the colour (red, green or
blue) of a square placed in one random patch of a noisy image. Then every CAM explains
held-out images at two layers,

* ``encoder.layers.encoder_layer_0.ln_1``: before any attention, each token is still its own patch;
* ``encoder.layers.encoder_layer_1.ln_1``: the last block, the layer grad-cam's documentation uses;

and the example prints each method's pointing-game hit rate (the map's maximum in the
square's patch; chance is 1/16) and draws the maps of a few images::

    python examples/vit_cam.py [--out figures/examples] [--small]

The hit rates are what this small model gives, not a ranking of the methods: attention
spreads a patch's evidence over all tokens, and in a LayerNorm's output a channel at 0
is not "switched off", which is what Ablation-CAM assumes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from captum_fdcam import METHODS
from captum_fdcam.reshape import TokensToGrid
from captum_fdcam.visualization import (
    MINMAX_SCALE,
    figure_grid,
    finish_figure,
    normalize_map,
    overlay_scaled,
    save_figure,
    upsample,
)

COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
GRID, PATCH = 4, 8
LAYERS = ("encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_1.ln_1")
SHOWN_METHODS = ("Grad-CAM", "Layer-CAM", "Score-CAM", "Ablation-CAM", "FD-CAM")


@dataclass
class VitResult:
    figure: Path
    accuracy: float
    #: layer -> method -> share of held-out images whose map peaks in the square's patch.
    hit_rates: dict[str, dict[str, float]]
    #: the maps of the figure's first image, layer -> method -> (1, 1, 4, 4).
    shapes: dict[str, dict[str, tuple[int, ...]]]


def squares(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` noisy images, each with a coloured square in one patch: images, colour
    labels and the square's patch index (row-major on the 4x4 grid)."""
    x = 0.5 * torch.randn(n, 3, GRID * PATCH, GRID * PATCH, generator=generator)
    labels = torch.randint(len(COLOURS), (n,), generator=generator)
    patches = torch.randint(GRID * GRID, (n,), generator=generator)
    for i in range(n):
        row, col = divmod(int(patches[i]), GRID)
        top, left = row * PATCH + 2, col * PATCH + 2
        x[i, :, top : top + 4, left : left + 4] = 1.5 * COLOURS[labels[i]][:, None, None]
    return x, labels, patches


def train(steps: int) -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=GRID * PATCH,
        patch_size=PATCH,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=len(COLOURS),
    )
    # torchvision starts the head at zero; a small random head trains faster here.
    nn.init.normal_(vit.heads.head.weight, std=0.02)
    optimiser = torch.optim.Adam(vit.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, labels, _ = squares(64, generator)
        loss = F.cross_entropy(vit(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return vit.eval()


def draw(x: Tensor, maps: dict[str, Tensor], path: Path, title: str, layer: str) -> Path:
    """One row per image: the image, then each method's map (min-max per map) over it."""
    rows, columns = len(x), 1 + len(maps)
    # 0.6 inch more for the colour bar under the panels.
    fig, axes = figure_grid(rows, columns, (1.8 * columns, 1.1 + 1.8 * rows))
    images = (x.permute(0, 2, 3, 1).clamp(-1.5, 1.5) / 3 + 0.5).numpy()
    for i, ax_row in enumerate(axes):
        ax_row[0].imshow(images[i])
        ax_row[0].set_title("image" if i == 0 else "", fontsize=9)
        for ax, (name, cam) in zip(ax_row[1:], maps.items(), strict=True):
            full = upsample(cam[i : i + 1], x.shape[-2:])
            overlay_scaled(ax, images[i], normalize_map(full))
            if i == 0:
                ax.set_title(name, fontsize=9)
    finish_figure(fig, axes, title, layer=layer, scale=MINMAX_SCALE)
    return save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> VitResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/examples"), help="folder")
    parser.add_argument("--small", action="store_true", help="shorter training, fewer images")
    args = parser.parse_args(argv)

    vit = train(150 if args.small else 400)
    x, labels, patches = squares(24 if args.small else 200, torch.Generator().manual_seed(5))
    with torch.no_grad():
        accuracy = float((vit(x).argmax(1) == labels).float().mean())
    print(f"held-out accuracy {accuracy:.3f} on {len(x)} images; chance pointing rate 0.0625")

    hit_rates: dict[str, dict[str, float]] = {}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    last: dict[str, Tensor] = {}
    print(f"{'layer':<36s} " + " ".join(f"{m:>12s}" for m in SHOWN_METHODS))
    for name in LAYERS:
        layer = vit.get_submodule(name)
        hit_rates[name], shapes[name] = {}, {}
        for method in SHOWN_METHODS:
            cam = METHODS[method](vit, layer, reshape_transform=TokensToGrid())
            maps = cam.attribute(x, target=labels, relu_attributions=True)
            hit_rates[name][method] = float((maps.flatten(1).argmax(1) == patches).float().mean())
            shapes[name][method] = tuple(maps.shape)
            if name == LAYERS[-1]:
                last[method] = maps
        print(f"{name:<36s} " + " ".join(f"{hit_rates[name][m]:>12.3f}" for m in SHOWN_METHODS))

    shown = 3 if args.small else 5
    figure = draw(
        x[:shown],
        {m: v[:shown] for m, v in last.items()},
        args.out / "vit_cam.png",
        "ViT (2 blocks, trained here), reshape_transform=TokensToGrid()",
        LAYERS[-1],
    )
    print(f"Wrote {figure}")
    return VitResult(figure, accuracy, hit_rates, shapes)


if __name__ == "__main__":
    main()
