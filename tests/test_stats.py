"""The statistics of the scores (evaluation/stats.py): the one bootstrap against a loop
written here, the means tables' CIs through it, and the old modules' names for it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from captum_fdcam import evaluation
from captum_fdcam.evaluation import paired, report, stats


def _naive_ci(values: list[float], samples: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap by plain loops: the same generator, seed and index
    draws (one (samples, n) array), each resample's mean summed by hand."""
    n = len(values)
    indices = np.random.default_rng(seed).integers(0, n, (samples, n))
    means = []
    for row in indices:
        total = 0.0
        for i in row:
            total += values[i]
        means.append(total / n)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize(("n", "samples", "seed"), [(2, 500, 0), (7, 1000, 3), (40, 2000, 0)])
def test_the_bootstrap_matches_a_naive_loop(n: int, samples: int, seed: int) -> None:
    values = np.random.default_rng(n).normal(0.4, 0.2, n)
    got = stats.bootstrap_ci(values, samples=samples, seed=seed)
    want = _naive_ci(values.tolist(), samples, seed)
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] <= values.mean() <= got[1]


def test_the_bootstrap_defaults_are_the_paired_ones_and_below_two_values_it_gives_none() -> None:
    values = np.random.default_rng(5).uniform(0, 1, 15)
    assert stats.bootstrap_ci(values) == pytest.approx(
        _naive_ci(values.tolist(), stats.SAMPLES, stats.SEED), abs=1e-12
    )
    for few in (np.array([0.3]), np.array([], dtype=np.float64)):
        low, high = stats.bootstrap_ci(few)
        assert np.isnan(low) and np.isnan(high)


def test_one_bootstrap_under_every_old_name() -> None:
    """report.bootstrap_ci (the means tables') and paired.bootstrap_mean_ci (the paired
    rows') were two copies of one computation; both names are now the one function."""
    assert report.bootstrap_ci is stats.bootstrap_ci
    assert paired.bootstrap_mean_ci is stats.bootstrap_ci
    assert evaluation.bootstrap_ci is stats.bootstrap_ci


def test_the_old_modules_still_export_the_statistics() -> None:
    for name in ("per_unit", "summarise"):
        assert getattr(report, name) is getattr(stats, name)
    assert evaluation.summarise is stats.summarise
    moved = [
        "ACROSS_LAYERS", "DEEP_TABLE", "INPUT_REFERENCE", "MIN_CLAIM_N", "SAMPLES", "SEED",
        "across_layers", "base_of", "claimed", "comparisons", "excludes_zero", "flipped",
        "paired", "paired_tables", "unit_of", "unit_records", "unit_scores",
    ]  # fmt: skip
    for name in moved:
        assert getattr(paired, name) is getattr(stats, name), name


