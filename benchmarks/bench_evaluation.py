"""Where the evaluation step's time goes: the metrics against the model's forward passes.

For N photos-sized inputs (224 x 224) and the offline EfficientNet-Lite0, times

(a) insertion, deletion, average drop and average increase through our metric classes,
    configured as the benchmark configures them (:func:`make_metric`), one call per
    image as :func:`captum_fdcam.evaluation.score` makes them, and
(b) plain ``model(x)`` forward passes (no grad) over exactly the batches (a) sent to the
    model: a forward hook records each batch size during (a), and (b) replays them.

The ratio (a) / (b) is the evaluation step's overhead over the model's own cost; issue
16 asks for at most 1.5. Results: ``benchmarks/results/evaluation.{json,md}``, with the
load average, since the 2 cores are shared::

    .venv/bin/python benchmarks/bench_evaluation.py --images 16 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_fdcam.evaluation.scoring import make_metric
from captum_fdcam.loading import offline_model

METRICS = ("insertion", "deletion", "average_drop", "average_increase")
RESULTS = Path(__file__).parent / "results"


def _inputs(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random normalised images, their predicted classes and smooth random maps."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    # CAM-like maps: a 7 x 7 grid upsampled, so the ranking has the usual structure.
    coarse = torch.from_numpy(rng.random((n, 1, 7, 7)).astype(np.float32))
    a = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").numpy()
    return x, np.zeros(n, dtype=np.int64), a


def _time_metrics(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray, batches: list[int]
) -> float:
    """Seconds of the four metrics on one image (1, C, H, W); ``batches`` gets the size
    of every batch they send to the model."""
    handle = model.register_forward_hook(lambda _m, inp, _o: batches.append(len(inp[0])))
    try:
        start = time.perf_counter()
        for name in METRICS:
            make_metric(name, x.shape[-1])(model, x, y, a_batch=a)
        return time.perf_counter() - start
    finally:
        handle.remove()


def _time_forward(model: torch.nn.Module, batches: list[int], size: int) -> float:
    x = torch.randn(max(batches), 3, size, size)
    start = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model(x[:b])
    return time.perf_counter() - start


def _measure(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray, repeats: int
) -> tuple[float, float, list[int]]:
    """Per image, (a) then (b) right after, best of ``repeats`` each: the shared cores'
    load changes by the minute, and measuring the two side by side keeps their ratio
    from following it. Returns the sums over the images and every batch size."""
    metrics_s = forward_s = 0.0
    all_batches: list[int] = []
    for i in range(len(x)):
        pairs = []
        for _ in range(repeats):
            batches: list[int] = []
            one = slice(i, i + 1)
            pairs.append((_time_metrics(model, x[one], y[one], a[one], batches), batches))
            pairs[-1] = (*pairs[-1], _time_forward(model, batches, x.shape[-1]))
        metrics_s += min(p[0] for p in pairs)
        forward_s += min(p[2] for p in pairs)
        all_batches += pairs[0][1]
    return metrics_s, forward_s, all_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many")
    parser.add_argument("--label", default="current", help="the row's name in the results")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = offline_model()
    x, y, a = _inputs(args.images, args.size)
    with torch.no_grad():  # the class each image is explained for: the model's own
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    _time_metrics(model, x[:1], y[:1], a[:1], [])  # warm-up
    metrics_s, forward_s, batches = _measure(model, x, y, a, args.repeats)
    row: dict[str, Any] = {
        "label": args.label,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "images": args.images,
        "size": args.size,
        "model_images": sum(batches),
        "batch_sizes": sorted(set(batches)),
        "forward_calls": len(batches),
        "metrics_s": round(metrics_s, 3),
        "forward_s": round(forward_s, 3),
        "ratio": round(metrics_s / forward_s, 3),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(row))
    if args.no_save:
        return
    path = RESULTS / "evaluation.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Evaluation step against the model's forward passes",
        "",
        "`benchmarks/bench_evaluation.py`: insertion + deletion + average drop + average "
        "increase (the benchmark's settings, one call per image) against plain `model(x)` "
        "over the same batches, measured image by image side by side (best of the "
        "repeats); EfficientNet-Lite0, CPU.",
        "",
        "| run | images | model images | forward calls | metrics (s) | forward (s) | ratio "
        "| load average | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['images']} @ {r['size']} | {r['model_images']} | "
            f"{r['forward_calls']} | {r['metrics_s']} | {r['forward_s']} | {r['ratio']} | "
            f"{' '.join(map(str, r['load_average']))} | {r['date']} |"
        )
    (RESULTS / "evaluation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
