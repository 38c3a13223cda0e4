"""Speed and peak memory of the perturbation CAMs against their floor and peer libraries.

Measures ``captum_fdcam``'s FD-CAM against its floor (one forward + backward pass,
plus one pass of the network after the layer over the 2K channel-switched copies)
and against our XGrad-CAM; Ablation-CAM against grad-cam's ``AblationCAM``;
Score-CAM against grad-cam's and torchcam's ``ScoreCAM``; FD-CAM's peak memory at
several ``perturbations_per_eval``; and Group-CAM. Torchvision ResNet-18
(``layer4``) and VGG-16 (``features[-1]``), random weights, one 224×224 image.

Every configuration runs in a fresh subprocess (``--worker``), as in
``bench_gradient_cams.py``. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_perturbation_cams.py            # full run (~15 min on 2 cores)
    python benchmarks/bench_perturbation_cams.py --quick    # ResNet-18 only
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
    IMAGE_SIZE,
    MODEL_SEED,
    add_measuring_arguments,
    add_run_arguments,
    build,
    environment,
    environment_lines,
    find_row,
    fmt,
    measure,
    measure_calls,
    script_main,
    short_error,
    warnings_of_first_call,
    write_results,
)

OURS = "captum_fdcam"
FLOOR = "floor"
FLOOR_FB = "forward + backward"
FLOOR_TAIL = "after-layer network × 2K"
FLOOR_SUM = "(a) + (b)"
#: The class name of each method in the peer libraries.
PEERS: dict[str, dict[str, str]] = {
    "grad-cam": {"Ablation-CAM": "AblationCAM", "Score-CAM": "ScoreCAM"},
    "torchcam": {"Score-CAM": "ScoreCAM"},
}
#: perturbations_per_eval of FD-CAM's main measurement and of its memory sweep.
FD_PPE = 64
FD_PPE_SWEEP = (16, 64, 256)
ABLATION_PPE = 64
SCORE_PPE = 32
GROUP_PPE = 64
#: Per model: the targets of the report, (quantity, comparison, bound).
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "resnet18": [("FD-CAM / floor", "<=", 1.5), ("grad-cam AblationCAM / FD-CAM", ">=", 100)],
    "vgg16": [("FD-CAM / floor", "<=", 1.5), ("grad-cam AblationCAM / FD-CAM", ">=", 40)],
}


# --------------------------------------------------------------------------- worker


def _tail(model_name: str, model: Any) -> Callable[[Any], Any]:
    """The network after the layer, split by hand: (M, K, h, w) -> (M, classes)."""
    import torch

    if model_name == "resnet18":
        return lambda a: model.fc(torch.flatten(model.avgpool(a), 1))
    if model_name == "vgg16":
        return lambda a: model.classifier(torch.flatten(model.avgpool(a), 1))
    raise ValueError(f"unknown model {model_name!r}")


def _make_call(
    config: dict[str, Any], model: Any, layer: Any, x: Any, targets: list[int], act_shape: Any
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """The timed call of one configuration, a function removing its hooks, and the
    settings applied to a peer's object. Objects are constructed here, untimed."""
    import torch
    import torch.nn.functional as F
    from captum.attr import LayerAttribution

    impl, method, ppe = config["impl"], config["method"], config["ppe"]
    size = (IMAGE_SIZE, IMAGE_SIZE)

    def nothing() -> None:
        return None

    if impl == FLOOR and method == FLOOR_FB:
        x_grad = x.clone().requires_grad_()
        rows, cols = torch.arange(len(targets)), torch.tensor(targets)

        def floor_fb() -> Any:
            out = model(x_grad)
            return torch.autograd.grad(out[rows, cols].sum(), x_grad)[0]

        return floor_fb, nothing, {}

    if impl == FLOOR and method == FLOOR_TAIL:
        tail = _tail(config["model"], model)
        copies = 2 * act_shape[0]  # 2K
        generator = torch.Generator().manual_seed(2)
        chunk = torch.randn(ppe, *act_shape, generator=generator)

        @torch.no_grad()
        def floor_tail() -> Any:
            for start in range(0, copies, ppe):
                out = tail(chunk[: min(ppe, copies - start)])
            return out

        return floor_tail, nothing, {"copies": copies}

    if impl == OURS:
        from captum_fdcam import METHODS

        ours = METHODS[method](model, layer)
        kwargs = {} if ppe is None else {"perturbations_per_eval": ppe}

        def ours_call() -> Any:
            attr = ours.attribute(x, target=targets, relu_attributions=True, **kwargs)
            return LayerAttribution.interpolate(attr, size, "bilinear")[:, 0]

        return ours_call, nothing, {}

    name = PEERS[impl][method]
    if impl == "grad-cam":
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        grad_cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer])
        settings = {"batch_size_before": getattr(grad_cam, "batch_size", None)}
        # AblationCAM has a batch_size attribute (default 32); ScoreCAM reads one
        # when it exists (else 16).
        grad_cam.batch_size = ppe
        settings["batch_size"] = ppe
        cam_targets = [ClassifierOutputTarget(c) for c in targets]

        def grad_cam_call() -> Any:
            return grad_cam(input_tensor=x, targets=cam_targets)

        return grad_cam_call, grad_cam.activations_and_grads.release, settings

    if impl == "torchcam":
        import torchcam.methods

        torchcam_cam = getattr(torchcam.methods, name)(model, target_layer=layer, batch_size=ppe)

        def torchcam_call() -> Any:
            with torch.no_grad():
                model(x)
            maps = torchcam_cam(class_idx=targets)[0]
            return F.interpolate(maps.unsqueeze(1), size, mode="bilinear")[:, 0]

        return torchcam_call, torchcam_cam.remove_hooks, {"batch_size": torchcam_cam.bs}

    raise ValueError(f"unknown implementation {impl!r}")


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration: peak memory of the first call, then the timings."""
    import torch

    torch.set_num_threads(config["threads"])
    model, layer, x, targets = build(config["model"], 1)

    # Warm-up: one plain forward pass (thread pool, kernels), which also gives the
    # layer's activation shape.
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape[1:])))
    with torch.no_grad():
        model(x)
    handle.remove()

    call, release, settings = _make_call(config, model, layer, x, targets, shapes[0])

    # Count the rows (and calls) that go through model.forward during the first call.
    counts = {"calls": 0, "rows": 0}

    def count(module: Any, args: tuple[Any, ...]) -> None:
        counts["calls"] += 1
        counts["rows"] += int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0

    counter = model.register_forward_pre_hook(count)
    timed, caught = warnings_of_first_call(call, quiet=False)

    _, result = measure_calls(
        timed,
        config["repeats"],
        config["max_seconds"],
        min_repeats=min(config["repeats"], 1),
        on_first_call=counter.remove,
    )
    release()
    result.pop("extra")
    return result | {
        "s_per_image": result["median_s"],
        "threads": torch.get_num_threads(),
        "model_calls": counts["calls"],
        "model_rows": counts["rows"],
        "activation_shape": list(shapes[0]),
        "settings": settings,
        "warnings": caught[:3],
    }


# --------------------------------------------------------------------------- parent


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations in run order, per model: floors, FD-CAM, then the others."""
    configs = []
    for model in args.models:
        base = {"model": model, "threads": args.threads, "max_seconds": args.max_seconds}
        fast = base | {"repeats": args.repeats}
        once = base | {"repeats": 0}  # timed on the first call only
        configs += [
            fast | {"impl": FLOOR, "method": FLOOR_FB, "ppe": None},
            fast | {"impl": FLOOR, "method": FLOOR_TAIL, "ppe": FD_PPE},
            fast | {"impl": OURS, "method": "FD-CAM", "ppe": FD_PPE},
            fast | {"impl": OURS, "method": "XGrad-CAM", "ppe": None},
        ]
        configs += [
            fast | {"impl": OURS, "method": "FD-CAM", "ppe": p} for p in FD_PPE_SWEEP if p != FD_PPE
        ]
        configs += [
            fast | {"impl": OURS, "method": "Ablation-CAM", "ppe": ABLATION_PPE},
            once | {"impl": "grad-cam", "method": "Ablation-CAM", "ppe": ABLATION_PPE},
            once | {"impl": OURS, "method": "Score-CAM", "ppe": SCORE_PPE},
            once | {"impl": "grad-cam", "method": "Score-CAM", "ppe": SCORE_PPE},
            once | {"impl": "torchcam", "method": "Score-CAM", "ppe": SCORE_PPE},
            fast | {"impl": OURS, "method": "Group-CAM", "ppe": GROUP_PPE},
        ]
    return configs


