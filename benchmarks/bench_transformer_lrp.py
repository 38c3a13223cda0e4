"""Speed and peak memory of relevance propagation through attention (ViT-B/16, Swin-T).

Measures ``captum_fdcam``'s ``PropagationLRP`` to the pixels with the default attention
rule (CP-LRP: the attention weights held constant) and with ``attention="attnlrp"``, and
FG-Grad-CAM to the pixels (``FGCam(LayerGradCam(...))`` at the ViT's last block's first
norm, with ``TokensToGrid()``, and at Swin's final norm, with ``ChannelsLastToFirst()``),
against the floor of one bare forward + backward pass to the input, and against Captum's
``InputXGradient`` (the peer: one gradient times the input) and Captum's ``LRP`` (which
has no rules for LayerNorm, attention or Swin's permutes: its error is the row's result).
Torchvision ``vit_b_16`` and ``swin_t``, random weights, 224×224 inputs, batch sizes 1
and 8, target = each image's argmax class. The target: LRP and FG-Grad-CAM at most
2.5 × the floor of the same model and batch.

Every configuration runs in a fresh subprocess (``--worker``), as in
``bench_gradient_cams.py``. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_transformer_lrp.py            # full run (~7 min on 2 idle cores)
    python benchmarks/bench_transformer_lrp.py --quick    # 4-block ViT, 2-stage Swin, 64 px
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import (
    INPUT_SEED,
    MODEL_SEED,
    NUM_CLASSES,
    add_measuring_arguments,
    add_run_arguments,
    environment,
    environment_lines,
    find_row,
    fmt,
    input_gradient_floor,
    measure,
    measure_calls,
    relevance_cell,
    script_main,
    short_error,
    targets_table,
    warnings_list,
    warnings_of_first_call,
    write_results,
)

FLOOR = "floor"
LRP_CP = "propagation_lrp"
LRP_ATTN = "propagation_lrp_attnlrp"
FG = "fg_grad_cam"
IXG = "captum_input_x_gradient"
CAPTUM_LRP = "captum_lrp"
#: The implementations in run order.
IMPLS = (FLOOR, LRP_CP, LRP_ATTN, FG, IXG, CAPTUM_LRP)
#: The implementations held to the target.
TARGETED = (LRP_CP, LRP_ATTN, FG)
#: The implementations whose total input relevance / target logit is recorded.
LRPS = (LRP_CP, LRP_ATTN)
#: The target of the report: time at most this many times the floor's.
TARGET_RATIO = 2.5
#: Per model: input side (px) and the base layer of Grad-CAM, as text.
MODELS = {
    "vit_b_16": (224, "encoder.layers[-1].ln_1", "TokensToGrid()"),
    "swin_t": (224, "norm", "ChannelsLastToFirst()"),
    "vit_small4_64": (64, "encoder.layers[-1].ln_1", "TokensToGrid()"),
    "swin_tiny_64": (64, "norm", "ChannelsLastToFirst()"),
}
FULL_MODELS = ["vit_b_16", "swin_t"]
QUICK_MODELS = ["vit_small4_64", "swin_tiny_64"]


# --------------------------------------------------------------------------- worker


def build_model(model_name: str) -> tuple[Any, Any, Any]:
    """The seeded model (eval mode, random weights), its Grad-CAM layer and transform.

    ViTs are explained at the last block's first norm (``TokensToGrid()``: the class
    token dropped, the patch tokens on their grid), as ``default_layer`` picks; Swins at
    their final norm (``default_layer``'s pick, channels last: ``ChannelsLastToFirst()``).
    torchvision zero-initialises the ViT's head (every logit would be 0): it is drawn
    at random, as in ``bench_transformers.py``.
    """
    import torch
    import torchvision

    from captum_fdcam.architectures import default_layer
    from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

    torch.manual_seed(MODEL_SEED)
    if model_name == "vit_b_16":
        model = torchvision.models.vit_b_16()
    elif model_name == "vit_small4_64":
        model = torchvision.models.VisionTransformer(
            image_size=64, patch_size=16, num_layers=4, num_heads=6, hidden_dim=384, mlp_dim=1536
        )
    elif model_name == "swin_t":
        model = torchvision.models.swin_t()
    elif model_name == "swin_tiny_64":
        model = torchvision.models.SwinTransformer(
            patch_size=[4, 4], embed_dim=48, depths=[2, 2], num_heads=[3, 6], window_size=[4, 4]
        )
    else:
        raise ValueError(f"unknown model {model_name!r}")
    if model_name.startswith("vit"):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        return model.eval(), model.encoder.layers[-1].ln_1, TokensToGrid()
    layer = model.get_submodule(default_layer(model).name)
    return model.eval(), layer, ChannelsLastToFirst()


def _make_call(
    impl: str, model: Any, layer: Any, transform: Any, x: Any, targets: list[int]
) -> Callable[[], Any]:
    """The timed call of one implementation; objects are constructed here, untimed."""

    if impl == FLOOR:
        return input_gradient_floor(model, x, targets)

    if impl in (LRP_CP, LRP_ATTN):
        from captum_fdcam import PropagationLRP

        lrp: Any = PropagationLRP(model, attention="attnlrp" if impl == LRP_ATTN else "cp")
        return lambda: lrp.attribute(x, target=targets)

    if impl == FG:
        from captum_fdcam import FGCam, LayerGradCam

        cam = FGCam(LayerGradCam(model, layer, reshape_transform=transform))
        return lambda: cam.attribute(x, target=targets)

    if impl == IXG:
        import captum.attr

        ixg = captum.attr.InputXGradient(model)
        return lambda: ixg.attribute(x, target=targets)

    if impl == CAPTUM_LRP:
        import captum.attr

        lrp = captum.attr.LRP(model)
        return lambda: lrp.attribute(x, target=targets)

    raise ValueError(f"unknown implementation {impl!r}")


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, transform = build_model(config["model"])
    side = MODELS[config["model"]][0]
    generator = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(config["batch"], 3, side, side, generator=generator)

    # Warm-up: one plain forward pass (thread pool, kernels), which also gives the
    # targets (each image's argmax class) and the logits that the LRPs start from.
    with torch.no_grad():
        out = model(x)
    targets = out.argmax(1).tolist()
    logits = out[torch.arange(len(targets)), torch.tensor(targets)]

    call = _make_call(config["impl"], model, layer, transform, x, targets)
    timed, caught = warnings_of_first_call(call)

    attr, result = measure_calls(
        timed, config["repeats"], config["max_seconds"], min_repeats=config["min_repeats"]
    )
    result.pop("extra")
    extra: dict[str, Any] = {"output_shape": list(attr.shape)}
    if config["impl"] in LRPS:
        totals = attr.detach().double().flatten(1).sum(1)
        extra["relevance_over_logit"] = (totals / logits.double()).tolist()
    return (
        result
        | extra
        | {
            "s_per_call": result["median_s"],
            "s_per_image": result["median_s"] / config["batch"],
            "threads": torch.get_num_threads(),
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
            impls = [i for i in IMPLS if i in args.impls]
            if not model.startswith("vit") and not args.attnlrp_on_swin:
                impls = [i for i in impls if i != LRP_ATTN]
            configs += [base | {"impl": impl} for impl in impls]
    return configs


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Adds time / floor time and peak memory / Captum InputXGradient's (same model, batch)."""
    for row in rows:
        if "s_per_image" not in row:
            continue
        same = {"model": row["model"], "batch": row["batch"]}
        floor = find_row(rows, impl=FLOOR, **same)
        if floor is not None:
            row["ratio_to_floor"] = row["s_per_image"] / floor["s_per_image"]
        ixg = find_row(rows, impl=IXG, **same)
        if ixg is not None and ixg["peak_extra_mib"] > 0:
            row["memory_to_ixg"] = row["peak_extra_mib"] / ixg["peak_extra_mib"]


def check_targets(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each targeted implementation's time / floor against the target, per model and batch."""
    out = []
    for model in args.models:
        for batch in args.batch_sizes:
            for impl in TARGETED:
                if not any(r["model"] == model and r["impl"] == impl for r in rows):
                    continue  # not run
                row = find_row(rows, model=model, batch=batch, impl=impl) or {}
                value = row.get("ratio_to_floor")
                met = None if value is None else value <= TARGET_RATIO
                out.append(
                    {"model": model, "batch": batch, "quantity": f"{impl} / floor"}
                    | {"value": value, "target": f"<= {TARGET_RATIO:g}", "met": met}
                )
    return out


def _impl_cell(row: dict[str, Any]) -> str:
    if row["impl"] == FLOOR:
        return "floor (forward + backward to input)"
    if row["impl"] in TARGETED:
        return f"**{row['impl']}**"
    return row["impl"]


def _met_cell(row: dict[str, Any]) -> str:
    if row["impl"] not in TARGETED or row.get("ratio_to_floor") is None:
        return "—"
    return "yes" if row["ratio_to_floor"] <= TARGET_RATIO else "**no**"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"| model | batch | implementation | output | s / call | s / image | × floor "
        f"| ≤ {TARGET_RATIO:g} × floor | peak extra MiB | × Captum IxG memory "
        "| relevance / target logit | repeats | other CPU use |\n"
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        cells = [row["model"], str(row["batch"]), _impl_cell(row)]
        if "error" in row:
            cells += [f"error: {short_error(row['error'])}"] + [""] * 10
        else:
            cells += [
                "×".join(str(d) for d in row["output_shape"]),
                f"{row['s_per_call']:.3f}",
                f"{row['s_per_image']:.3f}",
                fmt(row.get("ratio_to_floor"), ".2f"),
                _met_cell(row),
                f"{row['peak_extra_mib']:.0f}",
                fmt(row.get("memory_to_ixg"), ".2f"),
                relevance_cell(row, ".3f"),
                str(row["repeats"]),
                fmt(row.get("foreign_cpu_share"), ".0%"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def shared_sentence(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Whether other processes used the machine during the timings, from the rows."""
    shares = [r["foreign_cpu_share"] for r in rows if r.get("foreign_cpu_share") is not None]
    if not shares:
        return "not measured in this run."
    busy = sum(share > args.max_foreign for share in shares)
    return (
        f"over {args.max_foreign:.0%} during {busy} of {len(shares)} timings "
        f"(at most {max(shares):.0%})."
    )


def markdown_report(
    env: dict[str, Any],
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    args: argparse.Namespace,
    total_s: float,
) -> str:
    models = "\n".join(
        f"- `{model}`: {MODELS[model][0]}×{MODELS[model][0]} inputs, Grad-CAM at "
        f"`{MODELS[model][1]}` with `reshape_transform={MODELS[model][2]}`"
        for model in args.models
    )
    return f"""# Relevance through attention: LRP and FG-Grad-CAM on transformers against the floor

{environment_lines(env, total_s)}

Models (torchvision), {NUM_CLASSES} classes, random weights (`torch.manual_seed({MODEL_SEED})`;
the ViT's zero-initialised head drawn with std 0.02), eval mode, random inputs
(seed {INPUT_SEED}), target = each image's argmax class:

{models}

- **floor**: a bare `out = model(x); torch.autograd.grad(out[range(n), targets].sum(), x)`
  with `x.requires_grad_()`.
- **{LRP_CP}**: `PropagationLRP(model).attribute(x, target=targets)`, relevance to the
  pixels with the default attention rule (CP-LRP: the attention weights held constant);
  **{LRP_ATTN}**: the same with `PropagationLRP(model, attention="attnlrp")`.
- **{FG}**: `FGCam(LayerGradCam(model, layer, reshape_transform=...)).attribute(x,
  target=targets)`, maps (N, 1, H, W).
- **{IXG}**: `captum.attr.InputXGradient(model).attribute(x, target=targets)`, the peer
  (one forward + backward pass, times the input); **{CAPTUM_LRP}**:
  `captum.attr.LRP(model).attribute(x, target=targets)`, Captum's default rules (none for
  LayerNorm, attention or Swin's permutes: the row gives its error).
  Objects are constructed outside the timed region.
- **s / call**: median wall time of one call over `repeats` calls after the first (fewer
  where they would take longer than `--max-seconds`, but at least `--min-repeats`);
  **s / image**: the same divided by the batch size. Every worker first runs one plain
  forward pass (warm-up; it also gives the targets and the target logits); the first call
  is the memory measurement and the warm-up of the timed calls.
- **× floor**: time / the floor's time, same model and batch, same run; target:
  **LRP and FG-Grad-CAM ≤ {TARGET_RATIO:g} × floor**.
- **peak extra MiB**: each configuration runs in a fresh process; peak resident set
  (VmHWM, reset through /proc/self/clear_refs) during the first call minus the resident
  set just before it. **× Captum IxG memory**: that over Captum InputXGradient's, same
  model and batch.
- **relevance / target logit**: per image, the sum of the input relevance over channels
  and pixels divided by the target logit, where the LRPs start (min … max over the batch);
  relevance that ends on biases, position embeddings and the class token is not in it.
- **other CPU use**: share of the machine's CPUs that other processes used during the
  timed repeats (from /proc/stat); {shared_sentence(rows, args)}
  Each configuration waits up to `--max-wait` ({args.max_wait:g} s) for a quiet machine
  and is measured again up to `--retries` ({args.retries}) times above `--max-foreign`
  ({args.max_foreign:.0%}). Other processes may run on the machine at the same time:
  absolute times are inflated where this column is high, and every ratio compares rows of
  this run only.

## Target

{targets_table(checks)}
## All measurements

{markdown_table(rows)}
## Warnings (silenced; first call)

{warnings_list(rows)}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=FULL_MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument(
        "--attnlrp-on-swin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"measure {LRP_ATTN} on Swin too (the ViT always, when in --impls)",
    )
    parser.add_argument(
        "--min-repeats", type=int, default=2, help="timed calls made even where they are slow"
    )
    add_run_arguments(
        parser,
        repeats=5,
        repeats_help="timed calls per configuration (after warm-up)",
        max_seconds=40.0,
        at_least="at least --min-repeats",
        quick_help="a 4-block ViT and a 2-stage Swin at 64 px; writes transformer_lrp_quick.*",
    )
    add_measuring_arguments(parser)
    # A shorter wait and one re-run by default: the 2-core machine is often shared, and
    # the full run should stay near 25 min; the "other CPU use" column tells. With 2
    # threads on 2 cores, a process using one core can slow a call many times over.
    parser.set_defaults(max_wait=60.0, retries=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.min_repeats = QUICK_MODELS, 2, 1
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    env = environment(args, command)
    configs = build_configs(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, config in enumerate(configs, 1):
        result = measure(__file__, config, args)
        row = {k: config[k] for k in ("model", "batch", "impl")} | result
        rows.append(row)
        summary = (
            f"error: {short_error(row['error'], 120)}"
            if "error" in row
            else f"{row['s_per_call']:.3f} s/call ({row['repeats']} repeats), "
            f"peak +{row['peak_extra_mib']:.0f} MiB, "
            f"other CPU use {fmt(row.get('foreign_cpu_share'), '.0%')}"
        )
        print(
            f"[{i:2d}/{len(configs)} {time.perf_counter() - start:6.0f} s] "
            f"{config['model']} b={config['batch']} {config['impl']}: {summary}",
            flush=True,
        )
    total_s = time.perf_counter() - start
    add_ratios(rows)
    checks = check_targets(rows, args)
    report = markdown_report(env, rows, checks, args, total_s)
    stem = "transformer_lrp_quick" if args.quick else "transformer_lrp"
    payload = {"environment": env, "total_s": total_s, "targets": checks, "results": rows}
    write_results(args.out, stem, payload, report)
    print()
    print(targets_table(checks))
    print(markdown_table(rows))
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    script_main(run_worker, main)
