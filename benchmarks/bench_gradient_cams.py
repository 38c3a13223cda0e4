"""Speed, peak memory and agreement of the gradient CAMs against peer libraries.

Compares ``captum_fdcam``'s Grad-CAM, Grad-CAM++, XGrad-CAM and Layer-CAM with the
same methods of ``grad-cam`` (``pytorch_grad_cam``) and ``torchcam``, and Grad-CAM
with Captum's own ``LayerGradCam``, on torchvision's ResNet-18 (``layer4``) and
VGG-16 (``features[-1]``) with random weights, against the floor of one bare
forward + backward pass to the input.

Every (model, batch size, implementation, method) configuration runs in a fresh
subprocess (``--worker``) so that its peak memory can be read from the process's
resident set. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_gradient_cams.py                # full run (~15 min on 2 cores)
    python benchmarks/bench_gradient_cams.py --quick        # smoke test
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    IMAGE_SIZE,
    MODEL_SEED,
    add_measuring_arguments,
    add_run_arguments,
    build,
    environment,
    fmt,
    input_gradient_floor,
    measure_calls,
    script_main,
    short_error,
    write_results,
)
from _common import measure as measure_in_subprocess

METHODS = ("Grad-CAM", "Grad-CAM++", "XGrad-CAM", "Layer-CAM")
OURS = "captum_fdcam"
FLOOR = "floor"
#: The class name of each method in each peer library.
PEERS: dict[str, dict[str, str]] = {
    "captum": {"Grad-CAM": "LayerGradCam"},
    "grad-cam": {
        "Grad-CAM": "GradCAM",
        "Grad-CAM++": "GradCAMPlusPlus",
        "XGrad-CAM": "XGradCAM",
        "Layer-CAM": "LayerCAM",
    },
    "torchcam": {
        "Grad-CAM": "GradCAM",
        "Grad-CAM++": "GradCAMpp",
        "XGrad-CAM": "XGradCAM",
        "Layer-CAM": "LayerCAM",
    },
}


# --------------------------------------------------------------------------- worker


def _make_call(
    impl: str, method: str, model: Any, layer: Any, x: Any, targets: list[int]
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The timed call of one implementation, and a function removing its hooks.

    Every call returns the (N, 224, 224) maps (tensor or array); objects are
    constructed here, outside the timed region.
    """
    import torch.nn.functional as F
    from captum.attr import LayerAttribution

    size = (IMAGE_SIZE, IMAGE_SIZE)

    def nothing() -> None:
        return None

    if impl == FLOOR:
        return input_gradient_floor(model, x, targets), nothing

    if impl == OURS:
        from captum_fdcam import METHODS as OUR_METHODS

        ours = OUR_METHODS[method](model, layer)

        def ours_call() -> Any:
            attr = ours.attribute(x, target=targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, size, "bilinear")[:, 0]

        return ours_call, nothing

    name = PEERS[impl][method]
    if impl == "captum":
        import captum.attr

        captum_cam = getattr(captum.attr, name)(model, layer)

        def captum_call() -> Any:
            attr = captum_cam.attribute(x, target=targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, size, "bilinear")[:, 0]

        return captum_call, nothing

    if impl == "grad-cam":
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        grad_cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer])
        cam_targets = [ClassifierOutputTarget(c) for c in targets]

        def grad_cam_call() -> Any:
            return grad_cam(input_tensor=x, targets=cam_targets)

        return grad_cam_call, grad_cam.activations_and_grads.release

    if impl == "torchcam":
        import torchcam.methods

        torchcam_cam = getattr(torchcam.methods, name)(model, layer)

        def torchcam_call() -> Any:
            scores = model(x)
            maps = torchcam_cam(class_idx=targets, scores=scores)[0]
            return F.interpolate(maps.unsqueeze(1), size, mode="bilinear")[:, 0]

        return torchcam_call, torchcam_cam.remove_hooks

    raise ValueError(f"unknown implementation {impl!r}")


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, x, targets = build(config["model"], config["batch"])
    call, release = _make_call(config["impl"], config["method"], model, layer, x, targets)
    # Peak memory of the first call (which is also the warm-up of the timings).
    maps, result = measure_calls(call, config["repeats"], config["max_seconds"])
    release()

    if config.get("maps_path") and config["impl"] != FLOOR:
        array = maps.detach().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        np.save(config["maps_path"], array.astype(np.float32))
    result.pop("extra")
    return result | {
        "s_per_image": result["median_s"] / config["batch"],
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- parent


def pearson_per_image(ours: np.ndarray, peer: np.ndarray) -> dict[str, Any]:
    """Pearson r between two (N, H, W) stacks of maps, image by image.

    r is undefined for an image where either map is constant (e.g. all zero
    after the ReLU); such images are counted, and left out of the mean.
    """
    if ours.shape != peer.shape:
        return {"error": f"shapes differ: {ours.shape} vs {peer.shape}"}
    values = []
    for a, b in zip(ours.astype(np.float64), peer.astype(np.float64), strict=True):
        a = a.ravel() - a.mean()
        b = b.ravel() - b.mean()
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        if norm > 0:
            values.append(float(a @ b) / norm)
    return {
        "mean": float(np.mean(values)) if values else None,
        "min": float(np.min(values)) if values else None,
        "n_defined": len(values),
        "n": int(ours.shape[0]),
    }


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations in run order: floor, then per method ours before the peers."""
    configs = []
    for model in args.models:
        for batch in args.batch_sizes:
            base = {"model": model, "batch": batch, "threads": args.threads}
            base |= {"repeats": args.repeats, "max_seconds": args.max_seconds}
            configs.append(base | {"impl": FLOOR, "method": None})
            for method in METHODS:
                configs.append(base | {"impl": OURS, "method": method})
                for peer, names in PEERS.items():
                    if method in names:
                        configs.append(base | {"impl": peer, "method": method})
    return configs


def _key(config: dict[str, Any], impl: str | None = None) -> tuple[Any, ...]:
    return (config["model"], config["batch"], impl or config["impl"], config["method"])


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Adds time / floor, and peer time / our time, to every row."""
    by_key = {_key(r): r for r in rows}
    for row in rows:
        if "s_per_image" not in row:
            continue
        floor = by_key.get((row["model"], row["batch"], FLOOR, None), {})
        if "s_per_image" in floor:
            row["ratio_to_floor"] = row["s_per_image"] / floor["s_per_image"]
        ours = by_key.get(_key(row, OURS), {})
        if row["impl"] not in (OURS, FLOOR) and "s_per_image" in ours:
            row["peer_over_ours"] = row["s_per_image"] / ours["s_per_image"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | batch | method | implementation | s / image | × floor | peer / ours "
        "| peak extra MiB | agreement r (mean / min) | repeats | other CPU use |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|\n"
    )
    lines = []
    for row in rows:
        impl = "floor (forward + backward to input)" if row["impl"] == FLOOR else row["impl"]
        impl = f"**{impl}**" if row["impl"] == OURS else impl
        cells = [row["model"], str(row["batch"]), row["method"] or "—", impl]
        if "error" in row:
            cells += [f"error: {short_error(row['error'])}", "", "", "", "", "", ""]
        else:
            agreement = row.get("agreement")
            if agreement is None:
                agree = "—"
            elif agreement.get("error"):
                agree = f"error: {short_error(agreement['error'])}"
            elif agreement["mean"] is None:
                agree = f"undefined (0/{agreement['n']} non-constant)"
            else:
                agree = f"{agreement['mean']:.4f} / {agreement['min']:.4f}"
                if agreement["n_defined"] < agreement["n"]:
                    agree += f" ({agreement['n_defined']}/{agreement['n']} defined)"
            cells += [
                f"{row['s_per_image']:.4f}",
                fmt(row.get("ratio_to_floor"), ".2f"),
                fmt(row.get("peer_over_ours"), ".2f"),
                f"{row['peak_extra_mib']:.0f}",
                agree,
                str(row["repeats"]),
                f"{row['foreign_cpu_share']:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def markdown_report(env: dict[str, Any], rows: list[dict[str, Any]], total_s: float) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    malloc = (
        "glibc malloc, tuned: " + ", ".join(f"`{k}={v}`" for k, v in env["worker_env"].items())
        if env["worker_env"]
        else "glibc malloc, default settings"
    )
    return f"""# Gradient CAMs: captum_fdcam against grad-cam, torchcam and Captum

- Machine: {env["cpu"]}, {env["cpu_count"]} CPUs, no GPU; {env["platform"]}
- torch.set_num_threads({env["threads"]}) (the CPU count) in every measuring process
- Python {env["python"]}; {versions}
- Allocator: {malloc}
- Date: {env["date"]}; total run time {total_s / 60:.1f} min
- Command: `{env["command"]}`

Models: torchvision `resnet18()` explained at `layer4`, `vgg16()` at `features[-1]` (the
last max-pool), random weights (`torch.manual_seed({MODEL_SEED})`), eval mode, 224×224
random inputs, one random target class per image.

- **s / image**: median wall time of one call over `repeats` calls, divided by the batch
  size. Each call produces the 224×224 maps of the whole batch: ours (and Captum's) include
  `LayerAttribution.interpolate(attr, (224, 224), "bilinear")` because grad-cam returns
  upsampled maps; torchcam's maps (layer resolution) are upsampled the same way, and its
  timed region includes the model's forward pass, which torchcam leaves to the user. CAM
  objects are constructed once, outside the timed region. The first call is the warm-up
  (and the memory measurement) and is not timed; fewer repeats are made where one call
  takes long (`--max-seconds`), at least 2.
- **floor**: a bare `out = model(x); torch.autograd.grad(out[range(n), targets].sum(), x)`
  with `x.requires_grad_()`. Our CAMs backpropagate only from the output to the layer, so
  they can be below the floor; grad-cam calls `loss.backward()`, which also computes every
  parameter's gradient down to the first layer.
- **× floor**: time / floor time, same model and batch. **peer / ours**: the peer's time /
  our time for the same method (> 1: we are faster).
- **peak extra MiB**: each configuration runs in a fresh process; peak resident set
  (VmHWM, reset through /proc/self/clear_refs) during the first call minus the resident set
  just before it (torch's CPU allocations are invisible to tracemalloc).
- **agreement r**: Pearson correlation, image by image, between our upsampled map and the
  peer's map for the same image and target (grad-cam normalises each map to [0, 1], which
  does not change r); mean and minimum over the batch. r is undefined where a map is
  constant (e.g. all zero after the ReLU); such images are left out.
- **other CPU use**: share of the machine's CPUs that other processes used during the
  timed repeats (from /proc/stat). Each configuration waits for a quiet machine and is
  measured again (up to `--retries` times) when this exceeds `--max-foreign`; the least
  disturbed run is kept.

{markdown_table(rows)}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    add_run_arguments(
        parser,
        repeats=7,
        repeats_help="timed calls per configuration (after warm-up)",
        max_seconds=10.0,
        at_least="at least 2",
        quick_help="smoke test: resnet18, batch 1, 1 repeat; writes gradient_cams_quick.*",
    )
    add_measuring_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.repeats = ["resnet18"], [1], 1
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    env = environment(args, command)
    configs = build_configs(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_cams_") as tmp:
        for i, config in enumerate(configs, 1):
            maps_path = Path(tmp) / f"{i}.npy"
            result = measure_in_subprocess(__file__, config | {"maps_path": str(maps_path)}, args)
            row = {k: config[k] for k in ("model", "batch", "impl", "method")} | result
            if "error" not in row and config["impl"] not in (OURS, FLOOR):
                ours = next((r for r in rows if _key(r) == _key(config, OURS)), None)
                if ours is None or "maps_path" not in ours:
                    row["agreement"] = {"error": "no map of ours to compare with"}
                else:
                    row["agreement"] = pearson_per_image(
                        np.load(ours["maps_path"]), np.load(maps_path)
                    )
            if "error" not in row and config["impl"] == OURS:
                row["maps_path"] = str(maps_path)
            rows.append(row)
            summary = (
                f"error: {row['error']}"
                if "error" in row
                else f"{row['s_per_image']:.4f} s/image ({row['repeats']} repeats), "
                f"peak +{row['peak_extra_mib']:.0f} MiB"
            )
            if row.get("agreement", {}).get("mean") is not None:
                summary += f", r={row['agreement']['mean']:.4f}"
            print(
                f"[{i:2d}/{len(configs)} {time.perf_counter() - start:6.0f} s] "
                f"{config['model']} b={config['batch']} {config['method'] or '-'} "
                f"{config['impl']}: {summary}",
                flush=True,
            )
    for row in rows:
        row.pop("maps_path", None)
    total_s = time.perf_counter() - start
    add_ratios(rows)
    report = markdown_report(env, rows, total_s)
    stem = "gradient_cams_quick" if args.quick else "gradient_cams"
    payload = {"environment": env, "total_s": total_s, "results": rows}
    write_results(args.out, stem, payload, report)
    print()
    print(markdown_table(rows))
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    script_main(run_worker, main)