def add_floor_sums(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inserts, after each model's two floor rows, the row of their sum (FD-CAM's floor)."""
    out = []
    for row in rows:
        out.append(row)
        if row["impl"] == FLOOR and row["method"] == FLOOR_TAIL:
            fb = find_row(rows, model=row["model"], impl=FLOOR, method=FLOOR_FB)
            if fb is not None and "s_per_image" in row:
                out.append(
                    {
                        "model": row["model"],
                        "impl": FLOOR,
                        "method": FLOOR_SUM,
                        "ppe": row["ppe"],
                        "s_per_image": fb["s_per_image"] + row["s_per_image"],
                        "derived": True,
                    }
                )
    return out


def _ratio(rows: list[dict[str, Any]], row: dict[str, Any], name: str, **match: Any) -> None:
    """Sets ``row["ratios"][name]`` to row's time / the time of the row matching ``match``."""
    other = find_row(rows, model=row["model"], **match)
    if other is not None:
        row.setdefault("ratios", {})[name] = row["s_per_image"] / other["s_per_image"]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Adds the ratios of the report to each row, as ``{name: value}`` in ``ratios``."""
    for row in rows:
        if "s_per_image" not in row:
            continue
        if row["impl"] == OURS and row["method"] == "FD-CAM":
            _ratio(rows, row, "/ floor (a)+(b)", impl=FLOOR, method=FLOOR_SUM)
            _ratio(rows, row, "/ our XGrad-CAM", impl=OURS, method="XGrad-CAM")
        elif row["impl"] == "grad-cam" and row["method"] == "Ablation-CAM":
            _ratio(rows, row, "/ our FD-CAM", impl=OURS, method="FD-CAM", ppe=FD_PPE)
            _ratio(rows, row, "/ our Ablation-CAM", impl=OURS, method="Ablation-CAM")
        elif row["impl"] not in (OURS, FLOOR):
            _ratio(rows, row, "/ ours", impl=OURS, method=row["method"])


def check_targets(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """The targets of the report, each with its value and whether it is met."""
    out = []
    for model in models:
        fd = find_row(rows, model=model, impl=OURS, method="FD-CAM", ppe=FD_PPE) or {}
        ablation = find_row(rows, model=model, impl="grad-cam", method="Ablation-CAM") or {}
        values = {
            "FD-CAM / floor": fd.get("ratios", {}).get("/ floor (a)+(b)"),
            "grad-cam AblationCAM / FD-CAM": ablation.get("ratios", {}).get("/ our FD-CAM"),
        }
        for quantity, op, bound in TARGETS[model]:
            value = values[quantity]
            met = None if value is None else (value <= bound if op == "<=" else value >= bound)
            out.append(
                {"model": model, "quantity": quantity, "target": f"{op} {bound:g}"}
                | {"value": value, "met": met}
            )
    return out


def _impl_cell(row: dict[str, Any]) -> str:
    if row["impl"] == FLOOR:
        label = {FLOOR_FB: "(a)", FLOOR_TAIL: "(b)", FLOOR_SUM: "(a) + (b)"}[row["method"]]
        return f"floor {label}"
    return f"**{OURS}**" if row["impl"] == OURS else row["impl"]


def _rows_cell(row: dict[str, Any]) -> str:
    if row.get("derived"):
        return "—"
    if row["impl"] == FLOOR and row["method"] == FLOOR_TAIL:
        return f"{row['settings']['copies']} (tail only)"
    calls = row["model_calls"]
    cell = f"{row['model_rows']} ({calls} call{'' if calls == 1 else 's'})"
    if row["impl"] == OURS and row["method"] in ("FD-CAM", "Ablation-CAM"):
        cell += "†"
    return cell


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | method | implementation | perturbations per eval | s / image | ratios "
        "| rows through model.forward | peak extra MiB | repeats | other CPU use |\n"
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        cells = [row["model"], row["method"], _impl_cell(row), fmt(row["ppe"], "d")]
        if "error" in row:
            cells += [f"error: {short_error(row['error'])}", "", "", "", "", ""]
        else:
            ratios = "; ".join(f"{k}: {v:.2f}" for k, v in row.get("ratios", {}).items())
            derived = row.get("derived", False)
            repeats = row.get("repeats")
            cells += [
                f"{row['s_per_image']:.3f}",
                ratios or "—",
                _rows_cell(row),
                "—" if derived else f"{row['peak_extra_mib']:.0f}",
                "—" if derived else ("1 (first call)" if repeats == 0 else str(repeats)),
                "—" if derived else fmt(row.get("foreign_cpu_share"), ".0%"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| model | quantity | value | target | met |", "|---|---|---:|---|---|"]
    for c in checks:
        met = "—" if c["met"] is None else ("yes" if c["met"] else "**no**")
        value = fmt(c["value"], ".2f")
        lines.append(f"| {c['model']} | {c['quantity']} | {value} | {c['target']} | {met} |")
    return "\n".join(lines) + "\n"


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | perturbations per eval | s / image | peak extra MiB "
        "| one chunk of copies (MiB) | all 2K copies (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fd_rows = [
        row
        for row in rows
        if row["impl"] == OURS and row["method"] == "FD-CAM" and "s_per_image" in row
    ]
    for row in sorted(fd_rows, key=lambda r: (r["model"], r["ppe"])):
        k, h, w = row["activation_shape"]
        copy_mib = k * h * w * 4 / 2**20
        lines.append(
            f"| {row['model']} | {row['ppe']} | {row['s_per_image']:.3f} "
            f"| {row['peak_extra_mib']:.0f} | {row['ppe'] * copy_mib:.1f} "
            f"| {2 * k * copy_mib:.0f} |"
        )
    return "\n".join(lines) + "\n"


def peer_settings(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        settings = row.get("settings") or {}
        if row["impl"] == "grad-cam" and "batch_size" in settings:
            before = settings.get("batch_size_before")
            had = (
                f"had `batch_size = {before}`"
                if before is not None
                else "had no `batch_size` attribute (it then uses 16)"
            )
            lines.append(
                f"- {row['model']}, grad-cam `{PEERS['grad-cam'][row['method']]}`: {had}; "
                f"set `cam.batch_size = {settings['batch_size']}`."
            )
        if row.get("warnings"):
            lines.append(
                f"- {row['model']} {row['method']} ({row['impl']}) warned: "
                + "; ".join(f"`{w}`" for w in row["warnings"])
            )
    return "\n".join(lines) + "\n" if lines else "- (none)\n"


def markdown_report(
    env: dict[str, Any],
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    total_s: float,
) -> str:
    return f"""# Perturbation CAMs: captum_fdcam against its floor, grad-cam and torchcam

