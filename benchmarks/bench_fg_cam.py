"""Speed and peak memory of FG-CAM against one forward + backward pass and Captum's LRP.

Measures ``captum_fdcam``'s FG-Grad-CAM to the input (``FGCam(LayerGradCam(...))``),
with and without denoising, FG-Grad-CAM to a middle layer (``LayerFGCam``) and our
``PropagationLRP``, against the floor of one bare forward + backward pass to the
input and against Captum's own ``LRP`` (default rules), in the same run. Torchvision
VGG-16 (base layer ``features[-1]``) and ResNet-50 (``layer4``), random weights,
224×224 inputs, batch sizes 1 and 8. The target: FG-Grad-CAM at most 3 × the floor.

For both LRPs it also records each image's total input relevance divided by its
target logit (the relevance that propagation starts from): ours is conservative,
Captum's is known to explode on ResNets, whose residual additions it does not split.

Every configuration runs in a fresh subprocess (``--worker``), as in
``bench_gradient_cams.py``. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_fg_cam.py            # full run (~12 min on 2 cores)
    python benchmarks/bench_fg_cam.py --quick    # smoke test (ResNet-50, batch 1)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    IMAGE_SIZE,
    INPUT_SEED,
    MODEL_SEED,
    NUM_CLASSES,
    add_measuring_arguments,
    add_run_arguments,
    build,
    environment,
    environment_lines,
    find_row,
    fmt,
    input_gradient_floor,
    measure,
    measure_calls,
    proc_status_kib,
    release_free_memory,
    relevance_cell,
    script_main,
    short_error,
    targets_table,
    warnings_list,
    warnings_of_first_call,
    write_results,
)

FLOOR = "floor"
FG = "fg_grad_cam"
FG_DENOISE = "fg_grad_cam_denoise"
LAYER_FG = "layer_fg_grad_cam"
OUR_LRP = "propagation_lrp"
CAPTUM_LRP = "captum_lrp"
#: The implementations in run order.
IMPLS = (FLOOR, FG, FG_DENOISE, LAYER_FG, OUR_LRP, CAPTUM_LRP)
#: The implementations whose total input relevance / target logit is recorded.
LRPS = (OUR_LRP, CAPTUM_LRP)
#: Per model: the base layer of the CAM and the middle layer of LayerFGCam, as text.
LAYERS = {
    "vgg16": ("features[-1]", "features[23]"),
    "resnet50": ("layer4", "layer2"),
}
#: The target of the report: FG-Grad-CAM's time at most this many times the floor's.
TARGET_RATIO = 3.0


# --------------------------------------------------------------------------- worker


def _build(model_name: str, batch: int) -> tuple[Any, Any, Any, Any, list[int]]:
    """The seeded model (eval mode), its base and middle layers, the input and targets.

    VGG-16 comes from ``_common.build`` (base layer ``features[-1]``, the last
    max-pool); its middle layer is ``features[23]``, the 4th max-pool. ResNet-50 is
    seeded the same way; base layer ``layer4``, middle layer ``layer2``.
    """
    import torch
    import torchvision

    if model_name == "vgg16":
        model, layer, x, targets = build(model_name, batch)
        return model, layer, model.features[23], x, targets
    if model_name != "resnet50":
        raise ValueError(f"unknown model {model_name!r}")
    torch.manual_seed(MODEL_SEED)
    model = torchvision.models.resnet50().eval()
    generator = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    targets = torch.randint(NUM_CLASSES, (batch,), generator=generator).tolist()
    return model, model.layer4, model.layer2, x, targets


def _make_call(
    impl: str, model: Any, layer: Any, mid_layer: Any, x: Any, targets: list[int]
) -> Callable[[], Any]:
    """The timed call of one implementation; objects are constructed here, untimed."""

    if impl == FLOOR:
        return input_gradient_floor(model, x, targets)

    if impl in (FG, FG_DENOISE, LAYER_FG):
        from captum_fdcam import FGCam, LayerFGCam, LayerGradCam

        if impl == LAYER_FG:
            cam: Any = LayerFGCam(LayerGradCam(model, layer), mid_layer)
        else:
            cam = FGCam(LayerGradCam(model, layer), denoise=impl == FG_DENOISE)
        return lambda: cam.attribute(x, target=targets)

    if impl == OUR_LRP:
        from captum_fdcam import PropagationLRP

        lrp: Any = PropagationLRP(model)
        return lambda: lrp.attribute(x, target=targets)

    if impl == CAPTUM_LRP:
        import captum.attr

        lrp = captum.attr.LRP(model)
        return lambda: lrp.attribute(x, target=targets)

    raise ValueError(f"unknown implementation {impl!r}")


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, mid_layer, x, targets = _build(config["model"], config["batch"])

    # Warm-up: one plain forward pass (thread pool, kernels), which also gives the
    # target logits that the LRPs start from.
    with torch.no_grad():
        logits = model(x)[torch.arange(len(targets)), torch.tensor(targets)]

    call = _make_call(config["impl"], model, layer, mid_layer, x, targets)
    timed, caught = warnings_of_first_call(call)

    def collected_rss_mib() -> float:
        release_free_memory()
        return proc_status_kib("VmRSS") / 1024

    attr, result = measure_calls(
        timed,
        config["repeats"],
        config["max_seconds"],
        min_repeats=config["min_repeats"],
        on_first_call=collected_rss_mib,
    )
    # Memory that the timed calls keep after they return (a leak): the resident set
    # after them minus the one after the first call, both collected (gc.collect,
    # malloc_trim) with the first call's result still held, per timed call.
    rss_after_first = result.pop("extra")
    repeats = result["repeats"]
    growth = (collected_rss_mib() - rss_after_first) / repeats if repeats else None
    extra: dict[str, Any] = {"output_shape": list(attr.shape)}
    if config["impl"] in LRPS:
        totals = attr.detach().double().flatten(1).sum(1)
        extra["relevance_over_logit"] = (totals / logits.double()).tolist()
    return (
        result
        | extra
        | {
            "s_per_image": result["median_s"] / config["batch"],
            "threads": torch.get_num_threads(),
            "rss_after_first_call_mib": rss_after_first,
            "rss_growth_mib_per_call": growth,
            "targets": targets,
            "target_logits": logits.tolist(),
            "warnings": caught[:3],
        }
    )


# --------------------------------------------------------------------------- parent


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations in run order: per model and batch, the floor first."""
    configs = []
    for model in args.models:
        for batch in args.batch_sizes:
            base = {"model": model, "batch": batch, "threads": args.threads}
            base |= {"repeats": args.repeats, "max_seconds": args.max_seconds}
            base |= {"min_repeats": args.min_repeats}
            configs += [base | {"impl": impl} for impl in IMPLS]
    return configs


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Adds time / floor time and time / Captum LRP's time (same model and batch)."""
    for row in rows:
        if "s_per_image" not in row:
            continue
        same = {"model": row["model"], "batch": row["batch"]}
        floor = find_row(rows, impl=FLOOR, **same)
        if floor is not None:
            row["ratio_to_floor"] = row["s_per_image"] / floor["s_per_image"]
        captum_lrp = find_row(rows, impl=CAPTUM_LRP, **same)
        if captum_lrp is not None:
            row["ratio_to_captum_lrp"] = row["s_per_image"] / captum_lrp["s_per_image"]


