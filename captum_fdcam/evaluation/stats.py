"""The statistics of the scores, apart from how they are written: the percentile
bootstrap, the merging of GridPG mosaic cells into mosaics, the per-method means with
their CIs, and the paired differences between methods.

Nothing here renders or writes: :mod:`captum_fdcam.evaluation.report` (means tables,
curve plots) and :mod:`captum_fdcam.evaluation.paired` (paired tables, sentences,
``paired.json`` / ``paired.md``) do, from what these functions return. A CI the bootstrap
cannot give (fewer than 2 units) is returned as ``[nan, nan]``; the renderers say so in
words.

numpy is imported inside the functions: the command line imports the evaluation
package at start-up and must not wait for numpy (or torch) to do so.

A paired row (:func:`paired`, and each row of :func:`paired_tables`)::

    {"method": ..., "reference": ..., "mean": ..., "ci95": [low, high], "n": ...,
     "wins": ..., "losses": ..., "ties": ...}

``mean`` is method - reference; a win is an item where the method is better in the
metric's direction (:mod:`captum_fdcam.evaluation.metric_info`).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from captum_fdcam.evaluation.metric_info import FLAGS, METRICS

if TYPE_CHECKING:
    import numpy as np

#: Bootstrap resamples of every paired CI, and the generator's seed (the same numbers
#: on every run and for every reader).
SAMPLES = 2000
SEED = 0
#: Resamples of the per-method CIs of the means tables (:func:`summarise`): fewer than
#: the paired CIs', which carry the claims; changing it would change every published
#: means table.
MEANS_SAMPLES = 1000
#: Fewest units for a claim: below it a percentile bootstrap interval is little more
#: than the range of the differences (at n = 3 there are 10 distinct resample means) and
#: covers far less than 95%, so it cannot carry a claim however far it is from 0.
MIN_CLAIM_N = 10
#: Cells of a GridPG mosaic: ``mosaic<i>-cell<j>``. The four cells share one mosaic's
#: images, so they are not independent: the mosaic is the unit of the statistics.
_MOSAIC_CELL = re.compile(r"(mosaic\d+)-cell\d+")
#: The reference of the FG-CAM input table: the base CAM at the input is not in that
#: table (FG-CAM's Table 5 compares with LRP, as this table does).
INPUT_REFERENCE = "LRP"
#: The pseudo-table of the paired tables that follows each method of the FG-CAM layer
#: tables (``fgcam-layers/<depth>``) back to its base CAM in FD-CAM's Table I: the same
#: photos and insertion / deletion protocol, at the deep layer (``head_activation``).
#: Does a CAM keep its faithfulness at a shallower layer? Rows name their methods
#: ``<method>@<depth>`` and ``<base CAM>@fdcam-table1``.
ACROSS_LAYERS = "fgcam-layers-vs-table1"
DEEP_TABLE = "fdcam-table1"

#: Per (table, method): metric -> unit -> score.
UnitScores = dict[tuple[str, str], dict[str, dict[str, float]]]


def bootstrap_ci(
    values: np.ndarray, samples: int = SAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``: ``samples``
    resamples with replacement drawn by ``numpy.random.default_rng(seed)``, all at once
    as a ``(samples, len(values))`` index array. ``(nan, nan)`` below 2 values, where
    every resample is the value itself and an interval would claim a certainty there
    is no evidence for."""
    import numpy as np

    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def unit_of(item: str) -> str:
    """The statistical unit of a record's item: the mosaic of a mosaic cell, else the
    item itself (an image)."""
    match = _MOSAIC_CELL.fullmatch(item)
    return match.group(1) if match else item


