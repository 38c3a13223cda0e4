"""The ``captum-fdcam`` command: explain images, evaluate methods, reproduce the tables.

::

    captum-fdcam explain photo.jpg --methods Grad-CAM FD-CAM --out figures/
    captum-fdcam explain photos/ --model resnet50 --weights resnet50.pth --layer layer4
    captum-fdcam evaluate photos/ --methods Grad-CAM FD-CAM --metrics insertion deletion
    captum-fdcam benchmark --data imagenet-sample --tables fdcam-table1 --limit 20

Errors a user can fix (a missing or unreadable file, an unknown layer, method or
architecture, CUDA without a GPU) are reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from captum_fdcam import METHODS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
OFFLINE_MODEL = "efficientnet-lite0"
EVALUATION_METRICS = (
    "insertion",
    "deletion",
    "average_drop",
    "average_increase",
    "pixel_flipping",
    "faithfulness_correlation",
)


class CliError(Exception):
    """A mistake in the command's arguments or files: printed as one line, exit code 2."""


# ------------------------------------------------------------------------- inputs


def image_paths(specs: Sequence[str | Path]) -> list[Path]:
    """The images named on the command line: files as given, folders by image suffix."""
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CliError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"no such file or folder: {path}")
    return paths


def sample_image() -> Path:
    """The bundled sample photo: scikit-image's ``chelsea`` (a cat; public domain)."""
    from skimage import data

    return Path(data.__file__).parent / "chelsea.png"


def read_image(path: Path) -> Image.Image:
    """The image as RGB, or a one-line error for a file PIL cannot decode."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"cannot read image {path} (not an image PIL can decode)") from err


def check_images(paths: Sequence[Path]) -> None:
    """Fails before any work starts if a file is not a readable image (headers only)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise CliError(f"cannot read image {path} (not an image PIL can decode)") from err


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA was asked for, but no GPU is available")
    return device


# ------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its class names, and whether it is TorchScript."""

    module: nn.Module
    categories: list[str]
    scripted: bool = False


def _class_names(n: int) -> list[str]:
    from captum_fdcam.models import imagenet_categories

    return imagenet_categories() if n == 1000 else [f"class {i}" for i in range(n)]


def load_model(
    spec: str, weights: Path | None, num_classes: int, device: torch.device
) -> LoadedModel:
    """The offline EfficientNet-Lite0, a torchvision architecture with a local state
    dict, or a TorchScript file."""
    if spec == OFFLINE_MODEL:
        if weights is not None:
            raise CliError(f"--weights is for torchvision architectures, not {OFFLINE_MODEL}")
        from captum_fdcam.models import efficientnet_lite0

        return LoadedModel(efficientnet_lite0(pretrained=True).to(device), _class_names(1000))
    path = Path(spec)
    if path.suffix in {".pt", ".pth", ".ts", ".jit"} or path.is_file():
        if not path.is_file():
            raise CliError(f"no such model file: {path}")
        try:
            module = torch.jit.load(str(path), map_location=device)
        except RuntimeError as err:
            raise CliError(f"{path} is not a TorchScript file: {err}".splitlines()[0]) from err
        out = module(torch.zeros(1, 3, 224, 224, device=device))
        return LoadedModel(module.eval(), _class_names(out.shape[-1]), scripted=True)
    import torchvision

    if spec not in torchvision.models.list_models(module=torchvision.models):
        raise CliError(
            f"unknown model {spec!r}: use {OFFLINE_MODEL}, a torchvision classification "
            "architecture (resnet50, vgg16_bn, ...) with --weights, or a TorchScript file"
        )
    if weights is None:
        raise CliError(f"--model {spec} needs --weights FILE (a local state dict; no downloads)")
    if not weights.is_file():
        raise CliError(f"no such weights file: {weights}")
    model = torchvision.models.get_model(spec, weights=None, num_classes=num_classes)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    except (RuntimeError, OSError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CliError(f"cannot load {weights} into {spec}: {first}") from err
    return LoadedModel(model.eval().to(device), _class_names(num_classes))


def resolve_layer(model: LoadedModel, name: str | None) -> str:
    """The layer's module name: as given (checked), or the default, printed."""
    from captum_fdcam.evaluation import find_layer

    if model.scripted:
        return name or ""
    try:
        module = find_layer(model.module, name)
    except ValueError as err:
        raise CliError(str(err)) from err
    found = next(n for n, m in model.module.named_modules() if m is module)
    if name is None:
        print(f"layer: {found} ({type(module).__name__}; default, pass --layer to change)")
    return found


def check_methods(names: Sequence[str], scripted: bool) -> None:
    """Unknown names, and layer methods on TorchScript (which has no hooks), are errors."""
    from captum.attr import LayerAttribution

    from captum_fdcam.evaluation import method_class
    from captum_fdcam.evaluation.explain import FG_PREFIX

    for name in names:
        try:
            cls = method_class(name.removeprefix(FG_PREFIX))
        except (ValueError, TypeError) as err:
            raise CliError(str(err)) from err
        if scripted and (name.startswith(FG_PREFIX) or issubclass(cls, LayerAttribution)):
            raise CliError(
                f"{name} needs forward hooks, which TorchScript models do not support: use a "
                "Python model, or an input method such as IntegratedGradients or Saliency"
            )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, disable=not enabled, leave=False)


