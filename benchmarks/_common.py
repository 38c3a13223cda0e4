"""Helpers shared by the benchmark scripts (``bench_*.py``).

Measuring processes, peak memory, quiet-machine checks, seeded models and the
environment block of the reports. The scripts import this module as ``_common``
(Python puts the script's own folder, ``benchmarks/``, first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

IMAGE_SIZE = 224
NUM_CLASSES = 1000
MODEL_SEED = 0
INPUT_SEED = 1
MIB = 1024 * 1024
#: glibc settings of ``--tune-malloc``: never give the heap back to the OS, and serve
#: allocations up to 32 MiB from the heap, so no call pays page faults for memory that
#: an earlier call freed.
TUNED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}
#: Distributions whose versions the reports list.
VERSIONED = ("torch", "torchvision", "captum", "grad-cam", "torchcam", "captum-fdcam")


# --------------------------------------------------------------------------- worker side


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def release_free_memory() -> None:
    """Collects garbage and hands glibc's free heap back to the OS, so RSS is tight."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may include free heap
        pass


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def cpu_busy_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (all CPUs, /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds used by this process (user + system)."""
    times = os.times()
    return times.user + times.system


def build(model_name: str, batch: int) -> tuple[Any, Any, Any, list[int]]:
    """The seeded model (eval mode, random weights), its layer, the input and targets.

    ResNet-18 is explained at ``layer4``, VGG-16 at ``features[-1]`` (the last
    max-pool). Every process gets the same model, input and targets.
    """
    import torch
    import torchvision

    torch.manual_seed(MODEL_SEED)
    if model_name == "resnet18":
        model = torchvision.models.resnet18().eval()
        layer = model.layer4
    elif model_name == "vgg16":
        model = torchvision.models.vgg16().eval()
        layer = model.features[-1]
    else:
        raise ValueError(f"unknown model {model_name!r}")
    generator = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    targets = torch.randint(NUM_CLASSES, (batch,), generator=generator).tolist()
    return model, layer, x, targets


def measure_calls(
    call: Callable[[], Any],
    repeats: int,
    max_seconds: float,
    min_repeats: int = 2,
    on_first_call: Callable[[], Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Peak memory of the first call of ``call``, then the timings of further calls.

    The first call is the memory measurement and the warm-up. Then ``repeats`` calls
    are timed, fewer (but at least ``min_repeats``) where they would take longer than
    ``max_seconds`` in all. With 0 further calls, the first call is the timing.

    Args:
        on_first_call: a context-free callable run right after the first call
            (e.g. to remove a counting hook); its result is returned as ``"extra"``.

    Returns:
        The first call's result, and the measurements (times in seconds).
    """
    release_free_memory()
    peak_reset = reset_peak_rss()
    baseline_kib = proc_status_kib("VmRSS")
    start = time.perf_counter()
    result = call()
    first_s = time.perf_counter() - start
    peak_kib = proc_status_kib("VmHWM")
    extra = on_first_call() if on_first_call is not None else None

    # Fewer repeats where one call is slow, so the whole run stays short.
    n = max(
        min(min_repeats, repeats),
        min(repeats, math.floor(max_seconds / max(first_s, 1e-9))),
    )
    times = []
    busy_start, own_start, wall_start = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    if n == 0:  # the first call is the timing; others' CPU use is not known for it
        times = [first_s]
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    wall_s = time.perf_counter() - wall_start
    # Share of the machine's CPUs that other processes used while we were timing.
    foreign_s = (cpu_busy_s() - busy_start) - (own_cpu_s() - own_start)
    foreign_share = foreign_s / (wall_s * (os.cpu_count() or 1)) if n else None
    return result, {
        "first_call_s": first_s,
        "times_s": times,
        "repeats": n,
        "median_s": statistics.median(times),
        "baseline_rss_mib": baseline_kib / 1024,
        "peak_extra_mib": (peak_kib - baseline_kib) / 1024,
        "peak_reset": peak_reset,
        "foreign_cpu_share": None if foreign_share is None else max(foreign_share, 0.0),
        "extra": extra,
    }


def input_gradient_floor(model: Any, x: Any, targets: list[int]) -> Callable[[], Any]:
    """The floor every method is measured against: one forward pass and the gradient of
    the targets' summed logits with respect to the input."""
    import torch

    x_grad = x.clone().requires_grad_()
    rows, cols = torch.arange(len(targets)), torch.tensor(targets)

    def floor() -> Any:
        out = model(x_grad)
        return torch.autograd.grad(out[rows, cols].sum(), x_grad)[0]

    return floor


def warnings_of_first_call(
    call: Callable[[], Any], quiet: bool = True
) -> tuple[Callable[[], Any], list[str]]:
    """``call`` for :func:`measure_calls`: its first call records the warnings it raises
    (their first lines, once each, into the returned list); later calls ignore them
    when ``quiet`` (so that printing them is not timed)."""
    import warnings

    caught: list[str] = []

    def first_call() -> Any:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            result = call()
        caught.extend(dict.fromkeys(str(r.message).splitlines()[0] for r in records))
        return result

    def quiet_call() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()

    calls = iter([first_call])
    later = quiet_call if quiet else call

    def timed() -> Any:
        return next(calls, later)()

    return timed, caught


def worker_main(config_json: str, run_worker: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point of a measuring subprocess: prints one JSON line, errors included."""
    config = json.loads(config_json)
    try:
        result: dict[str, Any] = run_worker(config)
    except Exception as exc:  # a peer's failure is a result, not a crash
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


def run_config(
    script: str, config: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs one configuration with ``script --worker CONFIG`` in a fresh interpreter."""
    command = [sys.executable, os.path.abspath(script), "--worker", json.dumps(config)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"worker exited with {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def wait_for_quiet(max_wait_s: float, threshold: float) -> tuple[float, float]:
    """Waits until other processes use less than ``threshold`` of the CPUs.

    Returns the seconds waited and the last share measured (over 0.5 s).
    """
    start = time.perf_counter()
    while True:
        busy = cpu_busy_s()
        time.sleep(0.5)
        share = (cpu_busy_s() - busy) / (0.5 * (os.cpu_count() or 1))
        waited = time.perf_counter() - start
        if share < threshold or waited > max_wait_s:
            return waited, share


def measure(script: str, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Runs a configuration when the machine is quiet; re-runs it if others took the CPUs.

    Keeps the run during which other processes used the least CPU. Runs whose other
    CPU use is unknown (``None``: timed on the first call only) are not repeated.
    """
    best: dict[str, Any] | None = None
    for attempt in range(args.retries + 1):
        waited, share = wait_for_quiet(args.max_wait, args.max_foreign)
        if waited > 1:
            print(f"    waited {waited:.0f} s for other processes (load {share:.0%})", flush=True)
        env = os.environ | TUNED_MALLOC if args.tune_malloc else None
        result = run_config(script, config, args.timeout, env)
        result["attempts"] = attempt + 1
        if "error" in result:
            return result
        foreign = result["foreign_cpu_share"]
        if foreign is None:
            return result | {"waited_s": waited, "load_before": share}
        if best is None or foreign < best["foreign_cpu_share"]:
            best = result | {"attempts": attempt + 1}
        if foreign <= args.max_foreign:
            break
        print(
            f"    other processes used {foreign:.0%} of the CPUs: "
            f"{'measuring again' if attempt < args.retries else 'keeping the least disturbed run'}",
            flush=True,
        )
    assert best is not None
    return best


def write_results(out: Any, stem: str, payload: dict[str, Any], report: str) -> None:
    """Writes ``<stem>.json`` (the payload) and ``<stem>.md`` (the report) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(report)


def script_main(
    run_worker: Callable[[dict[str, Any]], dict[str, Any]], main: Callable[[], None]
) -> None:
    """A script's entry point: a measuring worker (``--worker CONFIG``) or the driver."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], run_worker)
    else:
        main()


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    repeats: int,
    repeats_help: str,
    max_seconds: float,
    at_least: str,
    quick_help: str,
) -> None:
    """``--repeats``, ``--max-seconds``, ``--out`` and ``--quick``, as every script has them."""
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=max_seconds,
        help=f"fewer repeats ({at_least}) where they would take longer than this",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help=quick_help)


def add_measuring_arguments(parser: argparse.ArgumentParser, timeout_s: float = 1200.0) -> None:
    """The options of how configurations are measured, common to the scripts."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--timeout", type=float, default=timeout_s, help="seconds per configuration"
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        help="share of the CPUs other processes may use during a measurement; above it, "
        "wait before and measure again after (up to --retries times)",
    )
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="run the workers with glibc's heap trimming off (MALLOC_TRIM_THRESHOLD_, "
        "MALLOC_MMAP_THRESHOLD_), removing page-fault costs that depend on allocation order",
    )
    parser.add_argument(
        "--max-wait", type=float, default=120.0, help="longest wait for a quiet machine (s)"
    )


# --------------------------------------------------------------------------- reports


def find_row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first measured row (one with a time) whose fields equal ``match``."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and "s_per_image" in row:
            return row
    return None


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def short_error(error: str, limit: int = 80) -> str:
    error = error.replace("|", "/").replace("\n", " ")
    return error if len(error) <= limit else error[: limit - 1] + "…"


def relevance_cell(row: dict[str, Any], spec: str) -> str:
    """The range of a row's relevance / target logit over its examples."""
    values = row.get("relevance_over_logit")
    if not values:
        return "—"
    low, high = min(values), max(values)
    if len(values) == 1 or low == high:
        return format(low, spec)
    return f"{format(low, spec)} … {format(high, spec)}"


def targets_table(checks: list[dict[str, Any]]) -> str:
    """Each target check (model, batch, quantity, value, target, met) as a table."""
    lines = ["| model | batch | quantity | value | target | met |", "|---|---:|---|---:|---|---|"]
    for c in checks:
        met = "—" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(
            f"| {c['model']} | {c['batch']} | {c['quantity']} | {fmt(c['value'], '.2f')} "
            f"| {c['target']} | {met} |"
        )
    return "\n".join(lines) + "\n"


def warnings_list(rows: list[dict[str, Any]]) -> str:
    """The warnings each row's calls raised, one bullet per row."""
    lines = [
        f"- {row['model']} batch {row['batch']} {row['impl']}: "
        + "; ".join(f"`{w}`" for w in row["warnings"])
        for row in rows
        if row.get("warnings")
    ]
    return "\n".join(lines) + "\n" if lines else "- (none)\n"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(args: argparse.Namespace, command: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "worker_env": TUNED_MALLOC if args.tune_malloc else {},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {dist: version(dist) for dist in VERSIONED},
    }


def environment_lines(env: dict[str, Any], total_s: float) -> str:
    """The bullet list of machine, versions, allocator, date and command."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    malloc = (
        "glibc malloc, tuned: " + ", ".join(f"`{k}={v}`" for k, v in env["worker_env"].items())
        if env["worker_env"]
        else "glibc malloc, default settings"
    )
    return f"""- Machine: {env["cpu"]}, {env["cpu_count"]} CPUs, no GPU; {env["platform"]}
- torch.set_num_threads({env["threads"]}) in every measuring process
- Python {env["python"]}; {versions}
- Allocator: {malloc}
- Date: {env["date"]}; total run time {total_s / 60:.1f} min
- Command: `{env["command"]}`"""
