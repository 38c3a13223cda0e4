"""How much of each CAM's map is a floor: the map's minimum over its maximum.

GridPG and Quantus's AttributionLocalisation score the *share* of a map's positive mass
inside the right cell, so a map that is positive everywhere scores near chance (0.25)
even when its maximum is in the right cell (PointingGame). This measures, per method at
a layer, the ratio min / max of the ReLU'd, upsampled map on the first N photos (by file
name) of a labelled folder, for the ground-truth class: 0 where the map has zeros, near 1
for a nearly flat map. Maps that are all zero are counted, not ratioed.

    python benchmarks/map_floor.py --data ../shared/data/imagenet-sample --limit 20

Writes ``benchmarks/results/map_floor.json`` and ``.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_fdcam.evaluation import explain, load_image, read_labels
from captum_fdcam.loading import DEPTHWISE_LAYER, offline_model
from captum_fdcam.registry import cam_names

ROOT = Path(__file__).resolve().parents[1]


def floors(data: Path, limit: int, layer: str, methods: list[str]) -> dict[str, Any]:
    """Per method: the median and 10th / 90th percentiles of min / max over the photos
    whose map is not all zero, and how many maps were all zero."""
    torch.manual_seed(0)
    model = offline_model()
    pairs = read_labels(data)[:limit]  # sorted by file name, as the benchmark's
    images = [(load_image(path, 224), label) for path, label in pairs]
    rows: dict[str, Any] = {}
    for method in methods:
        ratios, zero = [], 0
        for x, label in images:
            a = explain(model, x, [label], method=method, layer=layer)[0, 0]
            if a.max() > 0:
                ratios.append(float(a.min() / a.max()))
            else:
                zero += 1
        r = np.asarray(ratios)
        rows[method] = {
            "median": float(np.median(r)) if len(r) else None,
            "p10": float(np.percentile(r, 10)) if len(r) else None,
            "p90": float(np.percentile(r, 90)) if len(r) else None,
            "n": len(r),
            "all_zero": zero,
        }
        print(method, rows[method], flush=True)
    return {"data": data.name, "photos": len(images), "layer": layer, "methods": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Map floors at `{result['layer']}` ({result['photos']} photos of {result['data']})",
        "",
        "min / max of each ReLU'd, upsampled map (ground-truth class): 0 where the map has "
        "zeros, near 1 for a flat map; all-zero maps counted apart.",
        "",
        "| method | median min/max | 10th-90th percentile | maps ratioed | all-zero maps |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, row in result["methods"].items():
        if row["n"]:
            cells = f"{row['median']:.3f} | {row['p10']:.3f}-{row['p90']:.3f}"
        else:
            cells = "— | —"
        lines.append(f"| {method} | {cells} | {row['n']} | {row['all_zero']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled image folder")
    parser.add_argument("--limit", type=int, default=20, help="first N photos (default: 20)")
    parser.add_argument("--layer", default=DEPTHWISE_LAYER, help="(default: %(default)s)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in cam_names() if m != "Score-CAM"],
        help="(default: every CAM but Score-CAM)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="(default: %(default)s)"
    )
    args = parser.parse_args(argv)
    result = floors(args.data, args.limit, args.layer, args.methods)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "map_floor.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "map_floor.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
