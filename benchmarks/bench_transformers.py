"""CAMs on a vision transformer: ours (``reshape_transform=TokensToGrid()``) against grad-cam.

torchvision ViT-B/16 (random weights, one 224×224 image), explained at the last
encoder block's first LayerNorm (``encoder.layers[-1].ln_1``, 768 channels on a 14×14
grid), the layer grad-cam's documentation uses for ViTs. Measured:

- Grad-CAM: ours against grad-cam's ``GradCAM`` with its ViT ``reshape_transform``.
- Ablation-CAM: ours (the K switched copies run only the last block and the head,
  the class token left as it was) against grad-cam's ``AblationCAM`` with
  ``AblationLayerVit`` (the whole network for every ablated channel, ``batch_size`` 64).
- FD-CAM (2K switched copies, only the network after the layer).
- The floor of the switching methods: one forward + backward pass to the input.

Every configuration runs in a fresh subprocess (``--worker``), measured as the other
scripts do (see ``benchmarks/README.md``). Agreement: Pearson r between our map and
grad-cam's, both upsampled to 224×224. grad-cam's AblationLayerVit also ablates the
class token and, where the layer's minimum is not 0 (after a LayerNorm it never is),
sets the channel to ``min - 1e7`` instead of 0, so its Ablation-CAM is not the paper's;
the r column says how far that moves the map.

Usage::

    python benchmarks/bench_transformers.py            # ViT-B/16 (~10 min on 2 cores)
    python benchmarks/bench_transformers.py --quick    # a 4-layer ViT-S-like model
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import (
    IMAGE_SIZE,
    INPUT_SEED,
    MODEL_SEED,
    NUM_CLASSES,
    add_measuring_arguments,
    add_run_arguments,
    environment,
    environment_lines,
    find_row,
    fmt,
    measure,
    measure_calls,
    script_main,
    short_error,
    write_results,
)

OURS = "captum_fdcam"
FLOOR = "floor (forward + backward)"
PPE = 64
#: grad-cam's class of each method.
GRAD_CAM = {"Grad-CAM": "GradCAM", "Ablation-CAM": "AblationCAM"}


def build_vit(model_name: str) -> tuple[Any, Any, Any, list[int]]:
    """The seeded ViT (eval mode, random weights), its layer, one image and its target."""
    import torch
    import torchvision

    torch.manual_seed(MODEL_SEED)
    if model_name == "vit_b_16":
        model = torchvision.models.vit_b_16()
    elif model_name == "vit_small4":
        model = torchvision.models.VisionTransformer(
            image_size=IMAGE_SIZE,
            patch_size=16,
            num_layers=4,
            num_heads=6,
            hidden_dim=384,
            mlp_dim=1536,
        )
    else:
        raise ValueError(f"unknown model {model_name!r}")
    # torchvision zero-initialises the head: every logit would be 0.
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    model.eval()
    generator = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    targets = torch.randint(NUM_CLASSES, (1,), generator=generator).tolist()
    return model, model.encoder.layers[-1].ln_1, x, targets


def grad_cam_reshape(tokens: Any) -> Any:
    """grad-cam's documented ViT reshape_transform (class token dropped, 14×14 grid)."""
    side = round((tokens.shape[1] - 1) ** 0.5)
    result = tokens[:, 1:, :].reshape(tokens.size(0), side, side, tokens.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _make_call(
    config: dict[str, Any], model: Any, layer: Any, x: Any, targets: list[int]
) -> tuple[Callable[[], Any], Callable[[], None]]:
    import torch
    from captum.attr import LayerAttribution

    impl, method = config["impl"], config["method"]
    size = (IMAGE_SIZE, IMAGE_SIZE)

    def nothing() -> None:
        return None

    if impl == FLOOR:
        x_grad = x.clone().requires_grad_()

        def floor() -> Any:
            out = model(x_grad)
            return torch.autograd.grad(out[0, targets[0]], x_grad)[0]

        return floor, nothing

    if impl == OURS:
        from captum_fdcam import METHODS
        from captum_fdcam.reshape import TokensToGrid

        cam = METHODS[method](model, layer, reshape_transform=TokensToGrid())
        kwargs = {} if method == "Grad-CAM" else {"perturbations_per_eval": PPE}

        def ours() -> Any:
            attr = cam.attribute(x, target=targets, relu_attributions=True, **kwargs)
            return LayerAttribution.interpolate(attr, size, "bilinear")[:, 0]

        return ours, nothing

    import pytorch_grad_cam
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, GRAD_CAM[method])
    extra = {"ablation_layer": AblationLayerVit()} if method == "Ablation-CAM" else {}
    cam = cls(model=model, target_layers=[layer], reshape_transform=grad_cam_reshape, **extra)
    cam.batch_size = PPE
    cam_targets = [ClassifierOutputTarget(c) for c in targets]

    def peer() -> Any:
        return torch.from_numpy(cam(input_tensor=x, targets=cam_targets))

    return peer, cam.activations_and_grads.release


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, x, targets = build_vit(config["model"])
    with torch.no_grad():
        model(x)  # warm-up
    call, release = _make_call(config, model, layer, x, targets)
    result, timing = measure_calls(
        call, config["repeats"], config["max_seconds"], min_repeats=min(config["repeats"], 1)
    )
    release()
    timing.pop("extra")
    out = timing | {"s_per_image": timing["median_s"], "threads": torch.get_num_threads()}
    if isinstance(result, torch.Tensor) and config["impl"] != FLOOR:
        out["map"] = result[0].flatten().tolist()[:: config["map_stride"]]
    return out


