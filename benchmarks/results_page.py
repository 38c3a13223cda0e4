"""Writes docs/results.md, paired.json and paired.md from a folder of benchmark scores,
computing nothing but statistics (no model is loaded).

::

    python benchmarks/results_page.py benchmarks/results/paper_tables
    python benchmarks/results_page.py RUN_OUT --page docs/results.md

Every number of the page comes from the scores (means with bootstrap CIs, paired
differences per image or per mosaic, with win counts) or from :data:`PAPER`, the papers'
numbers checked against their texts. A sentence claims a difference only where the
paired CI excludes 0 (:func:`captum_fdcam.evaluation.paired.sentence`). The prose here
is only what the numbers cannot say: the protocol, the model, the layer, the caveats.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captum_fdcam.benchmark import BASE_LAYER, DEPTHS, DW_LAYER, MANIFEST
from captum_fdcam.evaluation import paired, stats
from captum_fdcam.evaluation.metric_info import (
    FLAGS,
    QUANTUS_FAITHFULNESS,
    QUANTUS_LOCALISATION,
    mosaic_metrics,
)
from captum_fdcam.evaluation.report import format_cell
from captum_fdcam.evaluation.stats import summarise
from captum_fdcam.records import identity, read_scores

ROOT = Path(__file__).resolve().parents[1]
#: Metrics scored on GridPG mosaic cells: their tables' units are mosaics.
MOSAIC_METRICS = mosaic_metrics()

#: The papers' numbers the page quotes, each checked against the paper's text in
#: ../shared/papers/ (fd-cam-paper.txt, fg-cam-paper.txt). Keyed by paper table, then
#: row (method), then column. The FG-CAM text has its tables without captions; they are
#: numbered by their order and by the text that cites them (Table 1: "in Layer13,
#: FG-Grad-CAM achieves 19.65 A.D. and 32.35 A.I."; Table 2: "0.42958 and 0.25348
#: higher than Grad-CAM and Score-CAM" = 0.49374 - 0.06416 and 0.46796 - 0.21448;
#: Table 5: "0.0672 higher than LRP" = 0.52089 - 0.45369).
PAPER: dict[str, dict[str, dict[str, Any]]] = {
    # FD-CAM Table I (VGG16, 2,000 ILSVRC2015 val images): Insertion / Deletion / Overall.
    "FD-CAM Table I": {
        "Grad-CAM": {"insertion": 0.5357, "deletion": 0.1117, "overall": 0.4240},
        "Grad-CAM++": {"insertion": 0.5321, "deletion": 0.1088, "overall": 0.4233},
        "XGrad-CAM": {"insertion": 0.5464, "deletion": 0.1072, "overall": 0.4392},
        "Score-CAM": {"insertion": 0.5422, "deletion": 0.1059, "overall": 0.4363},
        "Ablation-CAM": {"insertion": 0.5502, "deletion": 0.1013, "overall": 0.4489},
        "Layer-CAM": {"insertion": 0.5389, "deletion": 0.1021, "overall": 0.4368},
        "Group-CAM": {"insertion": 0.5397, "deletion": 0.0921, "overall": 0.4476},
        "FD-CAM": {"insertion": 0.5534, "deletion": 0.1001, "overall": 0.4533},
    },
    # FD-CAM Table II (VOC2007 val, pointing game with boxes): row Acc(%). Group-CAM
    # is not in that table.
    "FD-CAM Table II": {
        "Grad-CAM": {"acc": 81.20},
        "Grad-CAM++": {"acc": 81.91},
        "XGrad-CAM": {"acc": 80.72},
        "Layer-CAM": {"acc": 81.77},
        "Score-CAM": {"acc": 78.46},
        "Ablation-CAM": {"acc": 58.19},
        "FD-CAM": {"acc": 83.70},
    },
    # FD-CAM Table III (grouped channel switching) and Table IV (weight combination):
    # Insertion / Deletion / Overall; rows FD-CAM_{ng+off}, FD-CAM_{g+off}, and
    # rho = a s, rho = a e^s, rho = a e^(s - 0.5) (= FD-CAM).
    "FD-CAM Tables III and IV": {
        "FD-CAM": {"insertion": 0.5534, "deletion": 0.1001, "overall": 0.4533},
        "no grouping, switch-off only (Table III, FD-CAM_ng+off)": {
            "insertion": 0.5260,
            "deletion": 0.1084,
            "overall": 0.4176,
        },
        "grouping, switch-off only (Table III, FD-CAM_g+off)": {
            "insertion": 0.5396,
            "deletion": 0.1020,
            "overall": 0.4376,
        },
        "rho = a s (Table IV)": {"insertion": 0.5465, "deletion": 0.1048, "overall": 0.4417},
        "rho = a exp(s) (Table IV)": {"insertion": 0.5437, "deletion": 0.1044, "overall": 0.4393},
    },
    # FG-CAM Table 1 (VGG16-BN): A.D. / A.I. at Layer33, Layer23, Layer13.
    "FG-CAM Table 1": {
        "Grad-CAM": {"Layer33": (44.53, 18.85), "Layer23": (72.89, 5.10), "Layer13": (83.80, 3.25)},
        "FG-Grad-CAM": {
            "Layer33": (18.69, 34.90),
            "Layer23": (19.55, 33.45),
            "Layer13": (19.65, 32.35),
        },
        "FG-Grad-CAM-D": {
            "Layer33": (18.00, 33.85),
            "Layer23": (17.75, 33.55),
            "Layer13": (17.90, 34.00),
        },
        "Score-CAM": {
            "Layer33": (32.63, 21.60),
            "Layer23": (51.24, 13.80),
            "Layer13": (57.06, 12.00),
        },
        "FG-Score-CAM": {
            "Layer33": (21.13, 29.15),
            "Layer23": (22.63, 27.15),
            "Layer13": (23.50, 25.85),
        },
        "FG-Score-CAM-D": {
            "Layer33": (19.19, 31.70),
            "Layer23": (18.99, 32.00),
            "Layer13": (19.24, 30.50),
        },
        "Layer-CAM": {
            "Layer33": (24.25, 26.80),
            "Layer23": (27.32, 24.50),
            "Layer13": (30.76, 24.40),
        },
    },
    # FG-CAM Table 2 (VGG16-BN): row "Over-all" at Layer33, Layer23, Layer13.
    "FG-CAM Table 2": {
        "Grad-CAM": {"Layer33": 0.28528, "Layer23": 0.10920, "Layer13": 0.06416},
        "FG-Grad-CAM": {"Layer33": 0.50574, "Layer23": 0.49758, "Layer13": 0.49374},
        "FG-Grad-CAM-D": {"Layer33": 0.49139, "Layer23": 0.48870, "Layer13": 0.48555},
        "Score-CAM": {"Layer33": 0.39440, "Layer23": 0.25480, "Layer13": 0.21448},
        "FG-Score-CAM": {"Layer33": 0.48006, "Layer23": 0.47225, "Layer13": 0.46796},
        "FG-Score-CAM-D": {"Layer33": 0.48518, "Layer23": 0.48273, "Layer13": 0.47906},
        "Layer-CAM": {"Layer33": 0.46569, "Layer23": 0.44763, "Layer13": 0.42879},
    },
    # FG-CAM Table 4 (input layer, A.D. / A.I.) and Table 5 (Insertion / Deletion /
    # Over-all); columns LRP, CLRP, SGLRP, FG-Grad-CAM, FG-Grad-CAMD, FG-Score-CAM,
    # FG-Score-CAMD.
    "FG-CAM Tables 4 and 5": {
        "LRP": {"average_drop": 25.48, "average_increase": 25.00, "insertion": 0.55344,
                "deletion": 0.09975, "overall": 0.45369},
        "CLRP": {"average_drop": 30.64, "average_increase": 24.15, "insertion": 0.56740,
                 "deletion": 0.19168, "overall": 0.37572},
        "SGLRP": {"average_drop": 40.62, "average_increase": 21.75, "insertion": 0.51655,
                  "deletion": 0.22315, "overall": 0.29340},
        "FG-Grad-CAM": {"average_drop": 16.81, "average_increase": 36.45, "insertion": 0.60757,
                        "deletion": 0.08668, "overall": 0.52089},
        "FG-Grad-CAM-D": {"average_drop": 16.13, "average_increase": 36.55,
                          "insertion": 0.61386, "deletion": 0.11271, "overall": 0.50115},
        "FG-Score-CAM": {"average_drop": 20.28, "average_increase": 30.15,
                         "insertion": 0.58608, "deletion": 0.08980, "overall": 0.49628},
        "FG-Score-CAM-D": {"average_drop": 16.84, "average_increase": 31.80,
                           "insertion": 0.60566, "deletion": 0.11143, "overall": 0.49423},
    },
}  # fmt: skip

#: Per table (by the start of its name): the section's title, the hand-written text the
#: numbers cannot give (protocol, caveats), and the metrics whose comparisons are
#: written out as sentences (all metrics are in the paired table).
SECTIONS: list[tuple[str, str, str, tuple[str, ...]]] = [
    (
        "fdcam-table1",
        "FD-CAM Table I: insertion / deletion / overall AUC",
        "Deletion replaces pixels with zeros of the normalised input, insertion starts from "
        "a blurred copy (kernel 11, sigma 5), the most important pixels first, {steps}. "
        "Overall is insertion - deletion of each image.",
        ("overall",),
    ),
    (
        "fdcam-ablation",
        "FD-CAM Tables III and IV: ablations",
        "Each variant against the full FD-CAM (groups of 5% of the channels, switch on + "
        "off, w = a exp(s) - 0.5). At `head_activation` the logit is linear in the layer's "
        "activations, so FD-CAM's score s_k (both switches) is the switch-off score plus "
        'half the bias, which the min-max of the scores removes: "switch-off only" gives '
        "FD-CAM's maps to float rounding there (tested in tests/test_perturbation_cams.py), "
        "and what the switches change can only be asked at the depthwise layer.",
        ("overall",),
    ),
    (
        "gridpg",
        "Discriminability: grid pointing game",
        "Share of each cell class's positive attribution inside its cell of a 2x2 mosaic "
        "of confidently classified images (0.25 = chance). The unit of the statistics is "
        "the mosaic: a mosaic's score is the mean of its 4 cells, which share its images "
        "and are not independent. FD-CAM's Table II is a pointing game with boxes on "
        "VOC2007 and VGG16: a different metric, data and model.",
        ("gridpg",),
    ),
    (
        "fgcam-layers",
        "FG-CAM Tables 1 and 2: three depths",
        "EfficientNet-Lite0's `_blocks.2`, `_blocks.4` and `_blocks.10` (56, 28 and 14 "
        "pixels at 224x224) stand in for VGG16-BN's Layer13/23/33. Grad-CAM, Score-CAM and "
        "Layer-CAM are applied at the layer; FG-CAM explains from `head_activation` down "
        "to it. Average drop / increase keep the most important half of the pixels and "
        "blur the rest (kernel 51, sigma 50). Each FG-CAM is compared with its base CAM "
        "at the layer, with its version without denoising, and with Layer-CAM.",
        ("average_drop", "overall"),
    ),
    (
        "fgcam-input",
        "FG-CAM Tables 4 and 5: at the input",
        "Average drop and increase at the input keep only positive pixels when fewer than "
        "half of the pixels are positive (the paper's setting for signed maps). The base "
        "CAMs have no map at the input, so every method is compared with LRP (the "
        "reference of FG-CAM's Table 5), and each FG-CAM-D with its FG-CAM.",
        ("average_drop", "overall"),
    ),
    (
        "quantus-faithfulness",
        "Report card: Quantus's faithfulness metrics",
        "Quantus's own FaithfulnessCorrelation, PixelFlipping and ROAD on the photos, "
        "configured in `captum_fdcam/evaluation/report_card.py`; each method against "
        "Grad-CAM and against FD-CAM.",
        QUANTUS_FAITHFULNESS,
    ),
    (
        "quantus-localisation",
        "Report card: Quantus's localisation metrics",
        "Quantus's PointingGame, AttributionLocalisation, TopKIntersection and "
        "RelevanceRankAccuracy on the GridPG mosaics, the explained image's cell being "
        "the mask; the unit is the mosaic (the mean of its 4 cells).",
        QUANTUS_LOCALISATION,
    ),
]

#: What each table suffix's layer is (the tables without a suffix are at BASE_LAYER).
LAYER_TEXT = {
    "depthwise": f"At `{DW_LAYER}` (1152 x 7 x 7 at 224x224, non-negative), followed by "
    "the projection, the head convolution and its ReLU6: a non-linear network, so "
    "Grad-CAM's and XGrad-CAM's weights need not be equal, nor FD-CAM's switch-on and "
    "switch-off scores differ by a constant. This is the layer where the FD-CAM paper's "
    "question can be asked.",
}

INTRO = """\
# Results beside the papers' numbers

