"""Which timm and Hugging Face models the CAMs run on as they are, and how.

For each model (random weights, small inputs, one thread): the layer
:func:`captum_fdcam.architectures.default_layer` picks, the layout
``reshape_transform="auto"`` reads there, whether Grad-CAM and FD-CAM run, whether FD-CAM
falls back to full forward passes (its one-time ``RuntimeWarning``), whether a map is
constant, and the error of those that fail. Not a timing: FD-CAM's seconds are given
only to show the replay at work (a fallback costs hundreds of times more).

Usage::

    python benchmarks/hub_zoo.py                # ~10 min on 2 cores
    python benchmarks/hub_zoo.py --only timm    # or hf
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import environment, environment_lines, version

#: timm models: name -> keyword arguments of ``timm.create_model`` (small variants).
TIMM: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_distilled_patch16_224": {"img_size": 64},
    "deit3_small_patch16_224": {"img_size": 64, "depth": 2},
    "vit_small_patch16_224 (4 registers)": {"img_size": 64, "reg_tokens": 4, "depth": 2},
    "eva02_tiny_patch14_224": {"img_size": 56},
    "beit_base_patch16_224": {"img_size": 64, "depth": 2},
    "cait_xxs24_224": {"img_size": 64, "depth": 2},
    "xcit_nano_12_p16_224": {"img_size": 64, "depth": 2},
    "convit_tiny": {"img_size": 64},
    "twins_svt_small": {"img_size": 64},
    "pvt_v2_b0": {},
    "swin_tiny_patch4_window7_224": {"img_size": 64, "window_size": 2},
    "swinv2_cr_tiny_224": {"img_size": 64, "window_size": 2},
    "maxvit_nano_rw_256": {"img_size": 64},
    "coatnet_nano_rw_224": {"img_size": 64},
    "levit_128s": {"img_size": 64},
    "mobilevit_xxs": {},
    "crossvit_tiny_240": {"img_size": 240},
    "convnext_atto": {},
    "convnextv2_atto": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_100": {},
    "resnet18": {},
    "regnety_002": {},
    "fastvit_t8": {},
    "edgenext_xx_small": {},
    "poolformer_s12": {},
    "densenet121": {},
}


def _hf_models() -> dict[str, Callable[[], Any]]:
    import transformers as t

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_labels": 10}
    vit = {"image_size": 64, "patch_size": 16, "intermediate_size": 64, **small}
    swin = {
        "image_size": 64,
        "patch_size": 4,
        "embed_dim": 16,
        "depths": [1, 1],
        "num_heads": [2, 2],
        "window_size": 4,
        "num_labels": 10,
    }
    stages = {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, "num_labels": 10}
    return {
        "ViT": lambda: t.ViTForImageClassification(t.ViTConfig(**vit)),
        "DeiT (with teacher)": lambda: t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**vit)),
        "BEiT": lambda: t.BeitForImageClassification(t.BeitConfig(**vit)),
        "DINOv2": lambda: t.Dinov2ForImageClassification(
            t.Dinov2Config(image_size=64, patch_size=16, **small)
        ),
        "DINOv2 with registers": lambda: t.Dinov2WithRegistersForImageClassification(
            t.Dinov2WithRegistersConfig(
                image_size=64, patch_size=16, num_register_tokens=4, **small
            )
        ),
        "Swin": lambda: t.SwinForImageClassification(t.SwinConfig(**swin)),
        "Swinv2": lambda: t.Swinv2ForImageClassification(t.Swinv2Config(**swin)),
        "ConvNeXt": lambda: t.ConvNextForImageClassification(t.ConvNextConfig(**stages)),
        "ConvNeXtV2": lambda: t.ConvNextV2ForImageClassification(t.ConvNextV2Config(**stages)),
        "ResNet": lambda: t.ResNetForImageClassification(
            t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
        ),
        "EfficientNet": lambda: t.EfficientNetForImageClassification(
            t.EfficientNetConfig(image_size=64, num_labels=10)
        ),
        "MobileViT": lambda: t.MobileViTForImageClassification(
            t.MobileViTConfig(image_size=64, num_labels=10)
        ),
        "LeViT": lambda: t.LevitForImageClassification(t.LevitConfig(image_size=64, num_labels=10)),
        "PVT": lambda: t.PvtForImageClassification(t.PvtConfig(image_size=64, num_labels=10)),
    }


def run(model: Any, size: int) -> dict[str, Any]:
    import torch

    from captum_fdcam import LayerFDCam, LayerGradCam
    from captum_fdcam.architectures import AutoLayout, default_layer
    from captum_fdcam.errors import ConstantMapWarning

    row: dict[str, Any] = {}
    try:
        choice = default_layer(model)
        row["layer"], row["reason"] = choice.name, choice.reason
        layer = model.get_submodule(choice.name)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        seen: list[tuple[int, ...]] = []
        handle = layer.register_forward_hook(lambda *args: seen.append(tuple(args[2].shape)))
        try:
            with torch.no_grad():
                model(x)
        finally:
            handle.remove()
        row["output"] = list(seen[0])
        row["layout"] = repr(AutoLayout(model, layer, (size, size)).resolve(seen[0]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            LayerGradCam(model, layer, reshape_transform="auto").attribute(x, target=[1, 3])
            start = time.perf_counter()
            fd = LayerFDCam(model, layer, reshape_transform="auto")
            maps = fd.attribute(x, target=[1, 3])
            row["fd_cam_s"] = round(time.perf_counter() - start, 2)
        row["map"] = list(maps.shape[2:])
        row["falls_back"] = any("falling back" in str(w.message) for w in caught)
        row["constant_map"] = any(issubclass(w.category, ConstantMapWarning) for w in caught)
    except Exception as err:  # every failure is a finding
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:240]}"
    return row


def report(rows: list[dict[str, Any]], env: dict[str, Any], total_s: float) -> str:
    lines = [
        "# CAMs on timm and Hugging Face models as they are",
        "",
        environment_lines(env, total_s),
        "",
        "Random weights, two images of 64 px (CrossViT 240 px), the default layer, "
        '`reshape_transform="auto"`, Grad-CAM then FD-CAM. A constant map is said by a '
        "`ConstantMapWarning`: with random weights, timm zero-initialises the last "
        "BatchNorm of each residual branch, so a ResNet's last convolution does not reach "
        'the score at all. "replay": FD-CAM ran only the network after the layer (no '
        "fallback warning).",
        "",
        "| hub | model | default layer (why) | layer output | auto layout | map | FD-CAM | "
        "replay |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['hub']} | {row['model']} | "
        if "error" in row and "layer" not in row:
            lines.append(head + f"error: {row['error']} | | | | | |")
            continue
        layer = f"`{row['layer']}` ({row['reason']})"
        if "error" in row:
            output = f"{tuple(row['output'])}" if "output" in row else ""
            lines.append(head + f"{layer} | {output} | error: {row['error']} | | | |")
            continue
        replay = "falls back" if row["falls_back"] else "yes"
        constant = " (a constant map)" if row["constant_map"] else ""
        lines.append(
            head + f"{layer} | {tuple(row['output'])} | `{row['layout']}` | "
            f"{row['map'][0]}x{row['map'][1]}{constant} | {row['fd_cam_s']} s | {replay} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("timm", "hf"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    args.threads, args.tune_malloc = 1, False
    env = environment(args, command)
    env["versions"] |= {dist: version(dist) for dist in ("timm", "transformers")}
    start = time.perf_counter()
    rows = []
    if args.only in (None, "timm"):
        import timm

        for label, kwargs in TIMM.items():
            name = label.split(" ")[0]
            torch.manual_seed(0)
            try:
                model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
                row = run(model.eval(), kwargs.get("img_size", 64))
            except Exception as err:
                row = {"error": f"{type(err).__name__}: {err}"}
            rows.append({"hub": "timm", "model": f"`{label}`"} | row)
            print(json.dumps(rows[-1]), flush=True)
    if args.only in (None, "hf"):
        for label, make in _hf_models().items():
            torch.manual_seed(0)
            try:
                row = run(make().eval(), 64)
            except Exception as err:
                row = {"error": f"{type(err).__name__}: {err}"}
            rows.append({"hub": "Hugging Face", "model": label} | row)
            print(json.dumps(rows[-1]), flush=True)
    total_s = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hub_zoo.json").write_text(
        json.dumps({"environment": env, "rows": rows}, indent=1) + "\n"
    )
    (args.out / "hub_zoo.md").write_text(report(rows, env, total_s))
    print(report(rows, env, total_s))


if __name__ == "__main__":
    main()
