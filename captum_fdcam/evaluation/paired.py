"""Paired statistics of the benchmark's scores: per image (per mosaic for the grid
pointing game) the difference between a method and a reference method on the items both
have, its mean with a bootstrap 95% CI, and wins / losses / ties in the metric's
direction.

Two methods scored on the same images differ far less than their own CIs over images
suggest (the images' difficulty is shared), so a comparison is only read from the
paired differences; a claim is made only where the paired CI excludes 0
(:func:`sentence`).

``paired.json`` holds, per table and metric, one row per comparison::

    {"method": ..., "reference": ..., "mean": ..., "ci95": [low, high], "n": ...,
     "wins": ..., "losses": ..., "ties": ...}

``mean`` is method - reference; a win is an item where the method is better in the
metric's direction (:mod:`captum_fdcam.evaluation.metric_info`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.evaluation.metric_info import FLAGS, METRICS

if TYPE_CHECKING:
    import numpy as np

#: Bootstrap resamples of every paired CI, and the generator's seed (the same numbers
#: on every run and for every reader).
SAMPLES = 2000
SEED = 0
#: Cells of a GridPG mosaic: ``mosaic<i>-cell<j>``. The four cells share one mosaic's
#: images, so they are not independent: the mosaic is the unit of the statistics.
_MOSAIC_CELL = re.compile(r"(mosaic\d+)-cell\d+")
#: The reference of the FG-CAM input table: the base CAM at the input is not in that
#: table (FG-CAM's Table 5 compares with LRP, as this table does).
INPUT_REFERENCE = "LRP"
#: The pseudo-table of ``paired.json`` that follows each method of the FG-CAM layer
#: tables (``fgcam-layers/<depth>``) back to its base CAM in FD-CAM's Table I: the same
#: photos and insertion / deletion protocol, at the deep layer (``head_activation``).
#: Does a CAM keep its faithfulness at a shallower layer? Rows name their methods
#: ``<method>@<depth>`` and ``<base CAM>@fdcam-table1``.
ACROSS_LAYERS = "fgcam-layers-vs-table1"
DEEP_TABLE = "fdcam-table1"


def unit_of(item: str) -> str:
    """The statistical unit of a record's item: the mosaic of a mosaic cell, else the
    item itself (an image)."""
    match = _MOSAIC_CELL.fullmatch(item)
    return match.group(1) if match else item


#: Per (table, method): metric -> unit -> score.
UnitScores = dict[tuple[str, str], dict[str, dict[str, float]]]


def unit_scores(records: list[dict[str, Any]]) -> UnitScores:
    """Per (table, method): metric -> unit -> score, with ``overall`` (insertion -
    deletion) where both are scored. A mosaic's score is the mean of its cells' scores;
    of records with the same table, method and item the first one counts."""
    cells: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for record in records:
        triple = (record["table"], record["method"], record["item"])
        if triple in seen:
            continue
        seen.add(triple)
        values = {
            k: float(v)
            for k, v in record["scores"].items()
            if not k.endswith("_curve") and k not in FLAGS and isinstance(v, int | float)
        }
        if "insertion" in values and "deletion" in values:
            values["overall"] = values["insertion"] - values["deletion"]
        slot = cells.setdefault(triple[:2], {})
        unit = unit_of(record["item"])
        for metric, value in values.items():
            slot.setdefault(metric, {}).setdefault(unit, []).append(value)
    return {
        key: {
            metric: {unit: sum(v) / len(v) for unit, v in units.items()}
            for metric, units in metrics.items()
        }
        for key, metrics in cells.items()
    }


def unit_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each mosaic's cells merged into one record per mosaic (scores
    averaged, curves dropped), for means and CIs over mosaics instead of cells."""
    merged: list[dict[str, Any]] = []
    for (table, method), metrics in unit_scores(records).items():
        units: dict[str, dict[str, float]] = {}
        for metric, values in metrics.items():
            if metric == "overall":  # summarise derives it again
                continue
            for unit, value in values.items():
                units.setdefault(unit, {})[metric] = value
        merged += [
            {"table": table, "method": method, "item": u, "scores": s} for u, s in units.items()
        ]
    return merged