# --------------------------------------------------------------------------- parent


def build_configs(args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    base = {"model": model, "threads": args.threads, "max_seconds": args.max_seconds}
    fast = base | {"repeats": args.repeats, "map_stride": 7}
    once = base | {"repeats": 0, "map_stride": 7}  # timed on the first call only
    return [
        fast | {"impl": FLOOR, "method": "—"},
        fast | {"impl": OURS, "method": "Grad-CAM"},
        fast | {"impl": "grad-cam", "method": "Grad-CAM"},
        fast | {"impl": OURS, "method": "Ablation-CAM"},
        once | {"impl": "grad-cam", "method": "Ablation-CAM"},
        fast | {"impl": OURS, "method": "FD-CAM"},
    ]


def pearson(a: list[float], b: list[float]) -> float | None:
    if len(a) != len(b) or len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    floor = find_row(rows, impl=FLOOR)
    for row in rows:
        if "s_per_image" not in row or row["impl"] == FLOOR:
            continue
        ratios = row.setdefault("ratios", {})
        if floor is not None:
            ratios["/ floor"] = row["s_per_image"] / floor["s_per_image"]
        if row["impl"] == "grad-cam":
            ours = find_row(rows, impl=OURS, method=row["method"])
            if ours is not None:
                ratios["/ ours"] = row["s_per_image"] / ours["s_per_image"]
                row["r_with_ours"] = pearson(row["map"], ours["map"])
            fd = find_row(rows, impl=OURS, method="FD-CAM")
            if row["method"] == "Ablation-CAM" and fd is not None:
                ratios["/ our FD-CAM"] = row["s_per_image"] / fd["s_per_image"]


def report(rows: list[dict[str, Any]], env: dict[str, Any], total_s: float, model: str) -> str:
    lines = [
        f"# CAMs on a vision transformer ({model}, `encoder.layers[-1].ln_1`, 768 channels "
        "at 14×14 for ViT-B/16)",
        "",
        environment_lines(env, total_s),
        "",
        "| implementation | method | s / image | peak extra MiB | ratios | r with ours |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['impl']} | {row['method']} | error: {short_error(row['error'])} | | | |"
            )
            continue
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in row.get("ratios", {}).items())
        lines.append(
            f"| {row['impl']} | {row['method']} | {fmt(row['s_per_image'], '.3f')} "
            f"| {fmt(row['peak_extra_mib'], '.0f')} | {ratios} "
            f"| {fmt(row.get('r_with_ours'), '.3f')} |"
        )
    lines += [
        "",
        "Ratios are this row's time over the named row's. Ablation-CAM and FD-CAM run the "
        f"switched copies in batches of {PPE} (grad-cam's `batch_size` {PPE}); grad-cam's "
        "AblationCAM is timed on its first call only. grad-cam's ViT ablation differs from "
        "the paper's (class token ablated too, `min - 1e7` instead of 0): r says how much.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(
        parser,
        repeats=3,
        repeats_help="timed calls per configuration after the first",
        max_seconds=20.0,
        at_least="at least 1",
        quick_help="a 4-layer ViT instead of ViT-B/16",
    )
    add_measuring_arguments(parser)
    args = parser.parse_args()
    model = "vit_small4" if args.quick else "vit_b_16"
    stem = "transformers_quick" if args.quick else "transformers"
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    env = environment(args, command)
    start = time.perf_counter()
    rows = []
    for config in build_configs(args, model):
        print(f"{config['impl']} {config['method']} ...", flush=True)
        result = measure(__file__, config, args)
        rows.append({k: config[k] for k in ("impl", "method")} | result)
        if "s_per_image" in result:
            print(f"    {result['s_per_image']:.3f} s", flush=True)
        else:
            print(f"    {result.get('error')}", flush=True)
    add_comparisons(rows)
    total_s = time.perf_counter() - start
    text = report(rows, env, total_s, model)
    for row in rows:
        row.pop("map", None)
    write_results(args.out, stem, {"environment": env, "model": model, "rows": rows}, text)
    print(text)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    script_main(run_worker, main)
