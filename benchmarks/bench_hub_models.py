"""FD-CAM on hub transformers against its floor: timm Swin-T and Hugging Face ViT-B/16.

The models users bring, as they are (random weights, one 224×224 image, the default
layer of each family with ``reshape_transform="auto"``):

- timm ``swin_tiny_patch4_window7_224`` at ``norm`` (768 channels, channels last, 7×7),
  where only the pooling and the classifier follow;
- Hugging Face ``ViTForImageClassification`` (ViT-B/16 config) at
  ``vit.layers.11.layernorm_before`` (768 channels, 14×14 tokens after the class token),
  where the last block's attention and MLP, the final norm and the classifier follow.

FD-CAM's floor is what it cannot avoid: (a) one forward + backward pass to the input,
plus (b) the network after the layer, split by hand here (timm's ``forward_head``; the
last ViT layer written out from its modules), over the 2K = 1536 switched copies in
chunks of 64 under ``torch.no_grad()``. Also timed: our Grad-CAM and Ablation-CAM, and,
for Swin, our FD-CAM forced to run full forward passes for the copies (what every hub
model fell back to before the replay skipped the pre-layer calls), and grad-cam's
``AblationCAM`` (the whole network per channel), each on its first call only.

Every configuration runs in a fresh subprocess (``--worker``), measured as the other
scripts do (see ``benchmarks/README.md``).

Usage::

    python benchmarks/bench_hub_models.py            # both models (~15 min on 2 cores)
    python benchmarks/bench_hub_models.py --quick    # 128 px Swin and a 4-layer ViT
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import (
    INPUT_SEED,
    MODEL_SEED,
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
    version,
    write_results,
)

OURS = "captum_fdcam"
FULL = "captum_fdcam, full passes"
FLOOR_PASS = "floor (a): forward + backward"
FLOOR_TAIL = "floor (b): after the layer, 2K copies"
PPE = 64
NUM_CLASSES = 1000
MODELS = {
    "swin_tiny": "timm swin_tiny_patch4_window7_224, `norm`",
    "hf_vit_b16": "Hugging Face ViT-B/16, `vit.layers.11.layernorm_before`",
}


def build(name: str, quick: bool) -> tuple[Any, Any, Any, list[int], Callable[[Any], Any]]:
    """The seeded model (eval mode), its layer, one image, its target, and the network
    after the layer as a function of the layer's (M, ...) outputs."""
    import torch

    torch.manual_seed(MODEL_SEED)
    size = 128 if quick else 224
    if name == "swin_tiny":
        import timm

        extra = {"img_size": size, "window_size": 4} if quick else {}
        model = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, num_classes=NUM_CLASSES, **extra
        ).eval()
        layer = model.norm

        def tail(copies: Any) -> Any:
            return model.forward_head(copies)

    else:
        import transformers

        config = transformers.ViTConfig(
            image_size=size, num_labels=NUM_CLASSES, **({"num_hidden_layers": 4} if quick else {})
        )
        model = transformers.ViTForImageClassification(config).eval()
        last = model.vit.layers[-1]
        layer = last.layernorm_before
        residual: dict[str, Any] = {}
        handle = last.register_forward_pre_hook(lambda _, args: residual.update(x=args[0]))

        def tail(copies: Any) -> Any:
            # ViTLayer.forward after its first norm, then ViTModel's norm and the head
            rows = copies.shape[0]
            skip = residual["x"].expand(rows, *residual["x"].shape[1:])
            hidden = last.attention(copies, None)[0] + skip
            hidden = last.mlp(last.layernorm_after(hidden)) + hidden
            return model.classifier(model.vit.layernorm(hidden)[:, 0, :])

        generator = torch.Generator().manual_seed(INPUT_SEED)
        with torch.no_grad():
            model(torch.randn(1, 3, size, size, generator=generator))
        handle.remove()
    generator = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(1, 3, size, size, generator=generator)
    targets = torch.randint(NUM_CLASSES, (1,), generator=generator).tolist()
    return model, layer, x, targets, tail


def _logits(model: Any, x: Any) -> Any:
    out = model(x)
    return out if hasattr(out, "shape") else out.logits