{environment_lines(env, total_s)}

Models: torchvision `resnet18()` explained at `layer4`, `vgg16()` at `features[-1]` (the
last max-pool), random weights (`torch.manual_seed({MODEL_SEED})`), eval mode, one 224×224
random image (batch 1) and one random target class. Both layers have K = 512 channels of
7×7, so FD-CAM evaluates 2K = 1024 switched copies.

- **s / image**: median wall time of one call over `repeats` calls (batch 1). Every
  worker first runs one plain forward pass (warm-up of threads and kernels); the first
  call of the CAM is then the memory measurement and, where `repeats` is a number, the
  warm-up of the timed calls. "1 (first call)": slow configurations (grad-cam AblationCAM,
  every Score-CAM) are timed on that first call only. Each call produces the 224×224 map:
  ours include `LayerAttribution.interpolate(attr, (224, 224), "bilinear")`, torchcam's
  include the model's forward pass and the same upsampling; grad-cam's return upsampled
  maps. CAM objects are constructed outside the timed region.
- **floor (a)**: a bare `out = model(x); torch.autograd.grad(out[0, target], x)` with
  `x.requires_grad_()` (as in `gradient_cams.md`). **floor (b)**: the network after the
  layer, split by hand (ResNet-18: `fc(flatten(avgpool(a)))`; VGG-16:
  `classifier(flatten(avgpool(a)))`), over 2K = 1024 random copies of the activation's
  shape, in chunks of {FD_PPE} under `torch.no_grad()` (one random chunk evaluated 16
  times). **floor (a) + (b)**: their sum, FD-CAM's floor: one forward + backward pass,
  and the network after the layer on every switched copy.
