"""Quantus's own metrics as a report card (evaluation/report_card.py): each localisation
score against its definition computed here, the faithfulness metrics' per-image
results, and the metric table's entries (the benchmark's tables: tests/test_benchmark_tables.py)."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from torch import nn

from captum_fdcam.evaluation.metric_info import (
    METRICS,
    QUANTUS_FAITHFULNESS,
    QUANTUS_LOCALISATION,
    mosaic_metrics,
    per_image_metrics,
)
from captum_fdcam.evaluation.report_card import REPORT_CARD, ROAD_PERCENTAGES
from captum_fdcam.evaluation.road import ROAD
from captum_fdcam.evaluation.scoring import Job, attribution, make_metric, score

SIDE = 8  # one image; a mosaic is 16 x 16
CLASSES = 6


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def _mosaics() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 mosaics of 4 random images, each cell explained once: 8 (x, y, mask)."""
    rng = np.random.default_rng(1)
    xs, ys, ss = [], [], []
    for m in range(2):
        mosaic = rng.normal(size=(3, 2 * SIDE, 2 * SIDE)).astype(np.float32)
        for cell in range(4):
            row, col = divmod(cell, 2)
            mask = np.zeros((1, 2 * SIDE, 2 * SIDE), dtype=np.float32)
            mask[:, row * SIDE : (row + 1) * SIDE, col * SIDE : (col + 1) * SIDE] = 1
            xs.append(mosaic)
            ys.append((m + cell) % CLASSES)
            ss.append(mask)
    return np.stack(xs), np.asarray(ys), np.stack(ss)


def _direct(name: str, a: np.ndarray, s: np.ndarray) -> float:
    """The metric's definition, on one (1, H, W) map and mask."""
    flat, inside = a.reshape(-1), s.reshape(-1).astype(bool)
    if name == "pointing_game":  # a maximum of the map lies in the cell
        return float(inside[flat == flat.max()].any())
    if name == "attribution_localisation":  # share of the positive attribution inside
        positive = np.clip(flat, 0, None)
        return float(positive[inside].sum() / positive.sum())
    if name == "top_k_intersection":  # fraction of the k = H W / 16 top pixels inside
        k = flat.size // 16
        top = sorted(range(flat.size), key=lambda i: -flat[i])[:k]
        return sum(inside[i] for i in top) / k
    if name == "relevance_rank_accuracy":  # fraction of the |cell| top pixels inside
        k = int(inside.sum())
        top = sorted(range(flat.size), key=lambda i: -flat[i])[:k]
        return sum(inside[i] for i in top) / k
    raise AssertionError(name)


@pytest.mark.parametrize("name", QUANTUS_LOCALISATION)
def test_localisation_on_random_maps_is_its_definition(model: nn.Module, name: str) -> None:
    # continuous maps with negative values and no ties: each pixel's rank is defined
    x, y, s = _mosaics()
    a = np.random.default_rng(2).normal(size=(len(x), 1, *x.shape[2:])).astype(np.float32)
    a[1, 0, SIDE + 3, 2] = 9.0  # cell 1 (top right) explained, the maximum in cell 2
    got = make_metric(name, x.shape[-1])(model, x, y, a_batch=a, s_batch=s)
    expected = [_direct(name, a[i], s[i]) for i in range(len(x))]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=1e-6)
    if name == "pointing_game":
        assert got[1] == 0


@pytest.mark.parametrize("method", ["Grad-CAM", pytest.param("Score-CAM", marks=pytest.mark.slow)])
def test_localisation_scores_of_a_cam_on_mosaic_cells(model: nn.Module, method: str) -> None:
    x, y, s = _mosaics()
    job = Job(method, method, "relu", metrics=QUANTUS_LOCALISATION)
    for i in range(len(x)):
        cell = slice(i, i + 1)
        scores = score(model, job, x[cell], y[cell], s[cell])
        a = attribution(model, job, x[cell], y[cell])[0]
        if "constant_map" in scores:  # score ranks a constant map's pixels by index
            a = np.linspace(1.0, 0.5, a.size, dtype=np.float32).reshape(a.shape)
        assert set(scores) - {"constant_map"} == set(QUANTUS_LOCALISATION)
        for name in QUANTUS_LOCALISATION:
            if name in ("top_k_intersection", "relevance_rank_accuracy") and (a == 0).any():
                # ReLU'd CAMs tie at 0; a rank inside the ties is the sort's choice
                assert 0 <= scores[name] <= 1
                continue
            assert scores[name] == pytest.approx(_direct(name, a, s[i]), rel=1e-6), name


