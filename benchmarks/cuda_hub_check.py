"""The CUDA path on hub models: maps equal the CPU's, no fallback, FD-CAM against its floor.

For a machine with a GPU (this project's device machine). On timm ``swin_tiny`` and
``vit_base_patch16_224`` and Hugging Face ViT-B/16 at 224 px (random weights, the default
layer, ``reshape_transform="auto"``):

- Grad-CAM, Ablation-CAM and FD-CAM on CUDA, with any ``RuntimeWarning`` (the fallback to
  full forward passes) an error; their maps against the same maps computed on the CPU
  (float32, so the agreement is to rounding, given as the largest difference over the
  map's range);
- the time of FD-CAM on CUDA against its floor, measured alike: one forward + backward
  pass plus the network after the layer (the replay's own short-cut through the model,
  run once per chunk of copies) over the 2K copies.

Usage::

    python benchmarks/cuda_hub_check.py --out results_folder
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def build(name: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if name.startswith("hf:"):
        import transformers

        model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))
        return model.eval(), name
    import timm

    return timm.create_model(name, pretrained=False).eval(), name


def timed(call: Any, repeats: int = 3) -> float:
    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check(name: str) -> dict[str, Any]:
    from captum_fdcam import LayerAblationCam, LayerFDCam, LayerGradCam
    from captum_fdcam.architectures import default_layer

    model, label = build(name)
    choice = default_layer(model)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    targets = [3, 7]
    row: dict[str, Any] = {"model": label, "layer": choice.name}
    maps = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        layer = model.get_submodule(choice.name)
        for cls in (LayerGradCam, LayerAblationCam, LayerFDCam):
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                cam = cls(model, layer, reshape_transform="auto")
                maps[device, cls.__name__] = cam.attribute(x.to(device), target=targets).cpu()
    for cls in ("LayerGradCam", "LayerAblationCam", "LayerFDCam"):
        cpu, gpu = maps["cpu", cls], maps["cuda", cls]
        span = float(cpu.max() - cpu.min()) or 1.0
        row[f"{cls} max |cuda - cpu| / range"] = float((gpu - cpu).abs().max()) / span

    # Timing on CUDA, one image.
    layer = model.get_submodule(choice.name)
    one = x[:1].cuda()
    fd = LayerFDCam(model, layer, reshape_transform="auto")
    row["FD-CAM s"] = timed(lambda: fd.attribute(one, target=3, perturbations_per_eval=64))
    grad_input = one.clone().requires_grad_()

    def forward_backward() -> None:
        out = model(grad_input)
        out = out if isinstance(out, torch.Tensor) else out.logits
        torch.autograd.grad(out[0, 3], grad_input)

    row["floor (a) forward + backward s"] = timed(forward_backward)
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda *args: seen.update(out=args[2].detach()))
    with torch.no_grad():
        model(one)
    handle.remove()
    out = seen["out"]
    copies = 2 * out.shape[-1]

    from captum_fdcam._core.replay import PreLayerRecorder, replay

    recorder = PreLayerRecorder(layer, 1)
    with torch.no_grad(), recorder:
        model(one)

    @torch.no_grad()
    def after() -> None:
        for start in range(0, copies, 64):
            rows = min(64, copies - start)
            batch = out.expand(rows, *out.shape[1:]).clone()
            replay(lambda r=rows: model(one.expand(r, *one.shape[1:])), recorder, 0, batch)

    row["floor (b) after the layer, 2K copies s"] = timed(after)
    floor = row["floor (a) forward + backward s"] + row["floor (b) after the layer, 2K copies s"]
    row["FD-CAM / floor"] = row["FD-CAM s"] / floor
    model.cpu()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    rows = []
    for name in ("swin_tiny_patch4_window7_224", "vit_base_patch16_224", "hf:vit-b16"):
        try:
            rows.append(check(name))
        except Exception as err:  # every failure is a finding
            rows.append({"model": name, "error": f"{type(err).__name__}: {err}"})
        print(json.dumps(rows[-1]), flush=True)
    env = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hub_models_cuda.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
