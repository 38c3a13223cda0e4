"""Paired statistics of the benchmark's scores and the results page generated from them,
against naive computations written here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from captum_fdcam.evaluation import paired, stats

ROOT = Path(__file__).resolve().parents[1]


def _naive(a: dict[str, float], b: dict[str, float], better: str, samples: int, seed: int):
    """The paired row by plain loops: the same generator and seed, one resample a row."""
    common = sorted(set(a) & set(b))
    diffs = [a[u] - b[u] for u in common]
    n = len(diffs)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, (samples, n))
    means = []
    for row in indices:
        total = 0.0
        for i in row:
            total += diffs[i]
        means.append(total / n)
    means.sort()
    wins = losses = ties = 0
    for d in diffs:
        better_d = d if better == "higher" else -d
        if d == 0:
            ties += 1
        elif better_d > 0:
            wins += 1
        else:
            losses += 1
    return sum(diffs) / n, np.percentile(means, [2.5, 97.5]), n, wins, losses, ties


def test_paired_row_matches_a_naive_loop_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a = {f"img{i}": float(v) for i, v in enumerate(rng.normal(0.5, 0.1, 30))}
    b = {f"img{i}": float(v) for i, v in enumerate(rng.normal(0.48, 0.1, 25))}  # 25 shared
    b["img0"] = a["img0"]  # one tie
    b["other"] = 0.0  # not in a: left out
    for better in ("higher", "lower"):
        row = paired.paired(a, b, better, samples=2000, seed=0)
        mean, ci, n, wins, losses, ties = _naive(a, b, better, 2000, 0)
        assert row is not None
        assert row["n"] == n == 25
        assert row["mean"] == pytest.approx(mean, abs=1e-12)
        assert row["ci95"] == pytest.approx(list(ci), abs=1e-12)
        assert (row["wins"], row["losses"], row["ties"]) == (wins, losses, ties)
        assert ties == 1 and wins + losses + ties == n
        assert row["ci95"][0] <= row["mean"] <= row["ci95"][1]


def test_direction_flips_wins_and_a_constant_difference_has_a_zero_width_ci() -> None:
    a = {str(i): i + 0.25 for i in range(12)}
    b = {str(i): float(i) for i in range(12)}
    higher = paired.paired(a, b, "higher")
    lower = paired.paired(a, b, "lower")
    assert higher is not None and lower is not None
    assert (higher["wins"], higher["losses"]) == (12, 0)
    assert (lower["wins"], lower["losses"]) == (0, 12)
    assert higher["ci95"] == pytest.approx([0.25, 0.25]) and higher["mean"] == pytest.approx(0.25)
    assert paired.paired(a, {"x": 1.0}, "higher") is None  # nothing shared


def _record(table: str, method: str, item: str, **scores: Any) -> dict[str, Any]:
    return {"table": table, "method": method, "item": item, "scores": scores}


def test_mosaic_cells_are_averaged_per_mosaic_before_pairing() -> None:
    records = []
    cells = {"A": [[0.9, 0.8, 0.7, 0.6], [0.25, 0.75, 0.5, 0.5]], "B": [[0.1] * 4, [0.5] * 4]}
    for method, mosaics in cells.items():
        for i, values in enumerate(mosaics):
            for j, v in enumerate(values):
                records.append(_record("gridpg", method, f"mosaic{i}-cell{j}", gridpg=v))
    units = paired.unit_scores(records)
    assert units[("gridpg", "A")]["gridpg"] == pytest.approx({"mosaic0": 0.75, "mosaic1": 0.5})
    merged = [r for r in paired.unit_records(records) if r["method"] == "A"]
    assert sorted(r["item"] for r in merged) == ["mosaic0", "mosaic1"]
    a, b = units[("gridpg", "A")]["gridpg"], units[("gridpg", "B")]["gridpg"]
    row = paired.paired(a, b, "higher")
    assert row is not None and row["n"] == 2  # mosaics, not 8 cells
    assert row["mean"] == pytest.approx(((0.75 - 0.1) + (0.5 - 0.5)) / 2)
    assert (row["wins"], row["losses"], row["ties"]) == (1, 0, 1)


def test_comparisons_follow_the_issue() -> None:
    cams = ["Ablation-CAM", "FD-CAM", "Grad-CAM", "Score-CAM"]
    pairs = paired.comparisons("fdcam-table1", cams)
    assert ("FD-CAM", "Grad-CAM") in pairs and ("Grad-CAM", "FD-CAM") in pairs
    assert ("Score-CAM", "FD-CAM") in pairs and ("Grad-CAM", "Grad-CAM") not in pairs
    fg = ["FG-Grad-CAM", "FG-Grad-CAM-D", "FG-Score-CAM", "Grad-CAM", "Layer-CAM", "Score-CAM"]
    pairs = paired.comparisons("fgcam-layers/depth-14", fg)
    assert ("FG-Grad-CAM-D", "Grad-CAM") in pairs and ("FG-Score-CAM", "Score-CAM") in pairs
    assert ("FG-Grad-CAM", "Layer-CAM") in pairs and ("FG-Grad-CAM-D", "FG-Grad-CAM") in pairs
    assert ("FG-Grad-CAM", "Score-CAM") not in pairs
    assert set(paired.comparisons("fgcam-input", ["LRP", "FG-Grad-CAM"])) == {
        ("FG-Grad-CAM", "LRP")
    }
    assert paired.comparisons("fdcam-ablation", ["FD-CAM", "FD-CAM, no grouping"]) == [
        ("FD-CAM, no grouping", "FD-CAM")
    ]


def _row(mean: float, low: float, high: float, n: int = 20, wins: int = 12, losses: int = 8):
    return {"method": "FD-CAM", "reference": "Grad-CAM", "mean": mean, "ci95": [low, high],
            "n": n, "wins": wins, "losses": losses, "ties": n - wins - losses}  # fmt: skip


def test_sentences_claim_only_where_the_ci_excludes_zero() -> None:
    text = paired.sentence(_row(0.012, 0.004, 0.020), "overall")
    assert text == (
        "FD-CAM's overall AUC is higher than Grad-CAM's by +0.012 [+0.004, +0.020] "
        "(n = 20, 12 wins / 8 losses)."
    )
    lower = paired.sentence(_row(-0.012, -0.020, -0.004, wins=8, losses=12), "overall")
    assert "is lower than Grad-CAM's by -0.012 [-0.020, -0.004]" in lower
    unsure = paired.sentence(_row(0.001, -0.007, 0.008, wins=10, losses=10), "overall")
    assert "not shown either way at n = 20" in unsure and "higher" not in unsure
    few = paired.sentence(_row(-0.1, -0.14, -0.08, n=3, wins=0, losses=3), "gridpg")
    assert "not shown either way at n = 3" in few and "lower" not in few
    same = paired.sentence(_row(0.0, 0.0, 0.0, wins=0, losses=0), "overall")
    assert same == "FD-CAM and Grad-CAM have the same overall AUC on all 20 items."
    ablation = {**_row(-0.004, -0.009, 0.001), "method": "FD-CAM, no grouping"}
    ablation["reference"] = "FD-CAM"
    assert paired.sentence(ablation, "overall").startswith(
        'A difference in overall AUC between "FD-CAM, no grouping" and FD-CAM is not shown'
    )
    flipped = paired.flipped(_row(0.012, 0.004, 0.020))
    assert flipped["method"] == "Grad-CAM" and flipped["mean"] == -0.012
    assert flipped["ci95"] == [-0.020, -0.004]
    assert (flipped["wins"], flipped["losses"]) == (8, 12)


def _generator() -> Any:
    path = ROOT / "benchmarks" / "results_page.py"
    spec = importlib.util.spec_from_file_location("results_page", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_page_takes_its_comparisons_from_paired_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    methods = {"Grad-CAM": 0.0, "FD-CAM": 0.05, "Score-CAM": 0.0005}
    base = rng.uniform(0.3, 0.7, 15)  # each image's difficulty, shared by the methods
    noise = rng.normal(0, 0.01, (len(methods), 15))
    for (m, shift), jitter in zip(methods.items(), noise, strict=True):
        for i in range(15):
            ins = float(base[i] + shift + (jitter[i] if m == "Score-CAM" else 0.0))
            rec = _record("fdcam-table1", m, f"img{i}.JPEG", insertion=ins, deletion=0.1)
            lines.append(json.dumps(rec))
        for k in range(3):
            for j in range(4):
                rec = _record("gridpg", m, f"mosaic{k}-cell{j}", gridpg=0.3 + shift + 0.01 * j)
                lines.append(json.dumps(rec))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    _generator().generate(tmp_path, page)
    tables = json.loads((tmp_path / "paired.json").read_text())
    assert (tmp_path / "paired.md").is_file()
    assert tables["gridpg"]["gridpg"][0]["n"] == 3
    text = page.read_text()
    allowed = set()
    for metrics in tables.values():
        for metric, rows in metrics.items():
            for row in rows:
                digits = paired.digits_for(metric)
                allowed.add(paired.signed(row["mean"], digits))
                allowed |= {paired.bound(v, digits) for v in row["ci95"]}
                allowed |= {str(row["n"]), str(row["wins"]), str(row["losses"]), str(row["ties"])}
    bullets = [x for x in text.splitlines() if x.startswith("- ") and "CAM" in x]
    head, _, sections = text.partition("## FD-CAM Table I")
    answers = [x for x in head.splitlines() if x.startswith("- ")]
    # The headline answers: FD-CAM against Grad-CAM on overall AUC and on GridPG (no
    # Ablation-CAM in this folder).
    assert len(answers) == 2, answers
    assert answers[0].startswith("- `fdcam-table1`: FD-CAM's overall AUC is higher than Grad")
    assert "between FD-CAM and Grad-CAM is not shown either way at n = 3" in answers[1]
    bullets = [x for x in sections.splitlines() if x.startswith("- ") and "CAM" in x]
    # The headline metrics: overall (Table I) and gridpg, 4 comparisons each.
    headline = len(tables["fdcam-table1"]["overall"]) + len(tables["gridpg"]["gridpg"])
    assert len(bullets) == headline
    assert len(bullets) == 8
    for bullet in bullets + answers:
        for number in re.findall(r"[+-]\d+\.\d+", bullet):
            assert number in allowed, (number, bullet)
        for count in re.findall(r"n = (\d+)|(\d+) wins?|(\d+) loss", bullet):
            assert all(c in allowed for c in count if c), bullet
    start = "- FD-CAM's overall AUC is higher than Grad-CAM's"
    claim = next(b for b in bullets if b.startswith(start))
    assert "(n = 15, 15 wins / 0 losses)" in claim
    assert any("not shown either way at n = 3" in b for b in bullets)  # 3 mosaics
    assert "mosaic" in text


def test_summarise_counts_mosaics_not_cells() -> None:
    from captum_fdcam.evaluation.report import bootstrap_ci, markdown, summarise
    from captum_fdcam.evaluation.stats import MEANS_SAMPLES

    cells = [[0.9, 0.7, 0.8, 0.6], [0.2, 0.4, 0.3, 0.5], [0.5, 0.5, 0.6, 0.6]]
    records = [
        _record("gridpg", "A", f"mosaic{i}-cell{j}", gridpg=v)
        for i, values in enumerate(cells)
        for j, v in enumerate(values)
    ]
    curves = [[1.0, 0.5], [0.0, 0.25]]
    records += [
        _record("t", "A", f"img{i}.png", insertion=0.5 + i, deletion=0.1, deletion_curve=c)
        for i, c in enumerate(curves)
    ]
    tables = summarise(records)
    cell = tables["gridpg"]["A"]["gridpg"]
    means = np.array([sum(v) / 4 for v in cells])
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(means.mean())
    assert cell["ci95"] == pytest.approx(list(bootstrap_ci(means, samples=MEANS_SAMPLES)))
    # images are their own units, as before
    assert tables["t"]["A"]["insertion"]["n"] == 2
    assert tables["t"]["A"]["deletion_curve"] == pytest.approx([0.5, 0.375])
    assert "n = 3 mosaics, each the mean of its 4 cells" in markdown(tables, "# t")


def test_constant_maps_are_counted_not_averaged_or_compared() -> None:
    """``constant_map`` is a flag the scoring writes only when the map was constant: a mean
    over the records that carry it would always be 1, and a paired difference meaningless."""
    from captum_fdcam.evaluation.report import markdown, summarise

    records = []
    for i in range(4):
        # FD-CAM first: the flag is not among the first row's metrics.
        for method, value in (("FD-CAM", 0.5 + i / 50), ("Grad-CAM", 0.4 + i / 100)):
            scores: dict[str, Any] = {"insertion": value, "deletion": 0.1}
            if method == "Grad-CAM" and i < 3:
                scores["constant_map"] = 1.0
            records.append({"table": "t", "method": method, "item": f"img{i}", "scores": scores})
    tables = paired.paired_tables(records)
    assert "constant_map" not in tables["t"]
    assert {"insertion", "deletion", "overall"} <= set(tables["t"])
    lines = markdown(summarise(records), "# h").splitlines()
    header = next(x for x in lines if x.startswith("| method"))
    column = header.strip("|").split("|").index(" constant_map ")
    cells = {
        x.split("|")[1].strip(): x.strip("|").split("|")[column].strip()
        for x in lines
        if x.startswith("| Grad-CAM") or x.startswith("| FD-CAM")
    }
    assert cells == {"Grad-CAM": "3 of 4", "FD-CAM": "0 of 4"}


def test_a_headline_against_constant_maps_says_how_many(tmp_path: Path) -> None:
    """A win against a method whose map was empty on most images is a win against an
    empty map: the headline answer says on how many images each side's map was constant."""
    lines = []
    for i in range(12):
        for method, value in (("Grad-CAM", 0.2), ("FD-CAM", 0.5 + i / 100)):
            scores: dict[str, Any] = {"insertion": value, "deletion": 0.1}
            if method == "Grad-CAM" and i < 9:
                scores["constant_map"] = 1.0
            lines.append(json.dumps(_record("fdcam-table1/depthwise", method, f"i{i}", **scores)))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    _generator().generate(tmp_path, page)
    answer = next(x for x in page.read_text().splitlines() if x.startswith("- `fdcam-table1/"))
    assert "higher than Grad-CAM's" in answer
    assert "Grad-CAM's map was constant on 9 of 12 images" in answer
    assert "FD-CAM's map was constant" not in answer