def test_faithfulness_metrics_give_one_finite_score_per_image(model: nn.Module) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()  # so that ROAD starts from correct
    job = Job("Grad-CAM", "Grad-CAM", "relu", metrics=QUANTUS_FAITHFULNESS)
    for i in range(2):
        scores = score(model, job, x[i : i + 1], y[i : i + 1])
        assert set(scores) >= set(QUANTUS_FAITHFULNESS)
        assert all(np.isfinite(scores[m]) for m in QUANTUS_FAITHFULNESS)
        assert -1 <= scores["faithfulness_correlation"] <= 1
        assert 0 <= scores["pixel_flipping"] <= 1
        # the fraction of the percentages at which the class holds
        assert scores["road"] * len(ROAD_PERCENTAGES) == pytest.approx(
            round(scores["road"] * len(ROAD_PERCENTAGES))
        )


@pytest.mark.parametrize(("size", "steps"), [(224, 28), (16, 2), (20, 20)])
def test_pixel_flipping_steps_are_eight_rows_of_pixels(
    model: nn.Module, size: int, steps: int
) -> None:
    # Quantus counts the map's values broadcast over 3 channels: each step must black
    # out whole pixels, 8 rows' worth (one row where 8 does not divide the size)
    x = np.random.default_rng(6).normal(size=(1, 3, size, size)).astype(np.float32)
    a = np.random.default_rng(7).random((1, 1, size, size)).astype(np.float32)
    metric = make_metric("pixel_flipping", size)
    seen: list[np.ndarray] = []
    predict = model.forward

    def spy(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.detach().numpy().copy())
        return predict(batch)

    model.forward = spy  # type: ignore[method-assign]
    try:
        curve = metric(model, x, np.array([0]), a_batch=a)[0]
    finally:
        del model.forward
    assert len(curve) == steps == len(seen)
    order = np.argsort(-a.reshape(-1), kind="stable")
    rows = 8 if size % 8 == 0 else 1
    for step, perturbed in enumerate(seen, start=1):
        changed = (perturbed[0] != x[0]).any(axis=0).reshape(-1)
        expected = np.zeros(size * size, dtype=bool)
        expected[order[: step * rows * size]] = True
        np.testing.assert_array_equal(changed, expected)


def test_road_per_image_averages_to_quantus_accuracy_per_percentage(model: nn.Module) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()
    a = rng.random((4, 1, 16, 16)).astype(np.float32)
    np.random.seed(0)  # noqa: NPY002 - the imputation's noise
    per_image = make_metric("road", 16)(model, x, y, a_batch=a)
    np.random.seed(0)  # noqa: NPY002
    per_p = ROAD(percentages=list(ROAD_PERCENTAGES), disable_warnings=True)(model, x, y, a_batch=a)
    assert len(per_image) == 4
    assert np.mean(per_image) == pytest.approx(np.mean(list(per_p.values())))


def test_faithfulness_correlation_draws_the_same_subsets_every_call(model: nn.Module) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1])
    a = rng.random((2, 1, 16, 16)).astype(np.float32)
    metric = make_metric("faithfulness_correlation", 16)
    first = metric(model, x, y, a_batch=a)
    np.random.seed(123)  # noqa: NPY002 - the global state must not matter
    assert metric(model, x, y, a_batch=a) == first
    np.random.seed(0)  # noqa: NPY002 - Quantus's own metric, same settings and seed
    quantus_own = quantus.FaithfulnessCorrelation(
        nr_runs=50,
        subset_size=3 * 16 * 16 // 28,
        perturb_baseline="black",
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
    )(model, x, y, a_batch=a)
    np.testing.assert_allclose(first, quantus_own)


def test_every_report_card_metric_has_a_direction_and_unit() -> None:
    for name in REPORT_CARD:
        assert METRICS[name].better in {"higher", "lower"} and METRICS[name].unit
        assert make_metric(name).score_direction.name.lower() == METRICS[name].better, name
    assert set(mosaic_metrics()) == {"gridpg", *QUANTUS_LOCALISATION}
    assert not set(mosaic_metrics()) & set(per_image_metrics())
    assert set(QUANTUS_FAITHFULNESS) <= set(per_image_metrics())
