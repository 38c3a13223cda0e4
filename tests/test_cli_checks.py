"""The command line checks everything before the model runs (issue 14, item 4): each
mistake is one line on stderr, exit code 2, no traceback and nothing written; images
are read right (16-bit, hidden files); ``--help`` shows every default and does not
import torch."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_fdcam import cli
from captum_fdcam.app.common import checked_images
from captum_fdcam.images import image_paths, read_image
from captum_fdcam.models import preprocess

pytest.importorskip("efficientnet_lite_pytorch")


def _picture(seed: int = 0) -> np.ndarray:
    """A small RGB picture with smooth regions and edges, 40 x 48."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :48]
    base = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1) + rng.integers(0, 20, (40, 48, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit greyscale (H, W) or RGB (H, W, 3) PNG: PIL cannot write 16-bit RGB."""
    big_endian = np.asarray(values, dtype=">u2")
    height, width = big_endian.shape[:2]
    rows = b"".join(b"\0" + row.tobytes() for row in big_endian)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    colour = 2 if big_endian.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two good photos, a random ResNet-18 (10 classes) as a state dict, and broken
    variants of each."""
    folder = tmp_path_factory.mktemp("files")
    photos = folder / "photos"
    photos.mkdir()
    Image.fromarray(_picture(0)).save(photos / "a.png")
    Image.fromarray(_picture(1)).save(photos / "b.jpg")
    broken = folder / "broken"
    broken.mkdir()
    Image.fromarray(_picture(0)).save(broken / "a.png")  # sorted first: explained first
    whole = (photos / "b.jpg").read_bytes()
    (broken / "b.jpg").write_bytes(whole[: len(whole) // 2])
    torch.manual_seed(0)
    weights = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    data = weights.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "text.pth").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), folder / "tensor.pth")
    (folder / "a-file").write_text("x")
    return {
        "photos": photos,
        "photo": photos / "a.png",
        "broken": broken,
        "weights": weights,
        "root": folder,
    }


def _resnet(files: dict[str, Path], weights: str = "weights") -> list[str]:
    path = files[weights] if weights in files else files["root"] / weights
    return ["--model", "resnet18", "--weights", str(path), "--num-classes", "10"]


def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        return int(exit_info.code or 0)


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs the command, expecting exit code 2 and one line on stderr naming the
    command, no traceback."""
    code = _main([*argv, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"captum-fdcam {argv[0]}: error:"), err
    return err


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path) -> str:
    """:func:`_error_line` with ``--out out``, which must not be created."""
    err = _error_line(capsys, [*argv, "--out", str(out)])
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return err


MISTAKES: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    # A good image, then a truncated one: the good one used to be written first.
    "truncated image": (
        lambda f: ["explain", str(f["broken"]), *_resnet(f), "--image-size", "32"],
        "cannot read image {root}/broken/b.jpg: OSError",
    ),
    "layer not 4-D": (
        lambda f: ["explain", str(f["photos"]), *_resnet(f), "--layer", "fc"],
        "--layer fc gives (1, 10), not a 4-D (N, C, H, W) feature map",
    ),
    "layer run twice": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--layer", "layer4.1.relu"],
        "--layer layer4.1.relu runs 2 times per forward pass",
    ),
    "text file as weights": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f, "text.pth")],
        "--weights {root}/text.pth is not a PyTorch checkpoint",
    ),
    "truncated weights": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f, "truncated.pth")],
        "--weights {root}/truncated.pth is not a PyTorch checkpoint",
    ),
    "weights not a state dict": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f, "tensor.pth")],
        "holds a Tensor, not a state dict",
    ),
    "weights of other classes": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--num-classes", "5"],
        "(is --num-classes right?)",
    ),
    "unknown method": (
        lambda f: ["explain", str(f["photo"]), "--methods", "Grad-CAM", "Grad-CAM+++"],
        "Unknown method 'Grad-CAM+++'",
    ),
    "method without its window": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--methods", "Occlusion"],
        "Occlusion needs sliding_window_shapes, which the command line cannot pass",
    ),
    "method without baselines": (
        lambda f: ["evaluate", str(f["photos"]), *_resnet(f), "--methods", "GradientShap"],
        "GradientShap needs baselines",
    ),
    "method that wraps another": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--methods", "NoiseTunnel"],
        "NoiseTunnel wraps another method",
    ),
    "base class": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--methods", "LayerCamBase"],
        "LayerCamBase is a base class, not a method",
    ),
    "method without a target": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--methods", "LayerActivation"],
        "LayerActivation takes no target class",
    ),
    "FG-CAM over an input method": (
        lambda f: ["explain", str(f["photo"]), *_resnet(f), "--methods", "FG-Saliency"],
        "FG-CAM works over a CAM",
    ),
    "image size 0": (
        lambda f: ["explain", str(f["photo"]), "--image-size", "0"],
        "argument --image-size: must be at least 1, got 0",
    ),
    "negative image size": (
        lambda f: ["evaluate", str(f["photos"]), "--image-size", "-3"],
        "argument --image-size: must be at least 1, got -3",
    ),
    "image size too small for the model": (
        lambda f: ["explain", str(f["photo"]), "--image-size", "16"],
        "the model cannot run on 16 x 16 images (--image-size 16)",
    ),
    "meta device": (
        lambda f: ["explain", str(f["photo"]), "--device", "meta"],
        "--device meta cannot run the model",
    ),
    "limit 0": (
        lambda f: ["evaluate", str(f["photos"]), "--limit", "0"],
        "argument --limit: must be at least 1, got 0",
    ),
    "no classes": (
        lambda f: ["explain", str(f["photo"]), "--model", "resnet18", "--num-classes", "0"],
        "argument --num-classes: must be at least 1, got 0",
    ),
    "unknown metric": (
        lambda f: ["evaluate", str(f["photos"]), "--metrics", "accuracy"],
        "argument --metrics: invalid choice: 'accuracy'",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_one_line_and_writes_nothing(
    mistake: str, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    build, expected = MISTAKES[mistake]
    err = _one_line_error(capsys, build(files), tmp_path / "out")
    assert expected.format(root=files["root"]) in err, err


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_out_must_be_a_writable_folder(
    command: str, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    argv = [command, str(files["photos"]), *_resnet(files), "--image-size", "32"]
    a_file = files["root"] / "a-file"
    err = _error_line(capsys, [*argv, "--out", str(a_file)])
    assert f"--out {a_file} is a file, not a folder" in err
    assert a_file.read_text() == "x"
    under = a_file / "figures"
    err = _error_line(capsys, [*argv, "--out", str(under)])
    assert f"--out {under}: {a_file} is a file, not a folder" in err


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into read-only folders: 'not writable' cannot happen",
)
def test_out_in_a_read_only_folder(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = ["explain", str(files["photo"]), *_resnet(files), "--image-size", "32"]
        err = _one_line_error(capsys, argv, locked / "out")
        assert f"{locked} is not writable" in err
    finally:
        locked.chmod(0o755)


def _labels(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "labels.csv"
    path.write_text("file,class_index\n" + "".join(f"{f},{c}\n" for f, c in rows))
    return path


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("12", "1 labels in {labels} are not classes of this model .0-9.: b.jpg: 12"),
        # Negative labels: refused by read_labels itself, or by the range check.
        ("-1", "(not classes of this model .0-9.: b.jpg: -1|line 3: class_index -1 is out)"),
        ("x", "{labels}.*(not an integer|invalid literal for int)"),
    ],
)
def test_labels_must_be_classes_of_the_model(
    label: str, expected: str, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    labels = _labels(tmp_path, [("a.png", "3"), ("b.jpg", label)])
    argv = ["evaluate", str(files["photos"]), *_resnet(files), "--image-size", "32"]
    argv += ["--labels", str(labels), "--methods", "Grad-CAM", "--metrics", "insertion"]
    err = _one_line_error(capsys, argv, tmp_path / "out")
    assert re.search(expected.format(labels=re.escape(str(labels))), err), err


def test_a_float_image_outside_0_1_is_named(tmp_path: Path, capsys) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(_picture()[..., 0].astype(np.float32)).save(path)  # 0-255, not 0-1
    err = _one_line_error(capsys, ["explain", str(path)], tmp_path / "out")
    assert f"cannot read image {path}: ValueError: a 32-bit float image needs values" in err


def test_16_bit_images_read_as_their_8_bit_versions(tmp_path: Path) -> None:
    rgb = _picture()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(rgb).save(tmp_path / "rgb8.png")
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    write_png16(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257)
    write_png16(tmp_path / "grey16.png", grey.astype(np.uint16) * 257)
    wide = grey.astype(np.uint16) * 257
    Image.fromarray(wide.astype(">u2")).save(tmp_path / "grey16b.tif")
    Image.fromarray(wide.astype(np.int32)).save(tmp_path / "grey32.tif")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "float.tif")
    modes = {}
    for name, same_as in [
        ("rgb16.png", "rgb8.png"),
        ("grey16.png", "grey8.png"),
        ("grey16b.tif", "grey8.png"),
        ("grey32.tif", "grey8.png"),
        ("float.tif", "grey8.png"),
    ]:
        with Image.open(tmp_path / name) as image:
            modes[name] = image.mode
        x = preprocess(read_image(tmp_path / name), size=32)
        torch.testing.assert_close(x, preprocess(read_image(tmp_path / same_as), size=32))
    # The modes PIL gives these files: the cases the reader must scale.
    assert modes == {
        "rgb16.png": "RGB",
        "grey16.png": "I;16",
        "grey16b.tif": "I;16B",
        "grey32.tif": "I",
        "float.tif": "F",
    }
    # Arrays too: uint16 greyscale and RGB as their 8-bit versions.
    torch.testing.assert_close(preprocess(wide, size=32), preprocess(grey, size=32))
    rgb16 = rgb.astype(np.uint16) * 257
    torch.testing.assert_close(preprocess(rgb16, size=32), preprocess(rgb, size=32))


def test_a_16_bit_photo_is_explained_as_its_8_bit_version(files: dict[str, Path], tmp_path):
    rgb = np.asarray(Image.open(files["photo"]).convert("RGB"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey).save(tmp_path / "eight.png")
    write_png16(tmp_path / "sixteen.png", grey.astype(np.uint16) * 257)
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "eight.png"), str(tmp_path / "sixteen.png")]
    argv += [*_resnet(files), "--image-size", "32", "--methods", "Grad-CAM", "--target", "1"]
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(
        np.load(out / "sixteen.grad-cam.npy"), np.load(out / "eight.grad-cam.npy")
    )


def test_hidden_files_and_sub_folders_are_skipped(tmp_path: Path) -> None:
    Image.fromarray(_picture()).save(tmp_path / "photo.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "._photo.jpg").write_bytes(b"\0\5\x16\7AppleDouble")  # macOS metadata
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "raw").mkdir()
    (tmp_path / "album.png").mkdir()  # a folder with an image suffix
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_paths([tmp_path]) == [tmp_path / "photo.jpg"]
    checked_images(image_paths([tmp_path]))
    # Named on the command line, a file is taken as given, hidden or not.
    assert image_paths([tmp_path / "._photo.jpg"]) == [tmp_path / "._photo.jpg"]


def test_a_broken_file_with_an_image_suffix_is_named(tmp_path: Path, capsys) -> None:
    Image.fromarray(_picture()).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("not a PNG")
    err = _one_line_error(capsys, ["explain", str(tmp_path)], tmp_path / "out")
    assert f"cannot read image {tmp_path / 'bad.png'}" in err


def _help_entries(text: str) -> dict[str, str]:
    """Each argument of a ``--help`` text and its help, lines joined."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^  \S", line):  # an argument's first line
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif line.startswith("   ") and current is not None:
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["explain", "evaluate", "benchmark"])
def test_every_option_shows_its_default(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert "--out" in entries and "--quiet" in entries, entries
    for name, entry in entries.items():
        if name in {"-h", "folder"}:  # help itself; evaluate's one required argument
            continue
        assert "default" in entry or "required" in entry, entry


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_help_states_the_defaults_as_typed(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert "(default: Grad-CAM FD-CAM)" in entries["--methods"]
    assert "(default: 224)" in entries["--image-size"]
    assert "(default: cpu)" in entries["--device"]
    assert "(default: off)" in entries["--quiet"]


def test_parsing_the_command_line_imports_neither_torch_nor_the_methods() -> None:
    """What keeps ``captum-fdcam --help`` fast: torch and Captum take seconds to import."""
    code = (
        "import sys, captum_fdcam.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'captum', 'numpy', 'PIL', 'captum_fdcam.methods') "
        "if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_package_imports_its_names_on_first_use() -> None:
    code = (
        "import sys, captum_fdcam as p; assert 'torch' not in sys.modules; "
        "assert set(p.__all__) <= set(dir(p)); "
        "from captum_fdcam import LayerFDCam, METHODS; "
        "assert METHODS['FD-CAM'] is LayerFDCam and p.METHODS is METHODS; "
        "assert all(getattr(p, n) is not None for n in p.__all__); "
        "from captum_fdcam.methods.switching import LayerFDCam as direct; "
        "assert direct is LayerFDCam and p.methods.LayerFDCam is LayerFDCam; "
        "print(p.__version__)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0.1.0"
    with pytest.raises(AttributeError, match="has no attribute 'LayerNoCam'"):
        import captum_fdcam

        captum_fdcam.LayerNoCam  # noqa: B018
