"""Summaries of scores: means with bootstrap confidence intervals, markdown tables that
say each metric's direction and unit, and the mean insertion/deletion curves as plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.evaluation.metric_info import FLAGS, legend, mosaic_metrics

if TYPE_CHECKING:
    import numpy as np


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    import numpy as np

    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def per_unit(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the cells of each GridPG mosaic (items ``mosaic<i>-cell<j>``)
    merged into one record per mosaic (item ``mosaic<i>``), each score the mean of the
    cells' (curves elementwise). A mosaic's four cells share its four images, so they
    are not independent draws: CIs over cells were too narrow. Other records are kept
    as they are, in their order."""
    from captum_fdcam.evaluation.paired import unit_of

    merged: list[dict[str, Any]] = []
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
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


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per table, method and metric: mean, 95% CI and count (of images; of mosaics for
    scores of GridPG mosaic cells, see :func:`per_unit`); the overall AUC too."""
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
            low, high = bootstrap_ci(array)
            row[key] = {"mean": float(array.mean()), "ci95": [low, high], "n": len(array)}
        for (t, m, key), items in curves.items():
            if t == table and m == method:
                length = min(len(c) for c in items)
                row[key] = np.mean([c[:length] for c in items], axis=0).tolist()
    return tables


def _count(row: dict[str, Any]) -> int:
    return max(c["n"] for k, c in row.items() if not k.endswith("_curve"))


def format_cell(metric: str, cell: dict[str, Any], n: int, digits: int = 4) -> str:
    """A table cell: the mean with its bootstrap 95% CI, or for a flag (``constant_map``)
    how many of the row's ``n`` items carry it."""
    if metric in FLAGS:
        return f"{cell['n']} of {n}"
    low, high = cell["ci95"]
    return f"{cell['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(tables: dict[str, Any], header: str) -> str:
    """The tables as markdown under ``header``: first what each metric measures (which
    direction is better, its unit), then per table a row per method, each cell the
    mean over images with its bootstrap 95% CI."""
    lines = [header, ""]
    names = [
        k
        for rows in tables.values()
        for row in rows.values()
        for k in row
        if not k.endswith("_curve")
    ]
    described = legend(list(dict.fromkeys(names)))
    if described:
        lines += ["Metrics (direction and unit):", "", *described, ""]
    for table, rows in tables.items():
        # Every row's metrics: a flag (constant_map) may be missing from the first row.
        keys = list(
            dict.fromkeys(k for row in rows.values() for k in row if not k.endswith("_curve"))
        )
        lines += [f"## {table}", "", "| method | " + " | ".join(keys) + " |"]
        lines.append("|---|" + "---:|" * len(keys))
        for method, row in rows.items():
            cells = []
            for k in keys:
                cell = row.get(k)
                if cell is None:
                    cells.append(f"0 of {_count(row)}" if k in FLAGS else "—")
                else:
                    cells.append(format_cell(k, cell, _count(row)))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        counts = {m: _count(r) for m, r in rows.items()}
        n = max(counts.values())
        fewer = [f"{m}: {c}" for m, c in counts.items() if c < n]
        note = f"; fewer images for {', '.join(fewer)}" if fewer else ""
        on_mosaics = bool(set(keys) & set(mosaic_metrics()))
        unit = " mosaics, each the mean of its 4 cells" if on_mosaics else ""
        lines += ["", f"n = {n}{unit}{note} (mean [bootstrap 95% CI])", ""]
    return "\n".join(lines)


def plot_curves(tables: dict[str, Any], out: Path) -> list[Path]:
    """Writes each table's mean insertion and deletion curves, one PNG per table and kind."""
    from captum_fdcam.visualization import curves_figure

    written = []
    for table, rows in tables.items():
        for kind in ("insertion", "deletion"):
            series = {m: r[f"{kind}_curve"] for m, r in rows.items() if f"{kind}_curve" in r}
            if series:
                path = out / f"{table.replace('/', '_')}_{kind}.png"
                xlabel = f"fraction of pixels {'inserted' if kind == 'insertion' else 'deleted'}"
                written.append(curves_figure(series, path, xlabel, title=f"{table}: {kind}"))
    return written