<!-- Generated by benchmarks/results_page.py from {folder}: edit the generator, not this
page. -->

Produced by `python -m captum_fdcam.benchmark` (see [evaluation.md](evaluation.md)) on
the first images (by file name) of `../shared/data/imagenet-sample` with the offline
EfficientNet-Lite0, the ground-truth class as target, 224x224, and written by
`python benchmarks/results_page.py {folder}` from the scores in `{folder}` (per-image
scores, `tables.md`, `paired.md` and `paired.json`). Sizes: {sizes}.

The papers used VGG16 (FD-CAM) and VGG16-BN (FG-CAM) on ILSVRC val, which cannot be
downloaded here: their numbers are shown for reference, not as a target for ours.

**How to read the comparisons.** Two methods scored on the same images share each
image's difficulty, so methods are compared by their paired differences: per image (per
mosaic for GridPG) method - reference, the mean with a percentile bootstrap 95% CI
({samples} resamples, seed {seed}) and the wins / losses / ties in the metric's
direction. A sentence claims a difference only where that CI excludes 0 and n is at
least {min_n}; otherwise it says "not shown either way at n = ...". The per-method
intervals in the means tables are over images and overlap far more than the paired ones.

**Constant maps.** A map that is constant (all zero after the ReLU: no positive
evidence at that layer) cannot rank pixels; it is scored with the pixels in index order,
and the means tables count such images in their `constant_map` column ("k of n").