def check_targets(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """FG-Grad-CAM / floor against the target, per model and batch."""
    out = []
    for model in args.models:
        for batch in args.batch_sizes:
            fg = find_row(rows, model=model, batch=batch, impl=FG) or {}
            value = fg.get("ratio_to_floor")
            met = None if value is None else value <= TARGET_RATIO
            out.append(
                {"model": model, "batch": batch, "quantity": f"{FG} / floor"}
                | {"value": value, "target": f"<= {TARGET_RATIO:g}", "met": met}
            )
    return out


def _impl_cell(row: dict[str, Any]) -> str:
    if row["impl"] == FLOOR:
        return "floor (forward + backward to input)"
    if row["impl"] == CAPTUM_LRP:
        return CAPTUM_LRP
    return f"**{row['impl']}**"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | batch | implementation | output | s / image | × floor | × Captum LRP "
        "| peak extra MiB | RSS growth MiB / call | relevance / target logit | repeats "
        "| other CPU use |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        cells = [row["model"], str(row["batch"]), _impl_cell(row)]
        if "error" in row:
            cells += ["", f"error: {short_error(row['error'])}", "", "", "", "", "", "", ""]
        else:
            ratio = fmt(row.get("ratio_to_floor"), ".2f")
            if row["impl"] == FG and row.get("ratio_to_floor") is not None:
                ratio = f"**{ratio}**" + ("" if row["ratio_to_floor"] <= TARGET_RATIO else " ✗")
            cells += [
                "×".join(str(d) for d in row["output_shape"]),
                f"{row['s_per_image']:.3f}",
                ratio,
                fmt(row.get("ratio_to_captum_lrp"), ".2f"),
                f"{row['peak_extra_mib']:.0f}",
                fmt(row.get("rss_growth_mib_per_call"), ".0f"),
                relevance_cell(row, ".3g"),
                str(row["repeats"]),
                fmt(row.get("foreign_cpu_share"), ".0%"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def library_source() -> dict[str, Any]:
    """The git commit of the checkout, and the files of ``captum_fdcam/`` that differ from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "captum_fdcam")
    return {"commit": git("rev-parse", "HEAD") or None, "changed": changed.splitlines()}


def source_line(env: dict[str, Any]) -> str:
    start, end = env["source_start"], env["source_end"]
    line = f"commit `{(start['commit'] or 'unknown')[:12]}`"
    if start["changed"]:
        line += f", with uncommitted changes ({len(start['changed'])} files)"
    if end != start:
        line += (
            f"; **changed during the run** (at the end: `{(end['commit'] or 'unknown')[:12]}`"
            f", {len(end['changed'])} uncommitted files): workers may have run different code"
        )
    return line


def markdown_report(
    env: dict[str, Any],
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    total_s: float,
) -> str:
    layers = "\n".join(
        f"- `{model}()`: base layer `{base}`, middle layer `{mid}`"
        for model, (base, mid) in LAYERS.items()
    )
    return f"""# FG-CAM: FG-Grad-CAM to the input against forward + backward and Captum's LRP

{environment_lines(env, total_s)}
- captum_fdcam source: {source_line(env)}

Models (torchvision), with the base layer of Grad-CAM and the middle layer of `LayerFGCam`:

{layers}

`features[-1]` is VGG-16's last max-pool (as in the FG-CAM paper), `features[23]` its
4th. Random weights (`torch.manual_seed({MODEL_SEED})`), eval mode, 224×224 random inputs,
one random target class per image.

- **floor**: a bare `out = model(x); torch.autograd.grad(out[range(n), targets].sum(), x)`
  with `x.requires_grad_()`, as in `gradient_cams.md`.
- **{FG}**: `FGCam(LayerGradCam(model, layer)).attribute(x, target=targets)`, maps
  (N, 1, 224, 224); **{FG_DENOISE}**: the same with `FGCam(..., denoise=True)` (FG-CAM-D,
  truncated SVD of the components, 10 singular values); **{LAYER_FG}**:
  `LayerFGCam(LayerGradCam(model, layer), middle_layer).attribute(x, target=targets)`, maps
  at the middle layer's resolution; **{OUR_LRP}**: `PropagationLRP(model).attribute(x,
  target=targets)` (FG-CAM's rules: signed z+, z^B at the input); **{CAPTUM_LRP}**:
  `captum.attr.LRP(model).attribute(x, target=targets)`, Captum's default rules. All from
  `captum_fdcam` except Captum's LRP; objects are constructed outside the timed region.
- **s / image**: median wall time of one call over `repeats` calls, divided by the batch
  size. Every worker first runs one plain forward pass (warm-up; it also gives the target
  logits); the first call is then the memory measurement and the warm-up of the timed
  calls. Fewer repeats are made where they would take longer than `--max-seconds`.
- **× floor**: time / floor time; target: **{FG} ≤ {TARGET_RATIO:g} × floor** (✗: missed).
  **× Captum LRP**: time / Captum LRP's time, same model and batch (< 1: faster).
- **peak extra MiB**: each configuration runs in a fresh process; peak resident set
  (VmHWM, reset through /proc/self/clear_refs) during the first call minus the resident
  set just before it.
- **RSS growth MiB / call**: resident set after the timed repeats minus the one after the
  first call, both after `gc.collect()` and `malloc_trim(0)` (with the first call's result
  still held), divided by `repeats`: memory each call keeps after it returns. ≈ 0 unless
  something leaks (a one-off growth, e.g. of the allocator's heap, is spread over the
  repeats); where it is large, the later repeats also pay for fresh pages.
- **relevance / target logit**: per image, the sum of the input relevance over channels
  and pixels divided by the target logit, where both LRPs start; min … max over the batch.
  The rules conserve relevance only approximately (z^B at the input, Captum's ε rules),
  so the ratio should stay of order 1. Captum's LRP is known to give exploding totals on
  ResNets; ours splits relevance between the summands of residual additions.
- **other CPU use**: share of the machine's CPUs that other processes used during the
  timed repeats (from /proc/stat). Each configuration waits for a quiet machine first, and
  is measured again (up to `--retries` times) when this exceeds `--max-foreign`.

## Target

{targets_table(checks)}
## All measurements

{markdown_table(rows)}
## Warnings (silenced; first call)

{warnings_list(rows)}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=sorted(LAYERS), default=["vgg16", "resnet50"]
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--min-repeats", type=int, default=3, help="timed calls made even where they are slow"
    )
    add_run_arguments(
        parser,
        repeats=7,
        repeats_help="timed calls per configuration (after warm-up)",
        max_seconds=15.0,
        at_least="at least --min-repeats",
        quick_help="smoke test: resnet50, batch 1, 1 repeat; writes fg_cam_quick.*",
    )
    add_measuring_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.repeats, args.min_repeats = ["resnet50"], [1], 1, 1
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    env = environment(args, command) | {"source_start": library_source()}
    configs = build_configs(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, config in enumerate(configs, 1):
        result = measure(__file__, config, args)
        row = {k: config[k] for k in ("model", "batch", "impl")} | result
        rows.append(row)
        summary = (
            f"error: {row['error']}"
            if "error" in row
            else f"{row['s_per_image']:.3f} s/image ({row['repeats']} repeats), "
            f"peak +{row['peak_extra_mib']:.0f} MiB"
        )
        if row.get("rss_growth_mib_per_call") is not None:
            summary += f", RSS +{row['rss_growth_mib_per_call']:.0f} MiB/call"
        if row.get("relevance_over_logit"):
            summary += f", relevance/logit {relevance_cell(row, '.3g')}"
        print(
            f"[{i:2d}/{len(configs)} {time.perf_counter() - start:6.0f} s] "
            f"{config['model']} b={config['batch']} {config['impl']}: {summary}",
            flush=True,
        )
    total_s = time.perf_counter() - start
    env["source_end"] = library_source()
    add_ratios(rows)
    checks = check_targets(rows, args)
    report = markdown_report(env, rows, checks, total_s)
    stem = "fg_cam_quick" if args.quick else "fg_cam"
    payload = {"environment": env, "total_s": total_s, "targets": checks, "results": rows}
    write_results(args.out, stem, payload, report)
    print()
    print(targets_table(checks))
    print(markdown_table(rows))
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    script_main(run_worker, main)
