"""Paired comparisons of the benchmark's scores in words and tables: per image (per
mosaic for the grid pointing game) the difference between a method and a reference
method on the items both have, its mean with a bootstrap 95% CI, and wins / losses /
ties in the metric's direction. The numbers are computed in
:mod:`captum_fdcam.evaluation.stats` (:func:`paired_tables`); this module writes them.

Two methods scored on the same images differ far less than their own CIs over images
suggest (the images' difficulty is shared), so a comparison is only read from the
paired differences; a claim is made only where the paired CI excludes 0
(:func:`sentence`).

``paired.json`` holds, per table and metric, one row per comparison::

    {"method": ..., "reference": ..., "mean": ..., "ci95": [low, high], "n": ...,
     "wins": ..., "losses": ..., "ties": ...}

``mean`` is method - reference; a win is an item where the method is better in the
metric's direction (:mod:`captum_fdcam.evaluation.metric_info`). ``paired.md`` shows
each pair of methods once (:func:`each_pair_once`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from captum_fdcam.evaluation.metric_info import METRICS
from captum_fdcam.evaluation.report import missing_ci
from captum_fdcam.evaluation.stats import (
    ACROSS_LAYERS,
    DEEP_TABLE,
    INPUT_REFERENCE,
    MIN_CLAIM_N,
    SAMPLES,
    SEED,
    UnitScores,
    across_layers,
    base_of,
    bootstrap_ci,
    claimed,
    comparisons,
    excludes_zero,
    flipped,
    paired,
    paired_tables,
    unit_of,
    unit_records,
    unit_scores,
)

# The statistics moved to captum_fdcam.evaluation.stats; the benchmarks, the results page
# and the tests import them from here, so they stay importable here.
__all__ = [
    "ACROSS_LAYERS",
    "DEEP_TABLE",
    "INPUT_REFERENCE",
    "METRIC_NAMES",
    "MIN_CLAIM_N",
    "SAMPLES",
    "SEED",
    "UnitScores",
    "across_layers",
    "base_of",
    "bootstrap_mean_ci",
    "bound",
    "claimed",
    "comparisons",
    "counts",
    "difference",
    "digits_for",
    "each_pair_once",
    "excludes_zero",
    "flipped",
    "interval",
    "markdown",
    "paired",
    "paired_tables",
    "sentence",
    "signed",
    "unit_of",
    "unit_records",
    "unit_scores",
    "write",
]

#: The paired CIs' bootstrap under its old name here (the same function, the same
#: defaults: :data:`SAMPLES` resamples, seed :data:`SEED`).
bootstrap_mean_ci = bootstrap_ci


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
    if math.isnan(low) or math.isnan(high):
        return f"{signed(row['mean'], digits)} {missing_ci(row['n'])}"
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


def each_pair_once(
    tables: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The tables without the rows B - A of a table that also has A - B (the first of
    the two in the table's order is kept). :func:`comparisons` pairs every method with
    each reference, so two references (Grad-CAM and FD-CAM) are also compared with each
    other both ways; B - A is A - B negated (the same resamples of the same units: CI
    mirrored to float rounding, wins and losses swapped) and says nothing more."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table, metrics in tables.items():
        kept: set[tuple[str, str]] = set()
        for rows in metrics.values():
            for r in rows:
                if (r["reference"], r["method"]) not in kept:
                    kept.add((r["method"], r["reference"]))
        out[table] = {
            metric: [r for r in rows if (r["method"], r["reference"]) in kept]
            for metric, rows in metrics.items()
        }
    return out


def write(out: Path, records: list[dict[str, Any]], header: str | None = None) -> dict[str, Any]:
    """Writes ``paired.json`` (every comparison of :func:`comparisons`, both ways where
    two references meet) and ``paired.md`` (each pair of methods once, see
    :func:`each_pair_once`) into ``out``; returns the tables of ``paired.json``."""
    tables = paired_tables(records)
    (out / "paired.json").write_text(json.dumps(tables, indent=1) + "\n")
    title = header or "# Paired differences per image (per mosaic for GridPG)"
    intro = (
        f"Each cell: method - reference on the items both have, mean [percentile "
        f"bootstrap 95% CI, {SAMPLES} resamples, seed {SEED}], then wins/losses/ties in "
        "the metric's direction. Each pair of methods is listed once: reference - method "
        "is the same row negated."
    )
    (out / "paired.md").write_text(f"{title}\n\n{intro}\n\n{markdown(each_pair_once(tables))}")
    return tables
