"""The library's figures: a colour bar that says what the colours mean, the layer explained,
and overlays drawn on exactly the scale the colour bar states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from captum_fdcam.visualization import (
    OVERLAY_CMAP,
    OVERLAY_SCALE,
    build_comparison_figure,
    build_overlay_figure,
    comparison_figure,
    overlay_figure,
)

pytest.importorskip("matplotlib")
from matplotlib.collections import QuadMesh


def colorbars(fig: Any) -> list[Any]:
    """The figure's colour-bar axes (matplotlib labels them "<colorbar>")."""
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def min_max_scale(cam: np.ndarray) -> np.ndarray:
    """The scale the colour bar states, computed here independently: 0 at the map's
    lowest value, 1 at its highest (all 0 for a constant map)."""
    low, high = cam.min(), cam.max()
    return np.zeros_like(cam) if high == low else (cam - low) / (high - low)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((12, 16, 3))


def test_overlay_figure_has_colorbar_and_layer(image: np.ndarray) -> None:
    maps = {"A": torch.rand(12, 16), "B": torch.rand(1, 1, 12, 16)}
    fig = build_overlay_figure(image, maps, title="cat (91%)", layer="features.7")
    try:
        (bar,) = colorbars(fig)
        assert bar.get_xlabel() == OVERLAY_SCALE
        assert bar.get_xlim() == pytest.approx((0.0, 1.0))
        title = fig.get_suptitle()
        assert title.splitlines() == ["cat (91%)", "layer: features.7"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_overlay_is_drawn_on_the_colorbar_scale(image: np.ndarray) -> None:
    # A heavy-tailed map with negative values: min-max keeps its lowest value at 0.
    cam = np.arange(12 * 16, dtype=np.float64).reshape(12, 16) ** 3 - 5.0
    fig = build_overlay_figure(image, {"map": torch.from_numpy(cam)})
    try:
        panel = next(ax for ax in fig.axes if ax.get_title() == "map")
        heat = panel.get_images()[-1]  # the photo first, then the heat map over it
        np.testing.assert_allclose(heat.get_array(), min_max_scale(cam), rtol=1e-6, atol=1e-7)
        assert heat.get_clim() == (0, 1)
        assert heat.get_cmap().name == OVERLAY_CMAP
        (bar,) = colorbars(fig)
        assert bar.get_xlim() == pytest.approx(heat.get_clim())
        (solids,) = [c for c in bar.collections if isinstance(c, QuadMesh)]  # the bar's colours
        assert solids.get_cmap().name == OVERLAY_CMAP
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_colorbar_without_layer_or_title(image: np.ndarray) -> None:
    # An all-zero map shows the photo alone; the colour bar is still drawn.
    fig = build_overlay_figure(image, {"zero": torch.zeros(12, 16)})
    try:
        assert len(colorbars(fig)) == 1
        assert fig.get_suptitle() == ""
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_comparison_figure_has_colorbar_and_layer(image: np.ndarray) -> None:
    maps = {"A": torch.rand(12, 16), "B": torch.rand(12, 16)}
    fig = build_comparison_figure([("one", image, maps), ("two", image, maps)], layer="conv2")
    try:
        (bar,) = colorbars(fig)
        assert bar.get_xlabel() == OVERLAY_SCALE
        assert fig.get_suptitle() == "layer: conv2"
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert len(panels) == 2 * 3
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_comparison_figure_rejects_mismatched_rows(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        build_comparison_figure(
            [("one", image, {"A": torch.rand(12, 16)}), ("two", image, {"B": torch.rand(12, 16)})]
        )


def test_figures_are_written(image: np.ndarray, tmp_path: Path) -> None:
    maps = {"A": torch.rand(12, 16)}
    single = overlay_figure(image, maps, tmp_path / "a" / "one.png", "t", layer="l")
    grid = comparison_figure([("one", image, maps)], tmp_path / "grid.png", layer="l")
    for path in (single, grid):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
