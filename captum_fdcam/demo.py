"""The main job: the bundled photograph explained with every method family.

Calls the explain service (:func:`captum_fdcam.app.explain_files`) with fixed
arguments: scikit-image's ``chelsea`` photo (a cat; public domain, shipped inside
scikit-image), the offline pretrained EfficientNet-Lite0, its top class, at
``model.head_activation``, with every CAM of the registry (:mod:`captum_fdcam.registry`)
and FG-Grad-CAM (FG-CAM at the input over Grad-CAM), and writes one PNG: the photo and
an overlay per method.

Usage::

    python -m captum_fdcam.demo [--out figures/demo.png] [--image PATH]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from captum_fdcam.app.requests import ExplainRequest
from captum_fdcam.errors import Interrupted, RequestError
from captum_fdcam.images import sample_image
from captum_fdcam.registry import FG_PREFIX, cam_names

#: The FG-CAM row of the figure.
FG_METHOD = FG_PREFIX + "Grad-CAM"


def demo_methods() -> list[str]:
    """Every CAM of the registry, then FG-Grad-CAM: each family of the library."""
    return [*cam_names(), FG_METHOD]


def write_demo(out: Path, image: Path | None = None) -> Path:
    """Writes the demo figure of ``image`` (default: the bundled photo) to ``out``."""
    from captum_fdcam.app.explain import explain_files

    image = image or sample_image()
    with tempfile.TemporaryDirectory() as folder:
        request = ExplainRequest(
            images=(image,),
            methods=tuple(demo_methods()),
            out=Path(folder),
            save_maps=False,
            progress=False,
        )
        written = explain_files(request, log=_log_but_the_folder(folder))
        figure = next(p for p in written if p.name == f"{image.stem}.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(figure, out)
    return out


def _log_but_the_folder(folder: str) -> Callable[[str], None]:
    # The service's last line names its output folder, a temporary one here that is
    # gone when the demo ends: the demo says where the figure went instead.
    def log(line: str) -> None:
        if folder not in line:
            print(line)

    return log


def main(argv: list[str] | None = None) -> Path:
    """Writes the figure and returns its path; a mistake (an unreadable ``--image``, ...)
    is one line on stderr and exit code 2, as for ``captum-fdcam explain``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figures/demo.png"), help="figure")
    parser.add_argument("--image", type=Path, default=None, help="photo (default: chelsea)")
    args = parser.parse_args(argv)
    try:
        write_demo(args.out, args.image)
    except RequestError as err:
        print(f"captum_fdcam.demo: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from err
    except Interrupted as err:
        print(f"captum_fdcam.demo: {err}", file=sys.stderr)
        raise SystemExit(Interrupted.exit_code) from err
    print(f"Wrote {args.out} ({', '.join(demo_methods())})")
    return args.out


if __name__ == "__main__":
    main()