- **perturbations per eval**: `perturbations_per_eval` of ours, `batch_size` of the
  peers (grad-cam: `cam.batch_size = P`; torchcam: `ScoreCAM(..., batch_size=P)`), the
  chunk size of floor (b).
- **ratios**: FD-CAM: time / floor (a)+(b), time / our XGrad-CAM (`LayerXGradCam`).
  grad-cam AblationCAM: its time / our FD-CAM (at {FD_PPE}), its time / our Ablation-CAM.
  Score-CAM peers: peer time / our time (> 1: we are faster).
- **rows through model.forward**: examples (and calls) that entered `model.forward`
  during the first call, counted by a forward pre-hook on the model. †: for our FD-CAM
  and Ablation-CAM, only the first call (1 row) runs the whole network; the others run
  only the network after the layer (the part before it is replayed from a cache), and
  the first switched batch carries one extra unswitched copy as a self-check. Identical
  copies and identical Score-CAM masks (e.g. of all-zero channels) are evaluated once.
- **peak extra MiB**: each configuration runs in a fresh process; peak resident set
  (VmHWM, reset through /proc/self/clear_refs) during the first call minus the resident
  set just before it.
- **other CPU use**: share of the machine's CPUs that other processes used during the
  timed repeats (from /proc/stat; "—" when timed on the first call, which starts only
  once the machine is quiet). Each configuration waits for a quiet machine first, and
  is measured again (up to `--retries` times) when this exceeds `--max-foreign`.