def test_on_mosaics_constant_maps_are_counted_per_mosaic(tmp_path: Path) -> None:
    """GridPG's unit is the mosaic: a mosaic counts once however many of its cells'
    maps were constant, and the page says so."""
    lines = []
    for k in range(12):
        for j in range(4):
            for method, value in (("Grad-CAM", 0.3), ("FD-CAM", 0.6 + k / 100)):
                scores: dict[str, Any] = {"gridpg": value}
                if method == "Grad-CAM" and k < 5 and j <= k % 3:  # 1 to 3 cells
                    scores["constant_map"] = 1.0
                lines.append(json.dumps(_record("gridpg", method, f"mosaic{k}-cell{j}", **scores)))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    _generator().generate(tmp_path, page)
    text = page.read_text()
    answer = next(x for x in text.splitlines() if x.startswith("- `gridpg`"))
    assert "Grad-CAM's map was constant on 5 of 12 mosaics (one cell or more)" in answer
    assert "gridpg n = 12 mosaics" in text


def test_a_bound_near_zero_shows_its_sign_and_counts_are_singular_for_one() -> None:
    """A CI that excludes 0 by less than the printed precision must not print as
    ``[-0.013, +0.000]``: the bound gets the decimals its sign needs."""
    row = {
        "method": "Ablation-CAM",
        "reference": "Grad-CAM",
        "mean": -0.006,
        "ci95": [-0.0131, -0.00021],
        "n": 64,
        "wins": 1,
        "losses": 62,
        "ties": 1,
    }
    text = paired.sentence(row, "overall")
    assert "lower than Grad-CAM's by -0.006 [-0.013, -0.0002]" in text, text
    assert "(n = 64, 1 win / 62 losses, 1 tie)" in text, text
    assert paired.bound(0.0, 3) == "+0.000"  # a bound that is 0 stays 0
    assert paired.bound(0.0004, 3) == "+0.0004"
    assert paired.bound(-2e-9, 3) == "-2e-09"  # float noise: sign and magnitude
    assert paired.bound(0.0123, 1) == "+0.01"  # percentages: one more decimal


