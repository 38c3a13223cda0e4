"""Images and labels for scoring: the one image loader, folders of images, labels files.

Used by the command line (``explain``, ``evaluate``), the benchmark and the demo. Only
the standard library is imported at module level (``captum-fdcam --help`` reads
:data:`IMAGE_SUFFIXES`); PIL and torch are imported by the functions that decode.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class LabelsError(ValueError):
    """A labels file whose rows are not (file, class index) pairs of this model."""


def first_line(err: BaseException) -> str:
    """``"TypeName: message"`` on one line, at most 300 characters of message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def folder_images(folder: Path) -> list[Path]:
    """The images of a folder, sorted by name: its files with an image suffix. Hidden files
    (``.DS_Store``, the ``._photo.jpg`` AppleDouble files macOS leaves on shared drives),
    sub-folders and other files are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def sample_image() -> Path:
    """The bundled sample photo: scikit-image's ``chelsea`` (a cat; public domain)."""
    from skimage import data

    return Path(data.__file__).parent / "chelsea.png"


def read_image(path: Path) -> Image.Image:
    """The image file, fully decoded (so that a truncated file fails here), as 8-bit RGB
    with 16-bit images scaled (:func:`captum_fdcam.models.read_rgb`).

    Raises:
        ValueError: the file cannot be read as an image; the message is one line that
            names the file.
    """
    from captum_fdcam.models import read_rgb

    try:
        return read_rgb(path)
    # PIL's decoders raise many kinds of errors on a broken file (OSError, SyntaxError,
    # ValueError, struct.error, DecompressionBombError, ...); all mean the same here.
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {first_line(err)}") from err


def load_image(path: Path, size: int = 224) -> torch.Tensor:
    """The image file as the model's input: (1, 3, size, size), ImageNet-normalised
    (:func:`read_image`, then :func:`captum_fdcam.models.preprocess`)."""
    from captum_fdcam.models import preprocess

    return preprocess(read_image(path), size=size)


def read_labels(
    folder: Path, labels: Path | None = None, num_classes: int | None = None
) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from ``labels.csv`` (columns ``file`` and
    ``class_index``; any other columns are ignored), sorted by file name.

    Raises:
        FileNotFoundError: there is no labels file, or images it lists are missing.
        LabelsError: a column is missing, or a class index is not an integer from 0
            to ``num_classes - 1`` (any integer from 0 when ``num_classes`` is None).
    """
    labels = labels or folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"No labels file {labels}: a CSV with columns file,class_index.")
    rows = []
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        absent = [c for c in ("file", "class_index") if c not in columns]
        if absent:
            raise LabelsError(
                f"{labels} has no column {' or '.join(absent)} (its columns: "
                f"{', '.join(columns) or 'none'}); the labels file needs file,class_index"
            )
        for row in reader:
            where = f"{labels} line {reader.line_num}"
            name, text = row["file"] or "", (row["class_index"] or "").strip()
            if not name:
                raise LabelsError(f"{where}: no file name")
            if not re.fullmatch(r"[+-]?\d+", text):
                raise LabelsError(f"{where}: class_index {text!r} is not an integer")
            label = int(text)
            top = "" if num_classes is None else f"-{num_classes - 1}"
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise LabelsError(f"{where}: class_index {label} is out of range (0{top})")
            rows.append((folder / name, label))
    missing = [str(p) for p, _ in rows if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {labels} are missing: {missing[:3]}"
        )
    return sorted(rows, key=lambda r: r[0].name)