# ------------------------------------------------------------------------ explain


def run_explain(args: argparse.Namespace) -> list[Path]:
    """Explains each image with each method; writes ``<stem>.png`` (an overlay per
    method), ``<stem>.<method>.npy`` (the (H, W) map at the input size) and, for several
    images, ``comparison.png``. Returns the files written."""
    from captum_fdcam.evaluation import explain
    from captum_fdcam.models import denormalize, preprocess
    from captum_fdcam.visualization import comparison_figure, overlay_figure

    paths = image_paths(args.images or [sample_image()])
    check_images(paths)
    device = resolve_device(args.device)
    model = load_model(args.model, args.weights, args.num_classes, device)
    check_methods(args.methods, model.scripted)
    layer = resolve_layer(model, args.layer)
    if args.target is not None and not 0 <= args.target < len(model.categories):
        raise CliError(
            f"--target {args.target} is not a class of this model (0-{len(model.categories) - 1})"
        )
    out: Path = args.out
    written: list[Path] = []
    rows = []
    for path in _progress(paths, not args.quiet, "images"):
        x = preprocess(read_image(path), size=args.image_size).to(device)
        with torch.no_grad():
            probs = model.module(x).softmax(dim=-1)[0]
        target = int(probs.argmax()) if args.target is None else args.target
        label = f"{model.categories[target]} ({probs[target]:.1%})"
        print(f"{path.name}: class {target}, {label}")
        maps = {}
        for method in args.methods:
            a = explain(
                model.module, x, [target], method=method, layer=layer or None, device=device
            )
            maps[method] = a[0, 0]
            written.append(out / f"{path.stem}.{_slug(method)}.npy")
            written[-1].parent.mkdir(parents=True, exist_ok=True)
            np.save(written[-1], maps[method])
        image = denormalize(x)[0].permute(1, 2, 0).cpu().numpy()
        title = f"{path.name}: {label}" + (f", layer {layer}" if layer else "")
        written.append(overlay_figure(image, maps, out / f"{path.stem}.png", title=title))
        rows.append((f"{path.name}\n{model.categories[target]}", image, maps))
    if len(rows) > 1:
        written.append(comparison_figure(rows, out / "comparison.png"))
    print(f"wrote {len(written)} files to {out}")
    return written


# ----------------------------------------------------------------------- evaluate