Score-CAM definitions differ, so there is no agreement column: ours (the paper) weights
channel k by the softmax probability of the masked input minus that of an all-zero
baseline input; grad-cam and torchcam take a softmax over the channels of the logits.

## Targets

{targets_table(checks)}
## All measurements

{markdown_table(rows)}
## FD-CAM's peak memory against `perturbations_per_eval`

One chunk of switched copies is `perturbations_per_eval` × K × h × w floats; all 2K
copies are never held at once, so memory grows with `perturbations_per_eval`, not K.

{memory_table(rows)}
## Peer settings and warnings

{peer_settings(rows)}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    add_run_arguments(
        parser,
        repeats=3,
        repeats_help="timed calls of the fast configurations",
        max_seconds=20.0,
        at_least="at least 1",
        quick_help="ResNet-18 only; writes perturbation_cams_quick.*",
    )
    add_measuring_arguments(parser, timeout_s=900.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.models = ["resnet18"]
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    env = environment(args, command)
    configs = build_configs(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, config in enumerate(configs, 1):
        result = measure(__file__, config, args)
        row = {k: config[k] for k in ("model", "impl", "method", "ppe")} | result
        rows.append(row)
        summary = (
            f"error: {row['error']}"
            if "error" in row
            else f"{row['s_per_image']:.3f} s/image ({row['repeats']} repeats), "
            f"peak +{row['peak_extra_mib']:.0f} MiB, {row['model_rows']} rows"
        )
        print(
            f"[{i:2d}/{len(configs)} {time.perf_counter() - start:6.0f} s] "
            f"{config['model']} {config['method']} {config['impl']} "
            f"ppe={config['ppe']}: {summary}",
            flush=True,
        )
    total_s = time.perf_counter() - start
    rows = add_floor_sums(rows)
    add_ratios(rows)
    checks = check_targets(rows, args.models)
    report = markdown_report(env, rows, checks, total_s)
    stem = "perturbation_cams_quick" if args.quick else "perturbation_cams"
    payload = {"environment": env, "total_s": total_s, "targets": checks, "results": rows}
    write_results(args.out, stem, payload, report)
    print()
    print(report)
    print(f"Total run time: {total_s / 60:.1f} min; results in {args.out}/{stem}.{{json,md}}")


if __name__ == "__main__":
    script_main(run_worker, main)