**The layer.** The CAM tables without a layer suffix explain `head_activation` (1280 x 7
x 7), after which
EfficientNet-Lite0 has only global average pooling and one linear layer: the gradient is
the same at every position, so XGrad-CAM's weights equal Grad-CAM's exactly, and FD-CAM's
switch-on score is its switch-off score plus the bias. FD-CAM's question (does combining
gradient and score weights help?) needs a layer followed by a non-linear network, as
VGG16's fully connected head is; at this layer it cannot be asked.
"""


def _means_table(rows: dict[str, Any]) -> list[str]:
    metrics = list(
        dict.fromkeys(k for row in rows.values() for k in row if not k.endswith("_curve"))
    )
    lines = [
        "| method | n | " + " | ".join(paired.METRIC_NAMES.get(m, m) for m in metrics) + " |",
        "|---|---:|" + "---:|" * len(metrics),
    ]
    for method, row in sorted(rows.items()):
        n = _row_n(row)
        cells = []
        for m in metrics:
            cell = row.get(m)
            if cell is None:
                cells.append(f"0 of {n}" if m in FLAGS else "—")
                continue
            digits = 1 if paired.digits_for(m) == 1 else 4
            cells.append(format_cell(m, cell, n, digits))
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return lines


def _row_n(row: dict[str, Any]) -> int:
    return max(c["n"] for k, c in row.items() if not k.endswith("_curve"))


def _on_mosaics(rows: dict[str, Any]) -> bool:
    """Whether a table's rows are scored on GridPG mosaics (its unit is the mosaic)."""
    return any(k in MOSAIC_METRICS for row in rows.values() for k in row)


