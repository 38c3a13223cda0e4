"""The benchmark's table definitions: the report card's and the depthwise layer's tables
(Table I, the ablations, GridPG and the report card at both layers)."""

from __future__ import annotations

from captum_fdcam import benchmark
from captum_fdcam.evaluation.metric_info import QUANTUS_FAITHFULNESS, QUANTUS_LOCALISATION
from captum_fdcam.evaluation.scoring import Job


def test_jobs_for_yields_the_report_card_and_depthwise_tables() -> None:
    cams = tuple(benchmark.CAMS)
    rows = benchmark.jobs_for(benchmark.TABLES, cams)
    by_table: dict[str, list[Job]] = {}
    for row in rows:
        by_table.setdefault(row.table, []).append(row.job)
    expected = {
        "quantus-faithfulness": (benchmark.BASE_LAYER, QUANTUS_FAITHFULNESS),
        "quantus-faithfulness/depthwise": (benchmark.DW_LAYER, QUANTUS_FAITHFULNESS),
        "quantus-localisation": (benchmark.BASE_LAYER, QUANTUS_LOCALISATION),
        "quantus-localisation/depthwise": (benchmark.DW_LAYER, QUANTUS_LOCALISATION),
        "fdcam-table1": (benchmark.BASE_LAYER, ("insertion", "deletion")),
        "fdcam-table1/depthwise": (benchmark.DW_LAYER, ("insertion", "deletion")),
        "gridpg": (benchmark.BASE_LAYER, ("gridpg",)),
        "gridpg/depthwise": (benchmark.DW_LAYER, ("gridpg",)),
    }
    for table, (layer, metrics) in expected.items():
        jobs = by_table[table]
        assert [j.method for j in jobs] == list(cams) == [j.name for j in jobs], table
        assert all(j.layer == layer and j.metrics == metrics for j in jobs), table
    for table, layer in (
        ("fdcam-ablation", benchmark.BASE_LAYER),
        ("fdcam-ablation/depthwise", benchmark.DW_LAYER),
    ):
        jobs = by_table[table]
        assert [(j.name, j.method, j.layer) for j in jobs] == [
            (name, "FD-CAM", layer) for name in benchmark.FD_ABLATIONS
        ], table
        assert [j.method_kwargs for j in jobs] == list(benchmark.FD_ABLATIONS.values()), table
    on_mosaics = {r.table for r in rows if benchmark._on_mosaics(r)}
    assert on_mosaics == {
        "gridpg",
        "gridpg/depthwise",
        "quantus-localisation",
        "quantus-localisation/depthwise",
    }
    only = benchmark.jobs_for(("quantus-localisation/depthwise",), ("Grad-CAM", "FD-CAM"))
    assert [(r.table, r.job.method) for r in only] == [
        ("quantus-localisation/depthwise", "Grad-CAM"),
        ("quantus-localisation/depthwise", "FD-CAM"),
    ]


def test_the_depthwise_layer_name_is_the_models() -> None:
    from captum_fdcam.models import DEPTHWISE_LAYER

    assert benchmark.DW_LAYER == DEPTHWISE_LAYER