def test_importing_the_statistics_imports_neither_numpy_nor_torch() -> None:
    """The command line imports the evaluation package at start-up."""
    code = (
        "import sys\n"
        "import captum_fdcam.evaluation.stats, captum_fdcam.evaluation.report\n"
        "import captum_fdcam.evaluation.paired\n"
        "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _record(table: str, method: str, item: str, **scores: Any) -> dict[str, Any]:
    return {"table": table, "method": method, "item": item, "scores": scores}


def test_summarise_cis_are_the_bootstrap_with_the_means_tables_resamples() -> None:
    values = [0.31, 0.47, 0.52, 0.18, 0.66, 0.4]
    records = [_record("t", "A", f"img{i}", insertion=v) for i, v in enumerate(values)]
    cell = stats.summarise(records)["t"]["A"]["insertion"]
    assert cell["n"] == len(values) and cell["mean"] == pytest.approx(np.mean(values))
    assert cell["ci95"] == pytest.approx(
        list(_naive_ci(values, stats.MEANS_SAMPLES, stats.SEED)), abs=1e-12
    )
    other = stats.summarise(records, samples=300, seed=2)["t"]["A"]["insertion"]
    assert other["ci95"] == pytest.approx(list(_naive_ci(values, 300, 2)), abs=1e-12)


def test_a_single_unit_has_no_ci_in_the_statistics() -> None:
    """The statistics return NaN for the CI of one unit; the renderers say so in words."""
    records = [
        _record("t", "A", "img0", insertion=0.5, deletion=0.1),
        _record("t", "Grad-CAM", "img0", insertion=0.4, deletion=0.1),
    ]
    cell = stats.summarise(records)["t"]["A"]["insertion"]
    assert cell["n"] == 1 and all(np.isnan(cell["ci95"]))
    (row,) = stats.paired_tables(records)["t"]["overall"]
    assert row["n"] == 1 and all(np.isnan(row["ci95"]))
    assert not stats.excludes_zero(row) and not stats.claimed(row)


def _partly_scored_mosaics() -> list[dict[str, Any]]:
    """GridPG cells of two mosaics: A has all 4 cells of both; B, a run stopped part way,
    has 2 of mosaic1's. Cell c of mosaic m scores 0.1 m + 0.01 c, +0.5 for B."""
    records = []
    for method, n_cells in (("A", (4, 4)), ("B", (4, 2))):
        for m, count in enumerate(n_cells):
            for c in range(count):
                value = 0.1 * m + 0.01 * c + (0.5 if method == "B" else 0.0)
                item = f"mosaic{m}-cell{c}"
                scores = {"gridpg": value}
                records.append(
                    {"table": "gridpg", "method": method, "item": item, "scores": scores}
                )
    return records


def test_per_unit_leaves_out_a_mosaic_a_method_has_only_some_cells_of() -> None:
    """A run stopped part way through a mosaic: method B has 2 of mosaic1's 4 cells. Its
    mean over those 2 is not mosaic1's score, so B keeps only mosaic0, and A (complete)
    keeps both, each the mean of its 4 cells computed here by hand."""
    records = _partly_scored_mosaics()
    records.append({"table": "t", "method": "A", "item": "photo.JPEG", "scores": {"x": 1.0}})
    units = {(r["method"], r["item"]): r["scores"] for r in stats.per_unit(records)}
    assert set(units) == {("A", "mosaic0"), ("A", "mosaic1"), ("B", "mosaic0"), ("A", "photo.JPEG")}
    assert units[("A", "mosaic1")]["gridpg"] == pytest.approx(0.1 + 0.015)
    assert units[("B", "mosaic0")]["gridpg"] == pytest.approx(0.5 + 0.015)


def test_paired_differences_leave_out_a_partly_scored_mosaic() -> None:
    """The paired rows read unit_scores: B has 2 of mosaic1's 4 cells, so the pair
    B - A is over mosaic0 only, whose difference is +0.5 in every cell."""
    records = _partly_scored_mosaics()
    units = stats.unit_scores(records)
    assert set(units[("gridpg", "A")]["gridpg"]) == {"mosaic0", "mosaic1"}
    assert units[("gridpg", "B")]["gridpg"] == {"mosaic0": pytest.approx(0.5 + 0.015)}


def test_partly_scored_mosaics_are_named_not_silently_dropped() -> None:
    """B has 2 of mosaic1's 4 cells: partly_scored names (2, 4) for it and nothing else,
    the sentence says so, and tables.md prints it under that table only."""
    from captum_fdcam.evaluation.report import markdown

    records = _partly_scored_mosaics()
    records.append({"table": "t", "method": "A", "item": "photo.JPEG", "scores": {"x": 1.0}})
    assert stats.partly_scored(records) == {("gridpg", "B", "mosaic1"): (2, 4)}
    lines = stats.set_aside_lines(records)
    assert set(lines) == {"gridpg"}
    assert "B: mosaic1 (2 of 4 cells)" in lines["gridpg"]
    text = markdown(stats.summarise(records), "# h", lines)
    gridpg, other = text.split("## gridpg")[1].split("## t")
    assert lines["gridpg"] in gridpg and "partly scored" not in other
    assert stats.set_aside_lines(stats.whole_mosaics(records)) == {}


def test_partly_scored_mosaics_are_named_in_numeric_order() -> None:
    """B has 1 of 4 cells of mosaic10 and of mosaic2: the sentence names mosaic2 first,
    as a reader counts, not as text sorts ("mosaic10" < "mosaic2")."""
    records = []
    for method, have in (("A", 4), ("B", 1)):
        for m in (10, 2):
            for c in range(have):
                item = f"mosaic{m}-cell{c}"
                scores = {"gridpg": 0.5}
                records.append(
                    {"table": "gridpg", "method": method, "item": item, "scores": scores}
                )
    line = stats.set_aside_lines(records)["gridpg"]
    assert line == (
        "Left out as partly scored (fewer cells than another method has of the mosaic, "
        "as when a run stops part way through it): "
        "B: mosaic2 (1 of 4 cells), mosaic10 (1 of 4 cells)."
    )
