"""The scripts in ``examples/`` run offline with ``--small`` and show what they claim.

Each example's ``main(argv)`` is imported from its file (``examples/`` is not a
package) and called with ``--small --out tmp_path``, as CI runs them.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from captum_fdcam.visualization import MINMAX_SCALE, normalize_map

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


pytestmark = pytest.mark.usefixtures("one_thread")


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_png(path: Path) -> np.ndarray:
    assert path.suffix == ".png" and path.stat().st_size > 10_000
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@dataclass
class SavedFigure:
    """What a figure said when an example saved it."""

    title: str
    #: The labels of its colour bars ("" for one without a label).
    colorbars: list[str]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[SavedFigure]:
    """Records every figure the examples save through ``visualization.save_figure``.

    Patched before an example is loaded, so its ``from ... import save_figure`` gets the
    recording one."""
    from captum_fdcam import visualization

    figures: list[SavedFigure] = []
    save = visualization.save_figure

    def record(fig: Any, path: str | Path, dpi: int = 120) -> Path:
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        labels = [ax.get_xlabel() or ax.get_ylabel() for ax in bars]
        figures.append(SavedFigure(fig.get_suptitle(), labels))
        return save(fig, path, dpi)

    monkeypatch.setattr(visualization, "save_figure", record)
    return figures


def assert_explains(saved: list[SavedFigure], layer: str, bars: int = 1) -> None:
    """One figure was saved, it names ``layer`` and has ``bars`` colour bars."""
    (figure,) = saved
    assert f"layer: {layer}" in figure.title, figure.title
    assert len(figure.colorbars) == bars, figure.colorbars


def assert_not_blank(pixels: np.ndarray) -> None:
    # A figure whose panels failed to draw is mostly one colour.
    assert pixels.std() > 30, "the figure looks blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in sorted(EXAMPLES.glob("*.py")):
        assert f"python examples/{script.name}" in readme, script.name


def test_captum_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("captum_side_by_side")
    correlations = example.main(["--small", "--out", str(tmp_path)])

    # The library's Grad-CAM is Captum's; XGrad-CAM equals it behind ResNet's
    # average pooling and linear head (the gradient is constant over positions).
    assert correlations["Grad-CAM"] == pytest.approx(1.0, abs=1e-6)
    assert correlations["XGrad-CAM"] == pytest.approx(1.0, abs=1e-6)
    assert not set(example.SLOW_METHODS) & set(correlations)
    assert {"Grad-CAM++", "Layer-CAM", "Ablation-CAM", "FD-CAM"} <= set(correlations)
    assert all(-1 <= c <= 1 for c in correlations.values())

    table = (tmp_path / "captum_side_by_side.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 2 + len(correlations) + 1  # header, rule, methods, FG-CAM
    assert "(2, 1, 224, 224)" in table[-1]
    assert "FD-CAM" in capsys.readouterr().out


def test_captum_visualization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: list[SavedFigure]
) -> None:
    from skimage import data

    example = load_example("captum_visualization")
    result = example.main(["--small", "--out", str(tmp_path)])

    assert 281 <= result.target <= 285 and "cat" in result.category  # chelsea is a cat
    # The photo handed to Captum is denormalised, (H, W, 3) in [0, 1], as bright as the
    # photo itself (the normalised tensor would average about 0 and reach -2).
    image = result.image
    assert image.shape == (224, 224, 3) and image.min() >= 0 and image.max() <= 1
    assert abs(image.mean() - data.chelsea().mean() / 255) < 0.05
    maps = {title: m for title, m in result.maps.items() if m is not None}
    assert len(maps) == 7 and all(m.shape == (224, 224, 1) for m in maps.values())
    signed = maps["Grad-CAM, 'espresso', signed"]  # a class the photo does not show
    assert signed.min() < 0 < signed.max()  # why that panel uses sign="all"
    for title in (
        "Grad-CAM",
        "FD-CAM",
        "SmoothGrad Grad-CAM (4 copies)",
        "FG-Grad-CAM at the input",
    ):
        assert maps[title].min() >= 0 and maps[title].max() > 0, title
    # SmoothGrad changes the map, but not where the cat is.
    smooth, plain = maps["SmoothGrad Grad-CAM (4 copies)"], maps["Grad-CAM"]
    assert not np.allclose(smooth, plain)
    assert np.corrcoef(smooth.ravel(), plain.ravel())[0, 1] > 0.3

    assert result.figure.name == "captum-visualization.png"
    pixels = read_png(result.figure)
    height, width, _ = pixels.shape
    assert 600 <= height <= 800 and 1200 <= width <= 1400  # 2 x 4 panels
    assert_not_blank(pixels)
    # A colour bar under each heat map: 3 blended, the signed one and FG-CAM's.
    assert_explains(saved, "head_activation", bars=5)
    assert "masked_image" in capsys.readouterr().out


def test_fd_cam_two_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: list[SavedFigure]
) -> None:
    example = load_example("fd_cam_two_classes")
    result = example.main(["--small", "--out", str(tmp_path)])

    # The left half is the cat photo, the right one the cup of espresso.
    cat, drink = result.class_indices
    assert 281 <= cat <= 285, result.class_names  # the domestic cat classes
    assert drink in (504, 967, 968), result.class_names  # coffee mug, espresso, cup
    assert set(result.shares) == set(example.SMALL_METHODS)
    # Class-discriminative: each class's FD-CAM map lies mostly on its own object.
    assert result.shares["FD-CAM"]["left"] > 0.7
    assert result.shares["FD-CAM"]["right"] > 0.7
    assert result.shares["Grad-CAM"]["left"] > 0.5
    assert result.shares["Grad-CAM"]["right"] > 0.5
    assert all(0 < p < 1 for p in result.probabilities)

    pixels = read_png(result.figure)
    height, width, _ = pixels.shape
    # Two rows (one per class) of 1 + 2 panels, each twice as wide as high.
    assert 300 <= height <= 800 and width > 2 * height
    assert_not_blank(pixels)
    assert_explains(saved, "head_activation")
    assert saved[0].colorbars == [MINMAX_SCALE]
    out = capsys.readouterr().out
    for name in result.class_names:
        assert name in out


@pytest.mark.slow
def test_fd_cam_two_classes_on_a_given_photo(tmp_path: Path) -> None:
    """--image/--classes: the composite saved as a file, classes by index and by name."""
    example = load_example("fd_cam_two_classes")
    photo = tmp_path / "two.png"
    halves = [np.asarray(Image.fromarray(p).resize((300, 300))) for p in example.bundled_pair()]
    Image.fromarray(np.concatenate(halves, axis=1)).save(photo)
    args = ["--image", str(photo), "--classes", "285", "ESPRESSO", "--methods", "FD-CAM"]
    result = example.main([*args, "--out", str(tmp_path)])
    assert result.class_indices == [285, 967]
    assert result.class_names == ["Egyptian cat", "espresso"]
    assert result.shares["FD-CAM"]["left"] > 0.7 and result.shares["FD-CAM"]["right"] > 0.7
    # Resized to 224 rows, uncropped: 600 x 300 becomes 448 x 224.
    assert example.load_whole(photo).shape == (1, 3, 224, 448)

    with pytest.raises(SystemExit):  # unknown class: an argparse error, not a traceback
        example.main(["--image", str(photo), "--classes", "cat", "espresso"])
    with pytest.raises(SystemExit):  # --image needs --classes
        example.main(["--image", str(photo)])


@pytest.mark.slow
def test_fg_cam_depths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: list[SavedFigure]
) -> None:
    example = load_example("fg_cam_depths")
    result = example.main(["--small", "--out", str(tmp_path)])

    assert 281 <= result.target <= 285  # chelsea is a cat
    fg = "FG-Grad-CAM"
    assert result.sizes == {
        "_blocks.10": {"Grad-CAM": (14, 14), fg: (14, 14), f"{fg}-D": (14, 14)},
        "input": {fg: (224, 224), f"{fg}-D": (224, 224)},
    }
    for depth, scores in result.correlations.items():
        assert all(math.isfinite(c) and -1 <= c <= 1 for c in scores.values()), depth
    # FG-CAM keeps the base map's location at a shallow layer, where Grad-CAM itself
    # drifts to edges (the point of the example).
    at_block = result.correlations["_blocks.10"]
    assert at_block[fg] > at_block["Grad-CAM"] + 0.2
    assert at_block[f"{fg}-D"] > at_block["Grad-CAM"] + 0.2
    assert result.correlations["input"][fg] > 0

    pixels = read_png(result.figure)
    height, width, _ = pixels.shape
    assert 400 <= height <= 700 and 600 <= width <= 1000  # 2 depths x 4 panels
    assert_not_blank(pixels)
    assert_explains(saved, "per row (FG-CAM's base CAM at head_activation)")
    assert saved[0].colorbars == [example.DISPLAY_SCALE]
    assert "no Grad-CAM" not in capsys.readouterr().out  # drawn, not printed


@pytest.mark.slow
def test_quantus_evaluation(tmp_path: Path) -> None:
    example = load_example("quantus_evaluation")
    result = example.main(["--small", "--out", str(tmp_path)])

    assert result.photos == list(example.SMALL_PHOTOS)
    assert 281 <= result.targets[0] <= 285 and result.targets[1] == 967  # cat, espresso
    metrics = ["Insertion", "Deletion", "AverageDrop", "PixelFlipping"]
    assert list(result.table) == list(example.SMALL_METHODS)
    for method, scores in result.table.items():
        assert list(scores) == metrics, method
        assert all(math.isfinite(v) for v in scores.values()), (method, scores)
        assert 0 <= scores["Insertion"] <= 1 and 0 <= scores["Deletion"] <= 1
        assert 0 <= scores["PixelFlipping"] <= 1 and 0 <= scores["AverageDrop"] <= 100
        # Maps of the class should beat their own reverse: putting back the most
        # important pixels restores the class faster than removing them destroys it.
        assert scores["Insertion"] > scores["Deletion"], method

    text = result.markdown.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(example.SMALL_METHODS)
    for method, scores in result.table.items():
        row = next(line for line in lines if line.startswith(f"| {method} |"))
        assert [float(cell) for cell in row.strip("|").split("|")[1:]] == pytest.approx(
            list(scores.values()), rel=1e-3
        )


def test_vit_figure_names_its_layer_and_scale(tmp_path: Path, saved: list[SavedFigure]) -> None:
    """The ViT example's figure (the example itself runs in test_transformers.py), drawn
    from two made-up maps: a colour bar for the min-max scale and the explained layer."""
    example = load_example("vit_cam")
    x = torch.rand(2, 3, 32, 32)
    maps = {"A": torch.rand(2, 1, 4, 4), "B": torch.rand(2, 1, 4, 4)}
    figure = example.draw(x, maps, tmp_path / "vit.png", "ViT", example.LAYERS[-1])
    assert figure.is_file()
    assert_explains(saved, example.LAYERS[-1])
    assert saved[0].colorbars == [MINMAX_SCALE]


def test_normalize_map_is_the_min_max_the_colour_bar_says() -> None:
    cam = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalize_map(cam), [[0.0, 0.25], [0.5, 1.0]])
    assert not normalize_map(torch.full((1, 3, 3), 7.0)).any()  # constant: all zero