def partly_scored(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Per (table, method, mosaic) that the method has only some cells of (a run stopped
    part way): (distinct cells it has, cells of the fullest method), "fullest" being the
    method with the most distinct cells of that mosaic in that table."""
    have: dict[tuple[str, str, str], set[str]] = {}
    for r in records:
        unit = unit_of(r["item"])
        if unit != r["item"]:
            have.setdefault((r["table"], r["method"], unit), set()).add(r["item"])
    full: dict[tuple[str, str], int] = {}
    for (table, _, unit), items in have.items():
        full[(table, unit)] = max(full.get((table, unit), 0), len(items))
    return {
        key: (len(items), full[(key[0], key[2])])
        for key, items in have.items()
        if len(items) < full[(key[0], key[2])]
    }


def whole_mosaics(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without the cells of the mosaics in :func:`partly_scored`. Such a
    mosaic's mean over the cells it has is not its score, and pairing it with another
    method's mean over all cells would compare different things, so
    :func:`unit_scores` and :func:`per_unit` both start here; the renderers name what
    was set aside (:func:`set_aside_lines`)."""
    partial = partly_scored(records)
    return [r for r in records if (r["table"], r["method"], unit_of(r["item"])) not in partial]


#: How :func:`set_aside_lines` starts. It names no cause: a stopped run is the usual
#: one, but a cell a method failed on leaves the mosaic partly scored too.
SET_ASIDE = (
    "Left out as partly scored (fewer cells than another method has of the mosaic, "
    "as when a run stops part way through it): "
)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def set_aside_lines(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per table, a sentence naming the partly scored mosaics left out of its means and
    paired rows (none: the table is absent), so that a count lower than the cells on
    disk is said, not silent."""
    grouped: dict[tuple[str, str], list[str]] = {}
    # Numbers inside names sort as numbers, so that mosaic2 comes before mosaic10.
    keyed = sorted(
        partly_scored(records).items(),
        key=lambda kv: (kv[0][0], kv[0][1], _natural(kv[0][2])),
    )
    for (table, method, unit), (have, full) in keyed:
        grouped.setdefault((table, method), []).append(f"{unit} ({have} of {full} cells)")
    lines: dict[str, list[str]] = {}
    for (table, method), units in grouped.items():
        lines.setdefault(table, []).append(f"{method}: {', '.join(units)}")
    return {table: SET_ASIDE + "; ".join(parts) + "." for table, parts in lines.items()}


def unit_scores(records: list[dict[str, Any]]) -> UnitScores:
    """Per (table, method): metric -> unit -> score, with ``overall`` (insertion -
    deletion) where both are scored. A mosaic's score is the mean of its cells' scores;
    of records with the same table, method and item the first one counts."""
    cells: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for record in whole_mosaics(records):
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


def per_unit(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the cells of each GridPG mosaic (items ``mosaic<i>-cell<j>``)
    merged into one record per mosaic (item ``mosaic<i>``), each score the mean of the
    cells' (curves elementwise). A mosaic's four cells share its four images, so they
    are not independent draws: CIs over cells were too narrow. A mosaic that a method
    has only some cells of (a run stopped part way) is left out for that method. Other
    records are kept as they are, in their order."""
    merged: list[dict[str, Any]] = []
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in whole_mosaics(records):
        unit = unit_of(r["item"])
        if unit == r["item"]:
            merged.append(r)
            continue
        key = (r["table"], r["method"], unit)
        if key not in cells:
            cells[key] = []
            merged.append({"table": r["table"], "method": r["method"], "item": unit, "of": key})
        cells[key].append(r)
    for i, r in enumerate(merged):
        if "of" not in r:
            continue
        group = cells[r["of"]]
        scores: dict[str, Any] = {}
        for name in group[0]["scores"]:
            values = [c["scores"][name] for c in group if name in c["scores"]]
            if name.endswith("_curve"):
                length = min(len(v) for v in values)
                scores[name] = [sum(v[j] for v in values) / len(values) for j in range(length)]
            else:
                scores[name] = sum(values) / len(values)
        merged[i] = {**{k: r[k] for k in ("table", "method", "item")}, "scores": scores}
    return merged


def summarise(
    records: list[dict[str, Any]], samples: int = MEANS_SAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """Per table, method and metric: mean, 95% CI (:func:`bootstrap_ci`, ``samples``
    resamples) and count (of images; of mosaics for scores of GridPG mosaic cells, see
    :func:`per_unit`); the overall AUC too; per curve (``*_curve``) the elementwise mean,
    cut to the shortest curve."""
    import numpy as np

    records = per_unit(records)
    grouped: dict[tuple[str, str], dict[str, list[float]]] = {}
    curves: dict[tuple[str, str, str], list[list[float]]] = {}
    for r in records:
        slot = grouped.setdefault((r["table"], r["method"]), {})
        for key, value in r["scores"].items():
            if key.endswith("_curve"):
                curves.setdefault((r["table"], r["method"], key), []).append(value)
            else:
                slot.setdefault(key, []).append(value)
        if {"insertion", "deletion"} <= r["scores"].keys():
            slot.setdefault("overall", []).append(
                r["scores"]["insertion"] - r["scores"]["deletion"]
            )
    tables: dict[str, Any] = {}
    for (table, method), metrics in grouped.items():
        row = tables.setdefault(table, {}).setdefault(method, {})
        for key, values in metrics.items():
            array = np.asarray(values, dtype=np.float64)
            low, high = bootstrap_ci(array, samples, seed)
            row[key] = {"mean": float(array.mean()), "ci95": [low, high], "n": len(array)}
        for (t, m, key), items in curves.items():
            if t == table and m == method:
                length = min(len(c) for c in items)
                row[key] = np.mean([c[:length] for c in items], axis=0).tolist()
    return tables


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
    low, high = bootstrap_ci(diffs, samples, seed)
    return {
        "mean": float(diffs.mean()),
        "ci95": [low, high],
        "n": len(common),
        "wins": int((sign * diffs > 0).sum()),
        "losses": int((sign * diffs < 0).sum()),
        "ties": int((diffs == 0).sum()),
    }


def comparisons(table: str, methods: list[str]) -> list[tuple[str, str]]:
    """(method, reference) pairs compared in ``table``.

    * ``fdcam-ablation*``: each variant against FD-CAM.
    * ``fgcam-layers*``: each FG-CAM against its base CAM at the layer (FG-Grad-CAM(-D)
      against Grad-CAM, FG-Score-CAM(-D) against Score-CAM), each FG-CAM-D against its
      FG-CAM (what denoising changes), every method but Layer-CAM against Layer-CAM.
    * ``fgcam-input*``: every method against LRP (FG-CAM's Table 5 reference; the base
      CAM at the input is not in the table), each FG-CAM-D against its FG-CAM.
    * any other table (FD-CAM Table I, GridPG, the same at other layers): each method
      against Grad-CAM and against FD-CAM (so both FD-CAM - Grad-CAM and Grad-CAM -
      FD-CAM: each reference's list is whole).

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
    """Whether the row's CI lies wholly on one side of 0 (never for a missing CI)."""
    low, high = row["ci95"]
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)


def claimed(row: dict[str, Any]) -> bool:
    """Whether the row supports a claim: its CI excludes 0 at n >= MIN_CLAIM_N."""
    return row["n"] >= MIN_CLAIM_N and excludes_zero(row)
