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
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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
IMAGE_SIZE = 224
NUM_CLASSES = 1000
MODEL_SEED = 0
INPUT_SEED = 1
MIB = 1024 * 1024
#: glibc settings of ``--tune-malloc``: never give the heap back to the OS, and serve
#: allocations up to 32 MiB from the heap, so no call pays page faults for memory that
#: an earlier call freed.
TUNED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


# --------------------------------------------------------------------------- worker


def _proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _release_free_memory() -> None:
    """Collects garbage and hands glibc's free heap back to the OS, so RSS is tight."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may include free heap
        pass


def _reset_peak_rss() -> bool:
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


def _build(model_name: str, batch: int) -> tuple[Any, Any, Any, list[int]]:
    """The seeded model (eval mode, random weights), its layer, the input and targets."""
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


def _make_call(
    impl: str, method: str, model: Any, layer: Any, x: Any, targets: list[int]
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The timed call of one implementation, and a function removing its hooks.

    Every call returns the (N, 224, 224) maps (tensor or array); objects are
    constructed here, outside the timed region.
    """
    import torch
    import torch.nn.functional as F
    from captum.attr import LayerAttribution

    size = (IMAGE_SIZE, IMAGE_SIZE)

    def nothing() -> None:
        return None

    if impl == FLOOR:
        x_grad = x.clone().requires_grad_()
        rows = torch.arange(len(targets))
        cols = torch.tensor(targets)

        def floor() -> Any:
            out = model(x_grad)
            return torch.autograd.grad(out[rows, cols].sum(), x_grad)[0]

        return floor, nothing

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


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, x, targets = _build(config["model"], config["batch"])
    call, release = _make_call(config["impl"], config["method"], model, layer, x, targets)

    # Peak memory of the first call (which is also the warm-up of the timings).
    _release_free_memory()
    peak_reset = _reset_peak_rss()
    baseline_kib = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    maps = call()
    first_s = time.perf_counter() - start
    peak_kib = _proc_status_kib("VmHWM")

    # Fewer repeats where one call is slow, so the whole run stays short.
    repeats = max(
        min(2, config["repeats"]),
        min(config["repeats"], math.floor(config["max_seconds"] / max(first_s, 1e-9))),
    )
    times = []
    busy_start, own_start, wall_start = cpu_busy_s(), _own_cpu_s(), time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    # Share of the machine's CPUs that other processes used while we were timing.
    foreign_s = (cpu_busy_s() - busy_start) - (_own_cpu_s() - own_start)
    foreign_share = foreign_s / ((time.perf_counter() - wall_start) * (os.cpu_count() or 1))
    release()

    if config.get("maps_path") and config["impl"] != FLOOR:
        array = maps.detach().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        np.save(config["maps_path"], array.astype(np.float32))
    median_s = statistics.median(times)
    return {
        "first_call_s": first_s,
        "times_s": times,
        "repeats": repeats,
        "median_s": median_s,
        "s_per_image": median_s / config["batch"],
        "baseline_rss_mib": baseline_kib / 1024,
        "peak_extra_mib": (peak_kib - baseline_kib) / 1024,
        "peak_reset": peak_reset,
        "foreign_cpu_share": max(foreign_share, 0.0),
        "threads": torch.get_num_threads(),
    }


def worker_main(config_json: str) -> None:
    """Entry point of the subprocess: prints one JSON line, errors included."""
    config = json.loads(config_json)
    try:
        result: dict[str, Any] = run_worker(config)
    except Exception as exc:  # a peer's failure is a result, not a crash
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


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


def run_config(
    config: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs one configuration in a fresh interpreter and returns its result."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
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


def measure(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Runs a configuration when the machine is quiet; re-runs it if others took the CPUs.

    Keeps the run during which other processes used the least CPU.
    """
    best: dict[str, Any] | None = None
    for attempt in range(args.retries + 1):
        waited, share = wait_for_quiet(args.max_wait, args.max_foreign)
        if waited > 1:
            print(f"    waited {waited:.0f} s for other processes (load {share:.0%})", flush=True)
        env = os.environ | TUNED_MALLOC if args.tune_malloc else None
        result = run_config(config, args.timeout, env)
        result["attempts"] = attempt + 1
        if "error" in result:
            return result
        if best is None or result["foreign_cpu_share"] < best["foreign_cpu_share"]:
            best = result | {"attempts": attempt + 1}
        if result["foreign_cpu_share"] <= args.max_foreign:
            break
        print(
            f"    other processes used {result['foreign_cpu_share']:.0%} of the CPUs: "
            f"{'measuring again' if attempt < args.retries else 'keeping the least disturbed run'}",
            flush=True,
        )
    assert best is not None
    return best


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


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _short_error(error: str, limit: int = 80) -> str:
    error = error.replace("|", "/").replace("\n", " ")
    return error if len(error) <= limit else error[: limit - 1] + "…"


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
            cells += [f"error: {_short_error(row['error'])}", "", "", "", "", "", ""]
        else:
            agreement = row.get("agreement")
            if agreement is None:
                agree = "—"
            elif agreement.get("error"):
                agree = f"error: {_short_error(agreement['error'])}"
            elif agreement["mean"] is None:
                agree = f"undefined (0/{agreement['n']} non-constant)"
            else:
                agree = f"{agreement['mean']:.4f} / {agreement['min']:.4f}"
                if agreement["n_defined"] < agreement["n"]:
                    agree += f" ({agreement['n_defined']}/{agreement['n']} defined)"
            cells += [
                f"{row['s_per_image']:.4f}",
                _fmt(row.get("ratio_to_floor"), ".2f"),
                _fmt(row.get("peer_over_ours"), ".2f"),
                f"{row['peak_extra_mib']:.0f}",
                agree,
                str(row["repeats"]),
                f"{row['foreign_cpu_share']:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
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
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "worker_env": TUNED_MALLOC if args.tune_malloc else {},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            dist: _version(dist)
            for dist in ("torch", "torchvision", "captum", "grad-cam", "torchcam", "captum-fdcam")
        },
    }


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
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed calls per configuration (after warm-up)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="fewer repeats (at least 2) where they would take longer than this",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: resnet18, batch 1, 1 repeat; writes gradient_cams_quick.*",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
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
            result = measure(config | {"maps_path": str(maps_path)}, args)
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
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gradient_cams_quick" if args.quick else "gradient_cams"
    (args.out / f"{stem}.json").write_text(
        json.dumps({"environment": env, "total_s": total_s, "results": rows}, indent=2) + "\n"
    )
    (args.out / f"{stem}.md").write_text(report)
    print()
    print(markdown_table(rows))
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        main()