def _targets(folder: Path, paths: list[Path], labels: Path | None) -> dict[Path, int] | None:
    """Each image's class from the labels file (file names relative to the image folder)."""
    if labels is None:
        return None
    from captum_fdcam.benchmark import read_labels

    try:
        pairs = read_labels(folder, labels)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise CliError(f"bad labels file {labels}: {err}") from err
    known = {p.resolve(): c for p, c in pairs}
    missing = [p.name for p in paths if p.resolve() not in known]
    if missing:
        raise CliError(f"{len(missing)} images have no label in {labels}: {missing[:3]}")
    return {p: known[p.resolve()] for p in paths}


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Scores each method on each image with the chosen metrics; writes
    ``scores.jsonl`` (per image), ``scores.json`` and ``scores.md`` (means with bootstrap
    95% CIs) and the mean insertion/deletion curve plots. Returns the summary."""
    from captum_fdcam.benchmark import Job, markdown, plot_curves, score_job, summarise
    from captum_fdcam.models import preprocess

    paths = image_paths([args.folder])[: args.limit]
    check_images(paths)
    labels = args.labels
    if labels is None and (Path(args.folder) / "labels.csv").is_file():
        labels = Path(args.folder) / "labels.csv"
    targets = _targets(Path(args.folder), paths, labels)
    device = resolve_device(args.device)
    model = load_model(args.model, args.weights, args.num_classes, device)
    check_methods(args.methods, model.scripted)
    layer = resolve_layer(model, args.layer)
    jobs = [Job("evaluate", m, m, layer or None, metrics=tuple(args.metrics)) for m in args.methods]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with (out / "scores.jsonl").open("w") as handle:
        for path in _progress(paths, not args.quiet, "images"):
            x = preprocess(read_image(path), size=args.image_size).to(device)
            if targets is None:
                with torch.no_grad():
                    y = model.module(x).argmax(dim=-1).cpu().numpy()
            else:
                y = np.array([targets[path]])
            for job in jobs:
                scores = score_job(model.module, job, x.cpu().numpy(), y, None)
                record = {"table": "evaluate", "method": job.name, "item": path.name}
                records.append({**record, "scores": scores})
                handle.write(json.dumps(records[-1]) + "\n")
    tables = summarise(records)
    (out / "scores.json").write_text(json.dumps(tables, indent=1))
    source = f"labels from {labels}" if labels else "the model's top class as target"
    header = f"# {len(paths)} images of {args.folder} ({args.model}, {source})"
    (out / "scores.md").write_text(markdown(tables, header))
    plot_curves(tables, out)
    print(markdown(tables, header))
    print(f"wrote {out}")
    return tables


# ---------------------------------------------------------------------- benchmark


def run_benchmark(args: argparse.Namespace) -> Any:
    from captum_fdcam import benchmark

    if not args.data.is_dir():
        raise CliError(f"no such folder: {args.data}")
    try:
        return benchmark.run(args)
    except FileNotFoundError as err:
        raise CliError(str(err)) from err
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------- parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=OFFLINE_MODEL,
        help=f"{OFFLINE_MODEL} (default: the offline pretrained ImageNet model), a "
        "torchvision architecture name with --weights, or a TorchScript file",
    )
    parser.add_argument("--weights", type=Path, help="state dict for a torchvision architecture")
    parser.add_argument(
        "--num-classes", type=int, default=1000, help="classes of the torchvision model"
    )
    parser.add_argument(
        "--layer",
        help="module name of the layer to explain (default: the model's head_activation, "
        "else its last Conv2d; printed)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["Grad-CAM", "FD-CAM"],
        metavar="METHOD",
        help=f"any of {', '.join(METHODS)}; 'FG-' + one of them for FG-CAM at the input; "
        "or a Captum attribution class name (IntegratedGradients, LayerGradCam, ...)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="resize/crop size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from captum_fdcam import benchmark

    parser = argparse.ArgumentParser(
        prog="captum-fdcam",
        description="Explain images with CAM methods, evaluate them with Quantus metrics, "
        "reproduce the papers' tables. 'captum-fdcam COMMAND --help' for each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = sub.add_parser(
        "explain",
        help="explain images with CAM methods: overlay figures and raw maps",
        description="Explains each image with each method and writes, to --out, "
        "<stem>.png (the photo and an overlay per method), <stem>.<method>.npy (each map, "
        "H x W at the input size) and, for several images, comparison.png (images x "
        "methods).",
    )
    explain.add_argument(
        "images",
        nargs="*",
        help="image files and/or folders of images (default: the bundled sample photo, "
        "scikit-image's chelsea)",
    )
    _add_model_arguments(explain)
    explain.add_argument("--target", type=int, help="class to explain (default: top prediction)")
    explain.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    explain.set_defaults(handler=run_explain)

    evaluate = sub.add_parser(
        "evaluate",
        help="score methods with Quantus metrics over a folder of images",
        description="Scores each method on each image of FOLDER and writes, to --out, "
        "scores.jsonl (per image), scores.json and scores.md (means with bootstrap 95%% "
        "CIs) and the mean insertion/deletion curves as PNG.",
    )
    evaluate.add_argument("folder", help="folder of images")
    evaluate.add_argument(
        "--labels",
        type=Path,
        help="CSV with columns file,class_index (default: FOLDER/labels.csv if present, "
        "else the model's top class)",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        choices=EVALUATION_METRICS,
        default=["insertion", "deletion", "average_drop", "average_increase"],
    )
    evaluate.add_argument("--limit", type=int, help="first N images only")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    evaluate.set_defaults(handler=run_evaluate)

    bench = sub.add_parser(
        "benchmark",
        help="reproduce the papers' tables on a labelled image folder",
        description=benchmark.__doc__.split("\n\n")[0],
    )
    benchmark.add_arguments(bench)
    bench.set_defaults(handler=run_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except CliError as err:
        print(f"captum-fdcam {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