def test_fg_cam_across_layers_pairs_each_method_with_its_base_cam_in_table_one(
    tmp_path: Path,
) -> None:
    """Does a CAM keep its faithfulness at a shallower layer: each method of a
    ``fgcam-layers/<depth>`` table against its base CAM in Table I, photo by photo."""
    rng = np.random.default_rng(1)
    n = 12
    deep = rng.uniform(0.3, 0.6, n)
    shift = {"Grad-CAM": -0.2, "FG-Grad-CAM": 0.0, "FG-Grad-CAM-D": 0.01, "Layer-CAM": 0.0}
    records = []
    for i in range(n):
        for m in ("Grad-CAM", "Layer-CAM"):
            records.append(
                _record("fdcam-table1", m, f"img{i}.JPEG", insertion=deep[i], deletion=0.1)
            )
        for m, d in shift.items():
            noise = rng.normal(0, 0.02) if m == "FG-Grad-CAM" else 0.0
            ins = deep[i] + d + noise
            records.append(
                _record("fgcam-layers/depth-56", m, f"img{i}.JPEG", insertion=ins, deletion=0.1)
            )
    records.append(
        _record("fgcam-layers/depth-56", "Grad-CAM", "extra.JPEG", insertion=0.5, deletion=0.1)
    )
    tables = paired.paired_tables(records)
    rows = tables[paired.ACROSS_LAYERS]["overall"]
    got = {(r["method"], r["reference"]): r for r in rows}
    assert set(got) == {
        ("FG-Grad-CAM-D@depth-56", "Grad-CAM@fdcam-table1"),
        ("FG-Grad-CAM@depth-56", "Grad-CAM@fdcam-table1"),
        ("Grad-CAM@depth-56", "Grad-CAM@fdcam-table1"),
        ("Layer-CAM@depth-56", "Layer-CAM@fdcam-table1"),
    }
    units = paired.unit_scores(records)
    for (method, reference), row in got.items():
        a = units[("fgcam-layers/depth-56", method.split("@")[0])]["overall"]
        b = units[("fdcam-table1", reference.split("@")[0])]["overall"]
        mean, ci, count, wins, losses, ties = _naive(a, b, "higher", 2000, 0)
        assert row["n"] == count == n  # the photo only one table has is left out
        assert row["mean"] == pytest.approx(mean) and row["ci95"] == pytest.approx(ci)
        assert (row["wins"], row["losses"], row["ties"]) == (wins, losses, ties)
    assert paired.claimed(got[("Grad-CAM@depth-56", "Grad-CAM@fdcam-table1")])
    layer = got[("Layer-CAM@depth-56", "Layer-CAM@fdcam-table1")]
    assert layer["ties"] == n and paired.difference(layer, "overall", "A", "B").endswith(
        "the same on all 12 items"
    )
    # The page: the section after the layer tables, and the headline answers, read
    # from the same rows.
    (tmp_path / "scores-rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = tmp_path / "results.md"
    _generator().generate(tmp_path, page)
    text = page.read_text()
    assert "## FG-CAM across layers" in text
    head = text.partition("## FD-CAM Table I")[0]
    answers = [x for x in head.splitlines() if "against Table I" in x]
    assert len(answers) == 2, answers  # FG-Grad-CAM, and Grad-CAM itself, at the depth
    fg = got[("FG-Grad-CAM@depth-56", "Grad-CAM@fdcam-table1")]
    assert paired.interval(fg, 3) in answers[0] and "FG-Grad-CAM at `_blocks.2`" in answers[0]
    assert answers[1].endswith("Grad-CAM at `_blocks.2` is lower.")


def test_a_method_on_fewer_photos_is_named_and_paired_on_its_photos(tmp_path: Path) -> None:
    """Score-CAM is run on the first photos only: the page says which rows have fewer
    units (their means are over other photos), and their paired rows use only the
    photos both methods have."""
    lines = []
    for i in range(20):
        for method, value in (("Grad-CAM", 0.3 + i / 50), ("Score-CAM", 0.31 + i / 50)):
            if method == "Score-CAM" and i >= 12:
                continue
            scores = {"insertion": value, "deletion": 0.1}
            lines.append(json.dumps(_record("fdcam-table1", method, f"i{i:02d}", **scores)))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    tables = _generator().generate(tmp_path, page)
    (row,) = tables["fdcam-table1"]["overall"]
    assert (row["method"], row["reference"], row["n"], row["wins"]) == (
        "Score-CAM",
        "Grad-CAM",
        12,
        12,
    )
    text = page.read_text()
    assert "than the other rows (n = 20): Score-CAM (n = 12). Their means" in text
    assert "| Grad-CAM | 20 |" in text and "| Score-CAM | 12 |" in text


def test_the_page_names_a_partly_scored_mosaic_it_leaves_out(tmp_path: Path) -> None:
    """A run stopped after 2 of mosaic2's 4 cells for Score-CAM: the page's GridPG
    section says that mosaic was left out and why, and its counts are 3 and 2."""
    lines = []
    for method in ("Grad-CAM", "Score-CAM"):
        for k in range(3):
            for j in range(2 if (method, k) == ("Score-CAM", 2) else 4):
                rec = _record("gridpg", method, f"mosaic{k}-cell{j}", gridpg=0.3 + 0.01 * j)
                lines.append(json.dumps(rec))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    tables = _generator().generate(tmp_path, page)
    assert tables["gridpg"]["gridpg"][0]["n"] == 2
    text = page.read_text()
    said = (
        "Left out as partly scored (fewer cells than another method has of the mosaic, "
        "as when a run stops part way through it): "
    )
    assert text.count(said) == 1
    assert f"{said}Score-CAM: mosaic2 (2 of 4 cells)." in text
    assert "Score-CAM (n = 2)" in text


def test_the_ablations_are_headline_answers_against_fd_cam(tmp_path: Path) -> None:
    lines = []
    for i in range(12):
        for method, value in (("FD-CAM", 0.5 + i / 100), ("FD-CAM, no grouping", 0.4)):
            scores = {"insertion": value, "deletion": 0.1}
            lines.append(json.dumps(_record("fdcam-ablation/depthwise", method, f"i{i}", **scores)))
    # Table I's answers come first, whatever the order of the tables' names.
    for i in range(12):
        for method in ("FD-CAM", "Grad-CAM"):
            scores = {"insertion": 0.5, "deletion": 0.1}
            lines.append(json.dumps(_record("fdcam-table1", method, f"i{i}", **scores)))
    (tmp_path / "scores-rank0.jsonl").write_text("\n".join(lines) + "\n")
    page = tmp_path / "results.md"
    _generator().generate(tmp_path, page)
    head = page.read_text().partition("## FD-CAM Table I")[0]
    bullets = [x for x in head.splitlines() if x.startswith("- `")]
    assert bullets[0].startswith("- `fdcam-table1`: ") and len(bullets) == 2
    answers = [x for x in head.splitlines() if x.startswith("- `fdcam-ablation")]
    full = {f"i{i}": 0.4 + i / 100 for i in range(12)}  # overall = insertion - 0.1
    mean, (low, high), *_ = _naive(
        {u: 0.3 for u in full}, full, "higher", paired.SAMPLES, paired.SEED
    )
    assert answers == [
        '- `fdcam-ablation/depthwise`: "FD-CAM, no grouping"\'s overall AUC is lower than '
        f"FD-CAM's by {mean:+.3f} [{low:+.3f}, {high:+.3f}] (n = 12, 0 wins / 12 losses)."
    ]


def _one_image(table: str = "fdcam-table1") -> list[dict[str, Any]]:
    return [
        _record(table, method, "img0.JPEG", insertion=ins, deletion=0.1)
        for method, ins in (("Grad-CAM", 0.5), ("FD-CAM", 0.6))
    ]


def test_one_unit_prints_no_ci_in_words_in_both_renderers() -> None:
    """At n = 1 the bootstrap has no interval: the means table printed ``[nan, nan]``;
    both renderers now print the same words."""
    from captum_fdcam.evaluation.report import format_cell, markdown, summarise

    records = _one_image()
    means = markdown(summarise(records), "# h")
    assert "nan" not in means
    assert "| FD-CAM | 0.6000 [no CI at n = 1] | 0.1000 [no CI at n = 1] |" in means
    cell = {"mean": 0.25, "ci95": [float("nan"), float("nan")], "n": 1}
    assert format_cell("gridpg", cell, 1) == "0.2500 [no CI at n = 1]"
    assert format_cell("average_drop", cell, 1, digits=1) == "0.2 [no CI at n = 1]"
    tables = paired.paired_tables(records)
    table = paired.markdown(tables)
    assert "nan" not in table and "+0.100 [no CI at n = 1] 1/0/0" in table
    row = tables["fdcam-table1"]["overall"][0]
    assert paired.interval(row, 3) == "+0.100 [no CI at n = 1]"
    assert "nan" not in paired.sentence(row, "overall")
    assert "nan" not in paired.difference(row, "overall", "A", "B")
    # n >= 2: the interval as before
    two = {"mean": 0.25, "ci95": [0.125, 0.375], "n": 2}
    assert format_cell("gridpg", two, 2) == "0.2500 [0.1250, 0.3750]"


def test_paired_md_lists_each_pair_once(tmp_path: Path) -> None:
    """Table I compares every method with Grad-CAM and with FD-CAM, so paired.json has
    both FD-CAM - Grad-CAM and Grad-CAM - FD-CAM (the page's sentences read both);
    paired.md showed the two, one the other negated: it now shows the first only."""
    rng = np.random.default_rng(3)
    records = []
    for i in range(12):
        for method in ("Ablation-CAM", "FD-CAM", "Grad-CAM"):
            ins = float(rng.uniform(0.3, 0.7))
            records.append(_record("fdcam-table1", method, f"i{i}", insertion=ins, deletion=0.1))
            records.append(_record("gridpg", method, f"mosaic{i}-cell0", gridpg=ins))
    tables = paired.write(tmp_path, records)
    both = {(r["method"], r["reference"]) for r in tables["fdcam-table1"]["overall"]}
    assert {("FD-CAM", "Grad-CAM"), ("Grad-CAM", "FD-CAM")} <= both
    assert json.loads((tmp_path / "paired.json").read_text()) == tables
    text = (tmp_path / "paired.md").read_text()
    for table in ("fdcam-table1", "gridpg"):
        section = text.partition(f"## {table}: paired differences")[2].partition("\n## ")[0]
        rows = [x.split(" | ")[0].removeprefix("| ") for x in section.splitlines()]
        rows = [r for r in rows if " - " in r and r != "method - reference"]
        assert rows == [
            "Ablation-CAM - Grad-CAM",
            "FD-CAM - Grad-CAM",
            "Ablation-CAM - FD-CAM",
        ], (table, rows)
    assert "Each pair of methods is listed once" in text
    # The rows left out are the kept ones negated: nothing is lost.
    for metric, rows_ in tables["fdcam-table1"].items():
        got = {(r["method"], r["reference"]): r for r in rows_}
        back = paired.flipped(got[("Grad-CAM", "FD-CAM")])
        kept = got[("FD-CAM", "Grad-CAM")]
        assert back["mean"] == pytest.approx(kept["mean"], abs=1e-15), metric
        assert back["ci95"] == pytest.approx(kept["ci95"], abs=1e-15), metric
        assert (back["wins"], back["losses"]) == (kept["wins"], kept["losses"])


def _shifted(table: str, n: int, shifts: dict[str, float], seed: int) -> list[dict[str, Any]]:
    """Records of ``n`` images in ``table``: each method's insertion is one shared random
    base plus its shift, deletion 0.2, so every paired difference is a known constant."""
    base = np.random.default_rng(seed).uniform(0.3, 0.7, n)
    return [
        _record(table, method, f"img{i}.png", insertion=float(base[i] + shift), deletion=0.2)
        for method, shift in shifts.items()
        for i in range(n)
    ]


def test_the_answers_across_models_read_each_models_paired_rows() -> None:
    """One line per question, one cell per model and layer: the sign where the paired CI
    excludes 0 at n >= 10, "not shown either way" otherwise, "no scores" without rows."""
    results_page = _generator()
    shifts = {"Grad-CAM": 0.0, "FD-CAM": 0.05}
    lite0 = stats.paired_tables(_shifted("fdcam-table1", 12, shifts, seed=1))
    lite1 = stats.paired_tables(_shifted("fdcam-table1/depthwise", 3, shifts, seed=1))
    lines = results_page.across_models({"Lite0": lite0, "Lite1": lite1})
    row = next(x for x in lines if x.startswith("| FD-CAM - Grad-CAM, overall AUC |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == [
        "higher (n = 12)",
        "no scores",
        "no scores",
        "not shown either way (n = 3)",
    ]
    detail = [x for x in lines if x.startswith("| FD-CAM - Grad-CAM, overall AUC | Lite")]
    assert len(detail) == 2 and "+0.050 [+0.050, +0.050]" in detail[0]


def test_fd_cam_against_score_cam_is_read_from_the_score_cam_row() -> None:
    """The paired tables hold Score-CAM - FD-CAM (FD-CAM is a reference); the question
    FD-CAM - Score-CAM reads that row from the other side: the sign turns, n stays."""
    results_page = _generator()
    shifts = {"Grad-CAM": 0.0, "FD-CAM": 0.0, "Score-CAM": -0.03}
    tables = stats.paired_tables(_shifted("fdcam-table1", 15, shifts, seed=2))
    pairs = {(r["method"], r["reference"]) for r in tables["fdcam-table1"]["overall"]}
    assert ("Score-CAM", "FD-CAM") in pairs and ("FD-CAM", "Score-CAM") not in pairs
    lines = results_page.across_models({"M": tables})
    row = next(x for x in lines if x.startswith("| FD-CAM - Score-CAM, overall AUC |"))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["higher (n = 15)", "no scores"]
    detail = [x for x in lines if x.startswith("| FD-CAM - Score-CAM, overall AUC | M |")]
    assert len(detail) == 1 and "+0.030 [+0.030, +0.030]" in detail[0]


def test_the_page_says_how_each_models_scores_were_computed(tmp_path: Path) -> None:
    results_page = _generator()
    fast, default, bare = (tmp_path / n for n in ("fast", "default", "bare"))
    for folder, extra in ((fast, {"inference": "fast-cpu"}), (default, {})):
        folder.mkdir()
        fingerprint = {"image_size": 240, "model": "efficientnet-lite1", **extra}
        (folder / "run.json").write_text(json.dumps({"fingerprint": fingerprint}))
    bare.mkdir()
    lines = [results_page.run_line("M", f) for f in (fast, default, bare)]
    assert "240x240 px" in lines[0] and "`--fast-cpu`" in lines[0]
    assert "240x240 px" in lines[1] and "the default inference" in lines[1]
    assert lines[2].endswith("(no run.json)")
    table = results_page.across_models({"M": {}}, lines[:1])
    assert lines[0] in table and table.index(lines[0]) < next(
        i for i, x in enumerate(table) if x.startswith("| question |")
    )
