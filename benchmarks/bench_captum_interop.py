"""What Captum's ``NoiseTunnel`` costs around our CAMs.

``NoiseTunnel(cam).attribute(x, nt_samples=n, ...)`` (SmoothGrad) draws n noisy copies of
every image and explains all of them in one ``cam.attribute`` call. This script times it
against what a user would otherwise write by hand, the same noisy copies explained by n
separate ``attribute`` calls (one per noise sample, each on the batch of images) and
averaged, and against one ``attribute`` call on all the noisy copies stacked (what
NoiseTunnel runs inside, without its bookkeeping), and one plain call on the images.
Grad-CAM and FD-CAM on torchvision's ResNet-18 (``layer4``), random weights, 224×224.

Every (batch size, method, implementation) configuration runs in a fresh subprocess
(``--worker``), as in ``bench_gradient_cams.py``. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_captum_interop.py            # full run (~4 min on 2 cores)
    python benchmarks/bench_captum_interop.py --quick    # smoke test (batch 1, 1 repeat)
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
    MODEL_SEED,
    add_measuring_arguments,
    add_run_arguments,
    build,
    environment,
    environment_lines,
    fmt,
    measure,
    measure_calls,
    script_main,
    short_error,
    write_results,
)

METHODS = ("Grad-CAM", "FD-CAM")
SINGLE = "single call"
NOISE_TUNNEL = "NoiseTunnel"
SEPARATE = "n separate calls"
STACKED = "one call, stacked copies"
IMPLS = (SINGLE, NOISE_TUNNEL, SEPARATE, STACKED)
#: The seed of the noise, reset before every timed call so that NoiseTunnel and the
#: hand-written loops explain the same noisy copies (their maps are compared).
NOISE_SEED = 7
STDEV = 0.1


# --------------------------------------------------------------------------- worker


def noisy_copies(x: Any, n: int, stdev: float) -> Any:
    """NoiseTunnel's draw: ``x.repeat_interleave(n, 0)`` plus N(0, stdev) noise, drawn as
    NoiseTunnel draws it (one ``torch.normal`` over all copies), rows example-major."""
    import torch

    std = torch.tensor(stdev, device=x.device).repeat((len(x) * n, *x.shape[1:]))
    return x.repeat_interleave(n, dim=0) + torch.normal(0, std)


def _make_call(
    impl: str, method: str, model: Any, layer: Any, x: Any, targets: list[int], n: int
) -> Callable[[], Any]:
    """The timed call: returns the (N, 1, 7, 7) map (the SmoothGrad mean of n noisy maps,
    or one plain map for ``SINGLE``). The CAM object is built here, outside the timing."""
    import torch
    from captum.attr import NoiseTunnel

    from captum_fdcam import METHODS as OUR_METHODS

    cam = OUR_METHODS[method](model, layer)
    options = {"relu_attributions": True}
    batch = len(x)

    if impl == SINGLE:
        return lambda: cam.attribute(x, target=targets, **options)

    if impl == NOISE_TUNNEL:
        tunnel = NoiseTunnel(cam)

        def tunnel_call() -> Any:
            torch.manual_seed(NOISE_SEED)
            return tunnel.attribute(
                x, nt_type="smoothgrad", nt_samples=n, stdevs=STDEV, target=targets, **options
            )

        return tunnel_call

    if impl == SEPARATE:

        def separate_call() -> Any:
            torch.manual_seed(NOISE_SEED)
            noisy = noisy_copies(x, n, STDEV)
            total = 0
            for j in range(n):  # noise sample j of every image: rows j, n + j, 2n + j, ...
                total = total + cam.attribute(noisy[j::n], target=targets, **options)
            return total / n

        return separate_call

    if impl == STACKED:
        stacked_targets = [t for t in targets for _ in range(n)]

        def stacked_call() -> Any:
            torch.manual_seed(NOISE_SEED)
            noisy = noisy_copies(x, n, STDEV)
            maps = cam.attribute(noisy, target=stacked_targets, **options)
            return maps.view(batch, n, *maps.shape[1:]).mean(dim=1)

        return stacked_call

    raise ValueError(f"unknown implementation {impl!r}")


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, x, targets = build("resnet18", config["batch"])
    with torch.no_grad():  # warm-up of threads and kernels, outside every measurement
        model(x)
    call = _make_call(
        config["impl"], config["method"], model, layer, x, targets, config["nt_samples"]
    )
    maps, result = measure_calls(call, config["repeats"], config["max_seconds"])
    if config.get("maps_path"):
        np.save(config["maps_path"], maps.detach().double().numpy())
    result.pop("extra")
    return result | {"threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- parent


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = []
    for batch in args.batch_sizes:
        for method in METHODS:
            for impl in IMPLS:
                configs.append(
                    {
                        "batch": batch,
                        "method": method,
                        "impl": impl,
                        "nt_samples": args.nt_samples,
                        "threads": args.threads,
                        "repeats": args.repeats,
                        "max_seconds": args.max_seconds,
                    }
                )
    return configs


def _key(row: dict[str, Any], impl: str | None = None) -> tuple[Any, ...]:
    return (row["batch"], row["method"], impl or row["impl"])


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """NoiseTunnel's time over each alternative's, on the NoiseTunnel row."""
    by_key = {_key(r): r for r in rows if "median_s" in r}
    for row in rows:
        if row["impl"] != NOISE_TUNNEL or "median_s" not in row:
            continue
        for impl, field in ((SEPARATE, "over_separate"), (STACKED, "over_stacked")):
            other = by_key.get(_key(row, impl))
            if other is not None:
                row[field] = row["median_s"] / other["median_s"]
        single = by_key.get(_key(row, SINGLE))
        if single is not None:
            row["over_single"] = row["median_s"] / single["median_s"]


def compare_maps(rows: list[dict[str, Any]]) -> None:
    """Largest difference between NoiseTunnel's map and each hand-written SmoothGrad's
    (the same noise), relative to the largest value of NoiseTunnel's map."""
    paths = {_key(r): r.get("maps_path") for r in rows}
    for row in rows:
        if row["impl"] not in (SEPARATE, STACKED) or not row.get("maps_path"):
            continue
        tunnel = paths.get(_key(row, NOISE_TUNNEL))
        if tunnel is None:
            continue
        ours, theirs = np.load(tunnel), np.load(row["maps_path"])
        scale = max(float(np.abs(ours).max()), 1e-30)
        row["max_rel_diff_to_noise_tunnel"] = float(np.abs(ours - theirs).max()) / scale


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| batch | method | implementation | s / call | NoiseTunnel / this | peak extra MiB "
        "| max rel. diff. to NoiseTunnel | repeats | other CPU use |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    by_key = {_key(r): r for r in rows}
    lines = []
    for row in rows:
        impl = f"**{row['impl']}**" if row["impl"] == NOISE_TUNNEL else row["impl"]
        cells = [str(row["batch"]), row["method"], impl]
        if "error" in row:
            cells += [f"error: {short_error(row['error'])}", "", "", "", "", ""]
        else:
            tunnel = by_key.get(_key(row, NOISE_TUNNEL), {})
            ratio = (
                tunnel["median_s"] / row["median_s"]
                if "median_s" in tunnel and row["impl"] != NOISE_TUNNEL
                else None
            )
            foreign = row["foreign_cpu_share"]
            cells += [
                f"{row['median_s']:.3f}",
                fmt(ratio, ".2f"),
                f"{row['peak_extra_mib']:.0f}",
                fmt(row.get("max_rel_diff_to_noise_tunnel"), ".1e"),
                str(row["repeats"]),
                "—" if foreign is None else f"{foreign:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def summary_lines(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["impl"] == NOISE_TUNNEL and "over_separate" in row:
            lines.append(
                f"- batch {row['batch']}, {row['method']}: NoiseTunnel takes "
                f"{row['over_separate']:.2f} × the time of {row['nt_samples']} separate calls, "
                f"{fmt(row.get('over_stacked'), '.2f')} × one call on the stacked copies, "
                f"{fmt(row.get('over_single'), '.1f')} × one plain call."
            )
    return "\n".join(lines) + "\n" if lines else "- (no complete measurement)\n"


def markdown_report(env: dict[str, Any], rows: list[dict[str, Any]], total_s: float) -> str:
    n = rows[0]["nt_samples"] if rows else "n"
    return f"""# Captum's NoiseTunnel around our CAMs

{environment_lines(env, total_s)}

Model: torchvision `resnet18()` explained at `layer4` (512 channels, 7×7), random weights
(`torch.manual_seed({MODEL_SEED})`), eval mode, 224×224 random images, one random target
class per image. SmoothGrad with `nt_samples={n}`, `stdevs={STDEV}`,
`relu_attributions=True`.

- **{NOISE_TUNNEL}**: `NoiseTunnel(cam).attribute(x, nt_type="smoothgrad",
  nt_samples={n}, stdevs={STDEV}, target=targets, relu_attributions=True)`.
- **{SEPARATE}**: the same noisy copies (NoiseTunnel's draw, same seed), explained by {n}
  `cam.attribute` calls, one per noise sample, each on the batch of images, then
  averaged: SmoothGrad written by hand.
- **{STACKED}**: one `cam.attribute` call on all batch × {n} noisy copies, averaged per
  image: what NoiseTunnel runs inside, without its bookkeeping.
- **{SINGLE}**: one `cam.attribute` call on the images, without noise.
- **s / call**: median wall time of one call (the whole batch) over `repeats` calls,
  after a first call that is the warm-up and the memory measurement. Each worker first
  runs one plain forward pass. CAM and NoiseTunnel objects are built outside the timing;
  the noise is drawn inside it (for every implementation but the single call).
- **NoiseTunnel / this**: NoiseTunnel's time over this row's, same batch and method.
- **peak extra MiB**: peak resident set (VmHWM) during the first call minus the resident
  set before it, each configuration in a fresh process. NoiseTunnel explains all
  batch × n copies in one call; its `nt_samples_batch_size` caps that number.
- **max rel. diff. to NoiseTunnel**: largest absolute difference between the map and
  NoiseTunnel's, over the largest value of NoiseTunnel's map (same noise: ≈ 1e-7, float32
  rounding, when NoiseTunnel computes SmoothGrad exactly).
- **other CPU use**: share of the machine's CPUs that other processes used during the
  timed repeats (from /proc/stat); "—" when timed on the first call. Each configuration
  waits for a quiet machine and is measured again when this exceeds `--max-foreign`.

## Summary

{summary_lines(rows)}
## All measurements

{markdown_table(rows)}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--nt-samples", type=int, default=8, help="NoiseTunnel's nt_samples")
    add_run_arguments(
        parser,
        repeats=5,
        repeats_help="timed calls per configuration (after warm-up)",
        max_seconds=15.0,
        at_least="at least 2",
        quick_help="smoke test: batch 1, 1 repeat; writes captum_interop_quick.*",
    )
    add_measuring_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats = [1], 1
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    env = environment(args, command)
    configs = build_configs(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_interop_") as tmp:
        for i, config in enumerate(configs, 1):
            maps_path = str(Path(tmp) / f"{i}.npy")
            result = measure(__file__, config | {"maps_path": maps_path}, args)
            row = {k: config[k] for k in ("batch", "method", "impl", "nt_samples")} | result
            if "error" not in row:
                row["maps_path"] = maps_path
            rows.append(row)
            summary = (
                f"error: {row['error']}"
                if "error" in row
                else f"{row['median_s']:.3f} s/call ({row['repeats']} repeats), "
                f"peak +{row['peak_extra_mib']:.0f} MiB"
            )
            print(
                f"[{i:2d}/{len(configs)} {time.perf_counter() - start:6.0f} s] "
                f"b={config['batch']} {config['method']} {config['impl']}: {summary}",
                flush=True,
            )
        compare_maps(rows)
    for row in rows:
        row.pop("maps_path", None)
    total_s = time.perf_counter() - start
    add_ratios(rows)
    report = markdown_report(env, rows, total_s)
    stem = "captum_interop_quick" if args.quick else "captum_interop"
    payload = {"environment": env, "total_s": total_s, "results": rows}
    write_results(args.out, stem, payload, report)
    print()
    print(report)
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    script_main(run_worker, main)