def _make_call(config: dict[str, Any]) -> Callable[[], Any]:
    import torch

    model, layer, x, targets, tail = build(config["model"], config["quick"])
    impl, method = config["impl"], config["method"]

    if impl == FLOOR_PASS:
        x_grad = x.clone().requires_grad_()

        def floor() -> Any:
            return torch.autograd.grad(_logits(model, x_grad)[0, targets[0]], x_grad)[0]

        return floor

    if impl == FLOOR_TAIL:
        with torch.no_grad():
            seen: dict[str, Any] = {}
            handle = layer.register_forward_hook(lambda *args: seen.update(out=args[2]))
            _logits(model, x)
            handle.remove()
        out = seen["out"]
        copies = 2 * out.shape[-1]  # 2K, K channels last in both layouts

        @torch.no_grad()
        def after() -> Any:
            for start in range(0, copies, PPE):
                rows = min(PPE, copies - start)
                tail(out.expand(rows, *out.shape[1:]).clone())[:, targets[0]]

        return after

    if impl in (OURS, FULL):
        from captum_fdcam import METHODS
        from captum_fdcam._core import replay

        cam = METHODS[method](model, layer, reshape_transform="auto")
        kwargs = {} if method == "Grad-CAM" else {"perturbations_per_eval": PPE}
        if impl == FULL:
            # What every hub model got before: no replay, full forward passes.
            replay.PreLayerRecorder.usable = property(lambda self: False)  # type: ignore[assignment]

        def ours() -> Any:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's own
                return cam.attribute(x, target=targets, relu_attributions=True, **kwargs)

        return ours

    import pytorch_grad_cam
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def channels_first(t: Any) -> Any:
        return t.permute(0, 3, 1, 2)

    # grad-cam's own Swin example: the ViT ablation layer (channels last), the transform
    cam = pytorch_grad_cam.AblationCAM(
        model=model,
        target_layers=[layer],
        reshape_transform=channels_first,
        ablation_layer=AblationLayerVit(),
    )
    cam.batch_size = PPE

    def peer() -> Any:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(targets[0])])

    return peer


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config["threads"])
    call = _make_call(config)
    _, timing = measure_calls(
        call, config["repeats"], config["max_seconds"], min_repeats=min(config["repeats"], 1)
    )
    timing.pop("extra")
    return timing | {"s_per_image": timing["median_s"], "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- parent


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = {"threads": args.threads, "max_seconds": args.max_seconds, "quick": args.quick}
    fast = base | {"repeats": args.repeats}
    once = base | {"repeats": 0}  # timed on the first call only
    configs = []
    for model in MODELS:
        configs += [
            fast | {"model": model, "impl": FLOOR_PASS, "method": "—"},
            fast | {"model": model, "impl": FLOOR_TAIL, "method": "—"},
            fast | {"model": model, "impl": OURS, "method": "Grad-CAM"},
            fast | {"model": model, "impl": OURS, "method": "Ablation-CAM"},
            fast | {"model": model, "impl": OURS, "method": "FD-CAM"},
        ]
        if model == "swin_tiny":
            configs += [
                once | {"model": model, "impl": FULL, "method": "FD-CAM"},
                once | {"model": model, "impl": "grad-cam", "method": "Ablation-CAM"},
            ]
    return configs


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    for model in MODELS:
        passes = find_row(rows, model=model, impl=FLOOR_PASS)
        after = find_row(rows, model=model, impl=FLOOR_TAIL)
        if passes is None or after is None or "s_per_image" not in passes | after:
            continue
        floor = passes["s_per_image"] + after["s_per_image"]
        ours_fd = find_row(rows, model=model, impl=OURS, method="FD-CAM")
        for row in rows:
            if row["model"] != model or "s_per_image" not in row:
                continue
            ratios = row.setdefault("ratios", {})
            if row["impl"] not in (FLOOR_PASS, FLOOR_TAIL):
                ratios["/ floor (a + b)"] = row["s_per_image"] / floor
            if row["impl"] in (FULL, "grad-cam") and ours_fd and "s_per_image" in ours_fd:
                ratios["/ our FD-CAM"] = row["s_per_image"] / ours_fd["s_per_image"]


def report(rows: list[dict[str, Any]], env: dict[str, Any], total_s: float) -> str:
    lines = [
        "# FD-CAM on hub transformers against its floor",
        "",
        environment_lines(env, total_s),
        "",
        "| model | implementation | method | s / image | peak extra MiB | ratios |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        model = MODELS[row["model"]]
        if "error" in row:
            lines.append(
                f"| {model} | {row['impl']} | {row['method']} | "
                f"error: {short_error(row['error'])} | | |"
            )
            continue
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in row.get("ratios", {}).items())
        lines.append(
            f"| {model} | {row['impl']} | {row['method']} | {fmt(row['s_per_image'], '.3f')} "
            f"| {fmt(row['peak_extra_mib'], '.0f')} | {ratios} |"
        )
    lines += [
        "",
        "The floor is (a) + (b): what FD-CAM cannot avoid. Ratios are this row's time over "
        f"the named one's. Copies run in batches of {PPE} (grad-cam's `batch_size` {PPE}). "
        f"'{FULL}' is our FD-CAM with the replay switched off, and grad-cam's AblationCAM "
        "runs the whole network once per channel; both are timed on their first call only.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(
        parser,
        repeats=3,
        repeats_help="timed calls per configuration after the first",
        max_seconds=30.0,
        at_least="at least 1",
        quick_help="128 px Swin with 4 px windows and a 4-layer ViT-B/16 at 128 px",
    )
    add_measuring_arguments(parser, timeout_s=1800.0)
    args = parser.parse_args()
    stem = "hub_models_quick" if args.quick else "hub_models"
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    env = environment(args, command)
    env["versions"] |= {dist: version(dist) for dist in ("timm", "transformers")}
    start = time.perf_counter()
    rows = []
    for config in build_configs(args):
        print(f"{config['model']} {config['impl']} {config['method']} ...", flush=True)
        result = measure(__file__, config, args)
        rows.append({k: config[k] for k in ("model", "impl", "method")} | result)
        if "s_per_image" in result:
            print(f"    {result['s_per_image']:.3f} s", flush=True)
        else:
            print(f"    {result.get('error')}", flush=True)
    add_comparisons(rows)
    total_s = time.perf_counter() - start
    text = report(rows, env, total_s)
    write_results(args.out, stem, {"environment": env, "rows": rows}, text)
    print(text)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    script_main(run_worker, main)
