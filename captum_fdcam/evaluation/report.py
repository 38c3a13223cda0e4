"""Rendering of the means tables: markdown tables that say each metric's direction and
unit, each cell a mean with its bootstrap 95% CI, and the mean insertion/deletion curves
as plots. The statistics (:func:`summarise`, :func:`bootstrap_ci`, :func:`per_unit`) are
computed in :mod:`captum_fdcam.evaluation.stats` and importable from here too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from captum_fdcam.evaluation.metric_info import FLAGS, legend, mosaic_metrics
from captum_fdcam.evaluation.stats import bootstrap_ci, per_unit, summarise

__all__ = [
    "bootstrap_ci",
    "format_cell",
    "markdown",
    "missing_ci",
    "per_unit",
    "plot_curves",
    "summarise",
]


def _count(row: dict[str, Any]) -> int:
    return max(c["n"] for k, c in row.items() if not k.endswith("_curve"))


def missing_ci(n: int) -> str:
    """What a table prints in place of a CI the bootstrap cannot give (``n`` < 2 units):
    ``[no CI at n = 1]``, in the means tables and the paired ones alike."""
    return f"[no CI at n = {n}]"


def format_cell(metric: str, cell: dict[str, Any], n: int, digits: int = 4) -> str:
    """A table cell: the mean with its bootstrap 95% CI (:func:`missing_ci` where there
    is none), or for a flag (``constant_map``) how many of the row's ``n`` items carry
    it."""
    if metric in FLAGS:
        return f"{cell['n']} of {n}"
    low, high = cell["ci95"]
    if math.isnan(low) or math.isnan(high):
        return f"{cell['mean']:.{digits}f} {missing_ci(cell['n'])}"
    return f"{cell['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(tables: dict[str, Any], header: str, set_aside: dict[str, str] | None = None) -> str:
    """The tables as markdown under ``header``: first what each metric measures (which
    direction is better, its unit), then per table a row per method, each cell the
    mean over images with its bootstrap 95% CI, and ``set_aside[table]`` (what the
    means leave out, :func:`~captum_fdcam.evaluation.stats.set_aside_lines`) under it."""
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
        if set_aside and table in set_aside:
            lines += [set_aside[table], ""]
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
