"""Labels files for scoring, and the image functions of :mod:`captum_fdcam.images`
(which they were part of before it), importable from here.

Only the standard library is imported at module level.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from captum_fdcam.images import (  # noqa: F401  (importable from here, as before)
    IMAGE_SUFFIXES,
    first_line,
    folder_images,
    load_image,
    read_image,
    sample_image,
)


class LabelsError(ValueError):
    """A labels file whose rows are not (file, class index) pairs of this model."""


def read_labels(
    folder: Path,
    labels: Path | None = None,
    num_classes: int | None = None,
    *,
    require_files: bool = True,
) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from ``labels.csv`` (columns ``file`` and
    ``class_index``; any other columns are ignored), sorted by file name. A byte-order
    mark (Excel's "CSV UTF-8") is accepted.

    Args:
        folder: the folder the file names are relative to.
        labels: the CSV; default ``folder/labels.csv``.
        num_classes: the model's classes, to check the indices against.
        require_files: every listed image must exist (the benchmark scores them all);
            False: a dataset's labels may list images that are not here.

    Raises:
        FileNotFoundError: there is no labels file, or (``require_files``) images it
            lists are missing.
        LabelsError: a column is missing, or a class index is not an integer from 0
            to ``num_classes - 1`` (any integer from 0 when ``num_classes`` is None).
    """
    labels = labels or folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"No labels file {labels}: a CSV with columns file,class_index.")
    rows = []
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would be
    # read as part of the first column's name.
    with labels.open(newline="", encoding="utf-8-sig") as handle:
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
    if missing and require_files:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {labels} are missing: {missing[:3]}"
        )
    return sorted(rows, key=lambda r: r[0].name)
