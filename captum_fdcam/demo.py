"""The main job: ``captum-fdcam explain`` on the bundled photograph, with every method.

Runs the ``explain`` command with fixed arguments: scikit-image's ``chelsea`` photo (a
cat; public domain, shipped inside scikit-image), the offline pretrained
EfficientNet-Lite0, its top class, at ``model.head_activation``, with every CAM of the
registry (:mod:`captum_fdcam.registry`) and FG-Grad-CAM (FG-CAM at the input over
Grad-CAM), and writes one PNG: the photo and an overlay per method.

Usage::

    python -m captum_fdcam.demo [--out figures/demo.png] [--image PATH]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from captum_fdcam import cli
from captum_fdcam.errors import CliError
from captum_fdcam.evaluation.data import sample_image
from captum_fdcam.registry import FG_PREFIX, cam_names

#: The FG-CAM row of the figure.
FG_METHOD = FG_PREFIX + "Grad-CAM"


def demo_methods() -> list[str]:
    """Every CAM of the registry, then FG-Grad-CAM: each family of the library."""
    return [*cam_names(), FG_METHOD]


def main(argv: list[str] | None = None) -> Path:
    """Writes the figure and returns its path; a mistake (an unreadable ``--image``, ...)
    is one line on stderr and exit code 2, as for ``captum-fdcam explain``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/demo.png"), help="figure")
    parser.add_argument("--image", type=Path, default=None, help="photo (default: chelsea)")
    args = parser.parse_args(argv)
    image = args.image or sample_image()
    with tempfile.TemporaryDirectory() as folder:
        command = ["explain", str(image), "--methods", *demo_methods(), "--out", folder]
        explain_args = cli.build_parser().parse_args([*command, "--quiet"])
        try:
            written = cli.run_explain(explain_args)
        except CliError as err:
            print(f"captum_fdcam.demo: error: {err}", file=sys.stderr)
            raise SystemExit(2) from err
        # explain also writes each map as .npy; the demo keeps only the figure.
        figure = next(p for p in written if p.name == f"{image.stem}.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(figure, args.out)
    print(f"Wrote {args.out} ({', '.join(demo_methods())})")
    return args.out


if __name__ == "__main__":
    main()