def bootstrap_mean_ci(
    diffs: np.ndarray, samples: int = SAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``diffs`` (NaN below 2 values)."""
    import numpy as np

    if len(diffs) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (samples, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired(
    method: dict[str, float],
    reference: dict[str, float],
    better: str | None,
    samples: int = SAMPLES,
    seed: int = SEED,
) -> dict[str, Any] | None:
    """method - reference on the units both have (None if they share none): mean,
    bootstrap 95% CI, n, and wins / losses / ties (``better`` "higher" or "lower"; with
    None a "win" is a positive difference)."""
    import numpy as np

    common = sorted(method.keys() & reference.keys())
    if not common:
        return None
    diffs = np.array([method[u] - reference[u] for u in common], dtype=np.float64)
    sign = -1.0 if better == "lower" else 1.0
    low, high = bootstrap_mean_ci(diffs, samples, seed)
    return {
        "mean": float(diffs.mean()),
        "ci95": [low, high],
        "n": len(common),
        "wins": int((sign * diffs > 0).sum()),
        "losses": int((sign * diffs < 0).sum()),
        "ties": int((diffs == 0).sum()),
    }


def comparisons(table: str, methods: list[str]) -> list[tuple[str, str]]:
    """(method, reference) pairs the page reads for ``table``.

    * ``fdcam-ablation*``: each variant against FD-CAM.
    * ``fgcam-layers*``: each FG-CAM against its base CAM at the layer (FG-Grad-CAM(-D)
      against Grad-CAM, FG-Score-CAM(-D) against Score-CAM), each FG-CAM-D against its
      FG-CAM (what denoising changes), every method but Layer-CAM against Layer-CAM.
    * ``fgcam-input*``: every method against LRP (FG-CAM's Table 5 reference; the base
      CAM at the input is not in the table), each FG-CAM-D against its FG-CAM.
    * any other table (FD-CAM Table I, GridPG, the same at other layers): each method
      against Grad-CAM and against FD-CAM.

    References missing from ``methods`` are skipped.
    """
    present = set(methods)
    pairs: list[tuple[str, str]] = []

    def add(method: str, reference: str) -> None:
        if method != reference and reference in present and (method, reference) not in pairs:
            pairs.append((method, reference))

    fg = [m for m in methods if m.startswith("FG-")]
    if table.startswith("fdcam-ablation"):
        for m in methods:
            add(m, "FD-CAM")
    elif table.startswith("fgcam-layers"):
        for m in fg:
            add(m, base_of(m))
        for m in fg:
            if m.endswith("-D"):
                add(m, m.removesuffix("-D"))
        for m in methods:
            add(m, "Layer-CAM")
    elif table.startswith("fgcam-input"):
        for m in methods:
            add(m, INPUT_REFERENCE)
        for m in fg:
            if m.endswith("-D"):
                add(m, m.removesuffix("-D"))
    else:
        for reference in ("Grad-CAM", "FD-CAM"):
            for m in methods:
                add(m, reference)
    return pairs


def base_of(method: str) -> str:
    """The base CAM of an FG-CAM name (``FG-Score-CAM-D`` -> ``Score-CAM``), else the
    name itself."""
    return method.removeprefix("FG-").removesuffix("-D") if method.startswith("FG-") else method


def across_layers(
    scores: UnitScores, samples: int = SAMPLES, seed: int = SEED
) -> dict[str, list[dict[str, Any]]]:
    """Per metric (insertion, deletion, overall), each method of every
    ``fgcam-layers/<depth>`` table against its base CAM in :data:`DEEP_TABLE`, on the
    photos both have (see :data:`ACROSS_LAYERS`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    tables = sorted({t for t, _ in scores if t.startswith("fgcam-layers/")})
    for metric in ("insertion", "deletion", "overall"):
        better = METRICS[metric].better
        rows = []
        for table in tables:
            depth = table.partition("/")[2]
            for t, method in sorted(k for k in scores if k[0] == table):
                a = scores[(t, method)].get(metric)
                b = scores.get((DEEP_TABLE, base_of(method)), {}).get(metric)
                row = paired(a, b, better, samples, seed) if a and b else None
                if row is not None:
                    method_, reference = f"{method}@{depth}", f"{base_of(method)}@{DEEP_TABLE}"
                    rows.append({"method": method_, "reference": reference, **row})
        if rows:
            out[metric] = rows
    return out


def paired_tables(
    records: list[dict[str, Any]], samples: int = SAMPLES, seed: int = SEED
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per table and metric, the paired rows of :func:`comparisons` (tables and
    metrics sorted by name; rows in the order of the comparisons); then, where the
    FG-CAM layer tables and Table I were both run, :data:`ACROSS_LAYERS`
    (:func:`across_layers`)."""
    scores = unit_scores(records)
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table in sorted({t for t, _ in scores}):
        methods = sorted(m for t, m in scores if t == table)
        metrics = sorted({k for (t, _), s in scores.items() if t == table for k in s})
        for metric in metrics:
            info = METRICS.get(metric)
            better = info.better if info else None
            rows = []
            for method, reference in comparisons(table, methods):
                a = scores[(table, method)].get(metric)
                b = scores[(table, reference)].get(metric)
                if a is None or b is None:
                    continue
                row = paired(a, b, better, samples, seed)
                if row is not None:
                    rows.append({"method": method, "reference": reference, **row})
            if rows:
                tables.setdefault(table, {})[metric] = rows
    across = across_layers(scores, samples, seed)
    if across:
        tables[ACROSS_LAYERS] = across
    return tables


def flipped(row: dict[str, Any]) -> dict[str, Any]:
    """The same comparison read from the reference's side (reference - method)."""
    low, high = row["ci95"]
    return {
        **row,
        "method": row["reference"],
        "reference": row["method"],
        "mean": -row["mean"],
        "ci95": [-high, -low],
        "wins": row["losses"],
        "losses": row["wins"],
    }


def excludes_zero(row: dict[str, Any]) -> bool:
    low, high = row["ci95"]
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)


def signed(value: float, digits: int) -> str:
    """``+0.012`` / ``-0.012``; a value that rounds to zero prints as ``+0.000``."""
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def bound(value: float, digits: int) -> str:
    """A CI bound: as :func:`signed`, with up to 3 more decimals where a non-zero bound
    would print as ``+0.000``: the sign of a bound near 0 is what decides a claim, so the
    page must not show ``[-0.013, +0.000]`` for an interval that excludes 0."""
    for extra in range(4):
        text = signed(value, digits + extra)
        if value == 0 or float(text) != 0:
            return text
    return f"{value:+.0e}"  # far below the table's precision: its sign and magnitude


def digits_for(metric: str) -> int:
    """Decimals of a metric's numbers: 1 for percentages (0-100), else 3."""
    return 1 if metric in ("average_drop", "average_increase") else 3


def interval(row: dict[str, Any], digits: int) -> str:
    """``+0.012 [+0.004, +0.020]``: the mean difference and its 95% CI."""
    low, high = row["ci95"]
    if math.isnan(low):
        return f"{signed(row['mean'], digits)} [no CI at n = {row['n']}]"
    return f"{signed(row['mean'], digits)} [{bound(low, digits)}, {bound(high, digits)}]"


def _count(n: int, word: str, plural: str) -> str:
    return f"{n} {word if n == 1 else plural}"


def counts(row: dict[str, Any]) -> str:
    """``12 wins / 1 loss, 1 tie``."""
    ties = f", {_count(row['ties'], 'tie', 'ties')}" if row["ties"] else ""
    wins, losses = _count(row["wins"], "win", "wins"), _count(row["losses"], "loss", "losses")
    return f"{wins} / {losses}{ties}"


#: How sentences name a metric.
METRIC_NAMES = {
    "insertion": "insertion AUC",
    "deletion": "deletion AUC",
    "overall": "overall AUC",
    "average_drop": "average drop",
    "average_increase": "average increase",
    "gridpg": "GridPG score",
}


#: Fewest units for a claim: below it a percentile bootstrap interval is little more
#: than the range of the differences (at n = 3 there are 10 distinct resample means) and
#: covers far less than 95%, so it cannot carry a claim however far it is from 0.
MIN_CLAIM_N = 10


def claimed(row: dict[str, Any]) -> bool:
    """Whether the row supports a claim: its CI excludes 0 at n >= MIN_CLAIM_N."""
    return row["n"] >= MIN_CLAIM_N and excludes_zero(row)


def sentence(row: dict[str, Any], metric: str) -> str:
    """One comparison in words. A difference is claimed (with its sign) only where the
    paired CI excludes 0 (and n >= MIN_CLAIM_N); otherwise "not shown either way at
    n = N". Methods equal on every item are said to be."""
    name = METRIC_NAMES.get(metric, metric)
    digits = digits_for(metric)
    # An ablation's name holds a comma ("FD-CAM, no grouping"): quoted, so that the
    # possessive and the sentence's own commas read unambiguously.
    method, reference = (f'"{n}"' if "," in n else n for n in (row["method"], row["reference"]))
    evidence = f"{interval(row, digits)} (n = {row['n']}, {counts(row)})"
    if row["ties"] == row["n"]:
        return f"{method} and {reference} have the same {name} on all {row['n']} items."
    if claimed(row):
        direction = "higher" if row["mean"] > 0 else "lower"
        return f"{method}'s {name} is {direction} than {reference}'s by {evidence}."
    few = " (too few for a bootstrap CI)" if row["n"] < MIN_CLAIM_N else ""
    return (
        f"A difference in {name} between {method} and {reference} is not shown either way "
        f"at n = {row['n']}{few}: {evidence}."
    )


def difference(row: dict[str, Any], metric: str, method: str, reference: str) -> str:
    """A comparison whose sides need longer names than :func:`sentence`'s possessives
    allow (``FG-Grad-CAM at `_blocks.10```): "<metric>, <method> - <reference>: <mean>
    [<CI>] (n, wins / losses): <verdict>", the verdict claimed only as :func:`sentence`
    claims it."""
    name = METRIC_NAMES.get(metric, metric)
    evidence = f"{interval(row, digits_for(metric))} (n = {row['n']}, {counts(row)})"
    if row["ties"] == row["n"]:
        verdict = f"the same on all {row['n']} items"
    elif claimed(row):
        verdict = f"{method} is {'higher' if row['mean'] > 0 else 'lower'}"
    else:
        verdict = f"a difference is not shown either way at n = {row['n']}"
    return f"{name}, {method} - {reference}: {evidence}: {verdict}"


def markdown(tables: dict[str, dict[str, list[dict[str, Any]]]], level: int = 2) -> str:
    """The paired tables: per table a row per comparison and a column per metric, each
    cell the mean difference [95% CI] and wins/losses/ties; the metric's direction
    says what a win is."""
    lines: list[str] = []
    for table, metrics in tables.items():
        names = list(metrics)
        pairs = list(
            dict.fromkeys((r["method"], r["reference"]) for rows in metrics.values() for r in rows)
        )
        lines += [f"{'#' * level} {table}: paired differences", ""]
        header = " | ".join(
            f"{m} ({METRICS[m].better} is better)" if m in METRICS else m for m in names
        )
        lines += [f"| method - reference | n | {header} |", "|---|---:|" + "---|" * len(names)]
        for method, reference in pairs:
            cells = []
            n = 0
            for metric in names:
                row = next(
                    (
                        r
                        for r in metrics[metric]
                        if (r["method"], r["reference"]) == (method, reference)
                    ),
                    None,
                )
                if row is None:
                    cells.append("—")
                    continue
                n = max(n, row["n"])
                mark = "**" if claimed(row) else ""
                w, l_, t = row["wins"], row["losses"], row["ties"]
                cells.append(f"{mark}{interval(row, digits_for(metric))}{mark} {w}/{l_}/{t}")
            lines.append(f"| {method} - {reference} | {n} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Mean paired difference [bootstrap 95% CI] wins/losses/ties; bold where the CI "
            f"excludes 0 at n >= {MIN_CLAIM_N}."
            + (" Units are mosaics (each the mean of its 4 cells)." if _mosaics(metrics) else ""),
            "",
        ]
    return "\n".join(lines)


def _mosaics(metrics: dict[str, list[dict[str, Any]]]) -> bool:
    return "gridpg" in metrics


def write(out: Path, records: list[dict[str, Any]], header: str | None = None) -> dict[str, Any]:
    """Writes ``paired.json`` and ``paired.md`` into ``out``; returns the tables."""
    tables = paired_tables(records)
    (out / "paired.json").write_text(json.dumps(tables, indent=1) + "\n")
    title = header or "# Paired differences per image (per mosaic for GridPG)"
    intro = (
        f"Each cell: method - reference on the items both have, mean [percentile "
        f"bootstrap 95% CI, {SAMPLES} resamples, seed {SEED}], then wins/losses/ties in "
        "the metric's direction."
    )
    (out / "paired.md").write_text(f"{title}\n\n{intro}\n\n{markdown(tables)}")
    return tables