def _fewer_units(rows: dict[str, Any]) -> list[str]:
    """A line naming the rows scored on fewer units than the table's others (a costly
    method run on the first photos only): their means are over other photos than the
    rest, so only their paired differences, on the photos both have, compare them."""
    ns = {method: _row_n(row) for method, row in rows.items()}
    most = max(ns.values())
    fewer = {m: n for m, n in sorted(ns.items()) if n < most}
    if not fewer:
        return []
    named = ", ".join(f"{m} (n = {n})" for m, n in fewer.items())
    return [
        f"Scored on fewer units than the other rows (n = {most}): {named}. Their means "
        "are over other units than the other rows' and are not comparable with them; "
        "their paired differences below are on the units both methods have.",
        "",
    ]


def _paper_lines(prefix: str) -> list[str]:
    """The papers' numbers for a section, as tables (from PAPER only)."""
    if prefix == "fdcam-table1":
        table = PAPER["FD-CAM Table I"]
        lines = ["FD-CAM Table I (VGG16, 2,000 ILSVRC2015 val images):", ""]
        lines += ["| method | insertion | deletion | overall |", "|---|---:|---:|---:|"]
        lines += [
            f"| {m} | {v['insertion']:.4f} | {v['deletion']:.4f} | {v['overall']:.4f} |"
            for m, v in table.items()
        ]
        return lines
    if prefix == "fdcam-ablation":
        table = PAPER["FD-CAM Tables III and IV"]
        lines = ["FD-CAM Tables III and IV (VGG16):", ""]
        lines += ["| variant | insertion | deletion | overall |", "|---|---:|---:|---:|"]
        lines += [
            f"| {m} | {v['insertion']:.4f} | {v['deletion']:.4f} | {v['overall']:.4f} |"
            for m, v in table.items()
        ]
        lines += [
            "",
            'The paper\'s Table III has no "no grouping" row with both switches: its '
            "no-grouping row is switch-off only.",
        ]
        return lines
    if prefix == "gridpg":
        table = PAPER["FD-CAM Table II"]
        lines = ["FD-CAM Table II (pointing game with boxes, VOC2007 val, VGG16), Acc(%):", ""]
        lines += ["| " + " | ".join(table) + " |", "|" + "---:|" * len(table)]
        lines.append("| " + " | ".join(f"{v['acc']:.2f}" for v in table.values()) + " |")
        return lines
    if prefix == "fgcam-layers":
        one, two = PAPER["FG-CAM Table 1"], PAPER["FG-CAM Table 2"]
        layers = ("Layer33", "Layer23", "Layer13")
        lines = [
            "FG-CAM Tables 1 and 2 (VGG16-BN): A.D. / A.I. (Table 1) and overall AUC "
            "(Table 2) per layer:",
            "",
            "| method | " + " | ".join(layers) + " |",
            "|---|" + "---:|" * len(layers),
        ]
        for m in one:
            cells = [
                f"{one[m][layer][0]:.2f} / {one[m][layer][1]:.2f} / {two[m][layer]:.5f}"
                for layer in layers
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return lines
    if prefix == "fgcam-input":
        table = PAPER["FG-CAM Tables 4 and 5"]
        keys = ("average_drop", "average_increase", "insertion", "deletion", "overall")
        lines = ["FG-CAM Tables 4 and 5 (VGG16-BN, at the input):", ""]
        lines += ["| method | A.D. | A.I. | insertion | deletion | overall |"]
        lines += ["|---|" + "---:|" * len(keys)]
        for m, v in table.items():
            cells = [f"{v[k]:.2f}" if k.startswith("average") else f"{v[k]:.5f}" for k in keys]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return lines
    return []


def _section(table: str) -> tuple[str, str, str, tuple[str, ...]]:
    for prefix, title, text, headline in SECTIONS:
        if table == prefix or table.startswith(prefix + "/") or table.startswith(prefix + "@"):
            suffix = table[len(prefix) :].lstrip("/@")
            return prefix, title + (f" ({suffix})" if suffix else ""), text, headline
    return "", table, "", ()


def _section_order(table: str) -> tuple[int, str]:
    """Tables in the order of SECTIONS (the papers' order), then by name."""
    order = [prefix for prefix, *_ in SECTIONS]
    prefix = _section(table)[0]
    return (order.index(prefix) if prefix in order else len(order), table)


def _steps(folder: Path, records: list[dict[str, Any]]) -> str:
    """The insertion/deletion protocol the folder's scores were computed with, from its
    run.json (the run's fingerprint names the protocol) and the curves' length."""
    steps = next(
        (
            len(r["scores"]["deletion_curve"]) - 1
            for r in records
            if "deletion_curve" in r["scores"]
        ),
        None,
    )
    count = f"{steps} steps" if steps else "in steps"
    try:
        protocol = json.loads((folder / MANIFEST).read_text())["fingerprint"].get("protocol")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        protocol = None
    if protocol == "8rows":
        return (
            f"{count} of 8 rows of pixels each (1792 = 224 x 8 pixels at 224x224, 3.57% of "
            "the area, where the paper says \"a rate of 3.6% of the original image's area at "
            'each step"), the AUC the trapezoid over the share of pixels moved'
        )
    return (
        f"{count} of 3.6% of the pixels rounded (1806 at 224x224, not 224 x 8 = 1792, "
        "which would give 28 equal steps), the AUC weighing the short last step like the "
        "others (the scores' run.json names no protocol: computed before issue 16's "
        "protocol)"
    )


def _figures(folder: Path, page: Path, table: str) -> list[str]:
    lines = []
    for kind in ("insertion", "deletion"):
        png = folder / f"{table.replace('/', '_')}_{kind}.png"
        if not png.is_file():
            continue
        rel = Path(os.path.relpath(png.resolve(), page.resolve().parent)).as_posix()
        lines += [
            f"```{{figure}} {rel}",
            f":alt: Mean {kind} curves of the methods of {table}",
            ":width: 48%",
            "",
            f"{table}: mean {kind} curve (class probability against the fraction of pixels "
            f"{'inserted' if kind == 'insertion' else 'deleted'}).",
            "```",
            "",
        ]
    return lines


def _find(rows: list[dict[str, Any]], method: str, reference: str) -> dict[str, Any] | None:
    """The row method - reference, or reference - method read from the other side."""
    for row in rows:
        if (row["method"], row["reference"]) == (method, reference):
            return row
    for row in rows:
        if (row["method"], row["reference"]) == (reference, method):
            return stats.flipped(row)
    return None


def _constant_maps(rows: dict[str, Any], row: dict[str, Any]) -> str:
    """What a paired row's reader must know about constant maps: how many of each side's
    maps were constant (all zero after the ReLU, scored with pixels in index order); in
    a mosaic table, on how many mosaics one cell's map or more was."""
    unit = "mosaics (one cell or more)" if _on_mosaics(rows) else "images"
    notes = []
    for method in (row["method"], row["reference"]):
        flags = rows.get(method, {})
        counted = [flags[f]["n"] for f in FLAGS if f in flags]
        if counted:
            total = _row_n(flags)
            notes.append(f"{method}'s map was constant on {sum(counted)} of {total} {unit}")
    if not notes:
        return ""
    return (
        f"; {'; '.join(notes)} (all zero after the ReLU: no positive evidence at this "
        "layer; scored with the pixels in index order)"
    )


def _headlines(
    tables: dict[str, dict[str, list[dict[str, Any]]]], means: dict[str, Any]
) -> list[str]:
    """The issue's questions, each answered by its paired row: does FD-CAM beat Grad-CAM
    and Ablation-CAM (overall AUC, GridPG) at each layer; what each ablated part of
    FD-CAM changes (overall AUC against the full FD-CAM); does FG-CAM keep its
    faithfulness at shallow layers (against its base CAM and Layer-CAM). A side whose
    maps were constant on some images says so."""
    answers = []
    for table in sorted(tables, key=_section_order):
        metrics, prefix = tables[table], _section(table)[0]
        if prefix in ("fdcam-table1", "gridpg"):
            metric = "overall" if prefix == "fdcam-table1" else "gridpg"
            for reference in ("Grad-CAM", "Ablation-CAM"):
                row = _find(metrics.get(metric, []), "FD-CAM", reference)
                if row is not None:
                    note = _constant_maps(means.get(table, {}), row)
                    text = paired.sentence(row, metric)
                    answers.append(f"`{table}`: {text.removesuffix('.')}{note}.")
        elif prefix == "fdcam-ablation":
            # What each of FD-CAM's parts (grouping, switch-on, the combination) adds.
            for row in metrics.get("overall", []):
                if row["reference"] == "FD-CAM":
                    answers.append(f"`{table}`: {paired.sentence(row, 'overall')}")
        elif prefix == "fgcam-layers":
            # FG-CAM without denoising, on the overall AUC (the rest in the sections).
            for row in metrics.get("overall", []):
                method = row["method"]
                if method.startswith("FG-") and not method.endswith("-D"):
                    if row["reference"] in (stats.base_of(method), "Layer-CAM"):
                        note = _constant_maps(means.get(table, {}), row)
                        text = paired.sentence(row, "overall").removesuffix(".")
                        answers.append(f"`{table}`: {text}{note}.")
    answers += _across_headlines(tables.get(stats.ACROSS_LAYERS, {}))
    return answers


def _across_label(name: str) -> str:
    """``FG-Grad-CAM@depth-14`` -> ``FG-Grad-CAM at `_blocks.10```; ``...@fdcam-table1``
    -> ``... at `head_activation` (Table I)``."""
    method, _, where = name.partition("@")
    if where == stats.DEEP_TABLE:
        return f"{method} at `{BASE_LAYER}` (Table I)"
    return f"{method} at `{DEPTHS.get(where, where)}`"


def _across_headlines(metrics: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Does FG-CAM keep its faithfulness at shallow layers: each FG-CAM (no denoising) at
    each depth against its base CAM at the deep layer, and the base CAM itself at the
    depth, on the overall AUC."""
    overall = metrics.get("overall", [])
    answers = []
    for row in overall:
        method, where = row["method"].split("@")
        if not method.startswith("FG-") or method.endswith("-D"):
            continue
        base = f"{stats.base_of(method)}@{where}"
        for shown in (row, *(r for r in overall if r["method"] == base)):
            label, reference = _across_label(shown["method"]), _across_label(shown["reference"])
            text = paired.difference(shown, "overall", label, reference)
            answers.append(f"`fgcam-layers/{where}` against Table I: {text}.")
    return answers


def _across_section(metrics: dict[str, list[dict[str, Any]]]) -> list[str]:
    """FG-CAM across layers: every method of the layer tables against its base CAM in
    Table I, in words and as a paired table."""
    lines = [
        "## FG-CAM across layers: against the base CAM at the deep layer",
        "",
        "Does a CAM keep its faithfulness at a shallower layer? Each method of the FG-CAM "
        f"layer tables against its base CAM at `{BASE_LAYER}` in FD-CAM's Table I (the "
        "same photos and the same insertion / deletion protocol), per photo. The FG-CAM "
        'paper compares FG-CAM with Grad-CAM, Score-CAM and Layer-CAM "to verify that '
        "FG-CAM does not significantly reduce the faithfulness of explanation as the "
        'target layer becomes shallower, as is the case with CAM-based methods", and '
        'reads its Table 2 as "as the target layer becomes progressively shallower, the '
        "scores of Score-CAM and Grad-CAM decrease significantly, while FG-CAM is barely "
        'affected" (its Experiments section; its numbers compare layers on per-layer '
        "means, not paired per image).",
        "",
    ]
    lines += [
        "- "
        + paired.difference(
            row, "overall", _across_label(row["method"]), _across_label(row["reference"])
        )
        + "."
        for row in metrics.get("overall", [])
    ]
    lines += ["", paired.markdown({stats.ACROSS_LAYERS: metrics}, level=3)]
    return lines


#: The headline questions, each a paired comparison: (question, table without its layer
#: suffix, metric, method, reference). Asked of every model and layer the scores have.
_FD, _GC, _ALL = "FD-CAM", "Grad-CAM", "overall"
QUESTIONS = (
    ("FD-CAM - Grad-CAM, overall AUC", "fdcam-table1", _ALL, _FD, _GC),
    ("FD-CAM - Ablation-CAM, overall AUC", "fdcam-table1", _ALL, _FD, "Ablation-CAM"),
    # FD-CAM's Table I ranks it above Score-CAM too (.4533 against .4363 overall).
    ("FD-CAM - Score-CAM, overall AUC", "fdcam-table1", _ALL, _FD, "Score-CAM"),
    ("FD-CAM - Grad-CAM, GridPG", "gridpg", "gridpg", _FD, _GC),
    *(
        (f"{v.removeprefix('FD-CAM, ')} - FD-CAM, overall AUC", "fdcam-ablation", _ALL, v, _FD)
        for v in (
            "FD-CAM, no grouping",
            "FD-CAM, switch-off only",
            "FD-CAM, rho = a s",
            "FD-CAM, rho = a exp(s)",
        )
    ),
    *(
        (f"FG-Grad-CAM - Grad-CAM at {d}, overall AUC", f"fgcam-layers/{d}", _ALL, f"FG-{_GC}", _GC)
        for d in ("depth-56", "depth-28", "depth-14")
    ),
)
#: The layers of a table: its name without a suffix is at the head, "/depthwise" at the
#: last block's depthwise activation; the FG-CAM tables have one layer each.
LAYER_SUFFIXES = {"head": "", "depthwise": "/depthwise"}


def _verdict(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no scores"
    if not stats.claimed(row):
        return f"not shown either way (n = {row['n']})"
    return f"{'higher' if row['mean'] > 0 else 'lower'} (n = {row['n']})"


def run_line(title: str, folder: Path) -> str:
    """How a model's scores were computed, from its folder's run.json: the folder, the
    image size and the inference (``--fast-cpu`` or the default)."""
    try:
        fingerprint = json.loads((folder / MANIFEST).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return f"- {title}: `{_shown(folder)}` (no run.json)"
    size = fingerprint.get("image_size")
    how = (
        "`--fast-cpu` (channels-last, the metrics' passes on the inference copy: "
        "scores equal the default's up to float rounding)"
        if fingerprint.get("inference") == "fast-cpu"
        else "the default inference"
    )
    return f"- {title}: `{_shown(folder)}`, {size}x{size} px, {how}"


def _shown(folder: Path) -> str:
    try:
        return folder.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return folder.as_posix()


def across_models(
    models: dict[str, dict[str, dict[str, list[dict[str, Any]]]]],
    runs: Sequence[str] = (),
) -> list[str]:
    """The headline questions on every model: a table to read in a minute (one line per
    question, one column per model and layer), then one row per model and layer with
    the paired difference, its CI and the verdict. ``models``: a model's title -> its
    paired tables (:func:`captum_fdcam.evaluation.stats.paired_tables`); ``runs``: one
    line per model saying how its scores were computed (:func:`run_line`)."""
    columns = [(m, layer) for m in models for layer in LAYER_SUFFIXES]
    glance = [
        "| question | " + " | ".join(f"{m}, {layer}" for m, layer in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    detail = [
        "| question | model | layer | difference [95% CI] | n | verdict |",
        "|---|---|---|---|---:|---|",
    ]
    for question, prefix, metric, method, reference in QUESTIONS:
        cells = []
        for model, layer in columns:
            if prefix.startswith("fgcam-layers") and layer != "head":
                cells.append("—")  # FG-CAM's depths are their own layers
                continue
            table = prefix + LAYER_SUFFIXES[layer]
            row = _find(models[model].get(table, {}).get(metric, []), method, reference)
            cells.append(_verdict(row))
            if row is not None:
                digits = paired.digits_for(metric)
                where = prefix.split("/")[1] if prefix.startswith("fgcam-layers") else layer
                detail.append(
                    f"| {question} | {model} | {where} | {paired.interval(row, digits)} "
                    f"| {row['n']} | {_verdict(row).split(' (')[0]} |"
                )
        glance.append(f"| {question} | " + " | ".join(cells) + " |")
    return [
        "## The answers across models",
        "",
        "Each cell: the sign of the paired per-image difference (method - reference) where "
        f'its bootstrap 95% CI excludes 0 at n >= {stats.MIN_CLAIM_N}, else "not shown '
        'either way"; "no scores": that model\'s folder has none for the question yet. '
        "The FG-CAM rows are at their own depths (strides 4, 8, 16) over the head's CAM.",
        "",
        *([*runs, ""] if runs else []),
        *glance,
        "",
        "Per model and layer:",
        "",
        *detail,
        "",
    ]


def page(
    folder: Path,
    records: list[dict[str, Any]],
    tables: dict[str, dict[str, list[dict[str, Any]]]],
    page_path: Path,
    shown: str | None = None,
    others: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] | None = None,
    runs: Sequence[str] = (),
) -> str:
    """The results page: the intro, the answers across models (when ``others``, the
    paired tables of other models by title, are given), then per table its text, the
    papers' numbers, the means with CIs, the sentences and the paired table."""
    means = summarise(records)  # per mosaic for mosaic cells, as tables.md
    set_aside = stats.set_aside_lines(records)
    names = sorted(means, key=_section_order)

    def size(t: str) -> str:
        n = max(_row_n(row) for row in means[t].values())
        return f"{t} n = {n}" + (" mosaics" if _on_mosaics(means[t]) else "")

    lines = [
        INTRO.format(
            folder=shown or folder.as_posix(),
            sizes="; ".join(size(t) for t in names),
            samples=stats.SAMPLES,
            seed=stats.SEED,
            min_n=stats.MIN_CLAIM_N,
        )
    ]
    if others:
        lines += across_models({"EfficientNet-Lite0": tables, **others}, runs)
    answers = _headlines(tables, means)
    if answers:
        lines += ["## Headline answers", ""]
        lines += [f"- {a}" for a in answers]
        lines.append("")
    papers_shown: set[str] = set()
    for table in names:
        prefix, title, text, headline = _section(table)
        lines += [f"## {title}", ""]
        if text:
            lines += [text.format(steps=_steps(folder, records)), ""]
        suffix = table[len(prefix) :].lstrip("/@") if prefix else ""
        if suffix in LAYER_TEXT:
            lines += [LAYER_TEXT[suffix], ""]
        if prefix and prefix not in papers_shown:
            papers_shown.add(prefix)
            quoted = _paper_lines(prefix)
            if quoted:
                lines += [*quoted, ""]
        lines += ["Here (mean [bootstrap 95% CI over the units]):", ""]
        lines += [*_means_table(means[table]), ""]
        lines += _fewer_units(means[table])
        if table in set_aside:
            lines += [set_aside[table], ""]
        lines += _figures(folder, page_path, table)
        rows = tables.get(table, {})
        sentences = [
            paired.sentence(row, metric)
            for metric in (headline or tuple(rows))
            for row in rows.get(metric, [])
        ]
        if sentences:
            lines += ["Paired comparisons:", ""]
            lines += [f"- {s}" for s in sentences]
            lines.append("")
        if rows:
            lines += [paired.markdown({table: rows}, level=3)]
        last_layer_table = [t for t in names if _section(t)[0] == "fgcam-layers"][-1:]
        if [table] == last_layer_table and stats.ACROSS_LAYERS in tables:
            lines += _across_section(tables[stats.ACROSS_LAYERS])
    return "\n".join(lines).rstrip() + "\n"


def _paired_of(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The paired tables of another model's folder (nothing is written there)."""
    records = sorted(
        read_scores(folder).records,
        key=lambda r: (r["table"], r["method"], r["item"], identity(r.get("key"))),
    )
    return stats.paired_tables(records)


def generate(
    folder: Path, page_path: Path, others: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Writes FOLDER/paired.json, FOLDER/paired.md and the page; returns the paired
    tables. ``others``: other models' folders by title, for the answers across models."""
    records = sorted(
        read_scores(folder).records,
        key=lambda r: (r["table"], r["method"], r["item"], identity(r.get("key"))),
    )
    if not records:
        raise SystemExit(f"no scores in {folder}")
    tables = paired.write(folder, records)
    other_tables = {title: _paired_of(path) for title, path in (others or {}).items()}
    runs = [run_line("EfficientNet-Lite0", folder)] + [
        run_line(title, path) for title, path in (others or {}).items()
    ]
    page_path.write_text(
        page(folder, records, tables, page_path, _shown(folder), other_tables, runs)
    )
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a benchmark --out folder (scores-rank*.jsonl)")
    parser.add_argument(
        "--page", type=Path, default=ROOT / "docs" / "results.md", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="TITLE=FOLDER",
        help="another model's benchmark folder, for the answers across models "
        "(EfficientNet-Lite1=benchmarks/results/paper_tables_lite1); repeat for each",
    )
    args = parser.parse_args(argv)
    others = dict(item.split("=", 1) for item in args.model)
    tables = generate(args.folder, args.page, {t: Path(f) for t, f in others.items()})
    print(f"wrote {args.folder / 'paired.json'}, {args.folder / 'paired.md'}, {args.page}")
    print(json.dumps({t: list(m) for t, m in tables.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
