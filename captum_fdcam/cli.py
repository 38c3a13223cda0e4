"""The ``captum-fdcam`` command: parse, build a request, call a service, report errors.

::

    captum-fdcam explain photo.jpg --methods Grad-CAM FD-CAM --out figures/
    captum-fdcam explain photos/ --model resnet50 --weights resnet50.pth --layer layer4
    captum-fdcam explain photo.jpg --model timm:vit_base_patch16_224 --weights vit.safetensors
    captum-fdcam evaluate photos/ --methods Grad-CAM FD-CAM --metrics insertion deletion
    captum-fdcam benchmark --data imagenet-sample --tables fdcam-table1 --limit 20

The work is done by the services of :mod:`captum_fdcam.app` (callable from Python with
the same requests). A mistake is one line on stderr and exit code 2 with nothing
written; Ctrl-C is one line saying what was kept, exit code 130. Only the standard
library is imported here: ``--help`` must not wait for torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captum_fdcam import registry
from captum_fdcam.app.common import terminated_as_interrupted
from captum_fdcam.app.requests import (
    BENCHMARK_OUT,
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    BenchmarkRequest,
    EvaluateRequest,
    ExplainRequest,
    ModelRequest,
)
from captum_fdcam.errors import CliArgumentParser, CliError, Interrupted, RequestError
from captum_fdcam.evaluation.metric_info import per_image_metrics
from captum_fdcam.loading import MIN_IMAGE_SIZE, OFFLINE_MODEL, OFFLINE_MODELS

#: evaluate's --metrics choices: the metric table's metrics scored on single images.
EVALUATION_METRICS = per_image_metrics()

__all__ = ["CliError", "build_parser", "main"]


# ----------------------------------------------------------------------- requests


def _model_request(args: argparse.Namespace) -> ModelRequest:
    return ModelRequest(
        args.model, args.weights, args.num_classes, args.layer, args.image_size, args.device
    )


def explain_request(args: argparse.Namespace) -> ExplainRequest:
    return ExplainRequest(
        images=tuple(Path(p) for p in args.images),
        methods=tuple(args.methods),
        model=_model_request(args),
        target=args.target,
        out=args.out,
        progress=not args.quiet,
    )


def evaluate_request(args: argparse.Namespace) -> EvaluateRequest:
    return EvaluateRequest(
        images=tuple(Path(p) for p in args.images),
        labels=args.labels,
        methods=tuple(args.methods),
        metrics=tuple(args.metrics),
        model=_model_request(args),
        limit=args.limit,
        out=args.out,
        progress=not args.quiet,
    )


def benchmark_request(args: argparse.Namespace) -> BenchmarkRequest:
    return BenchmarkRequest(
        data=args.data,
        labels=args.labels,
        out=args.out,
        tables=tuple(args.tables),
        cams=tuple(args.cams),
        model=args.model,
        limit=args.limit,
        mosaics=args.mosaics,
        image_size=args.image_size,
        labelled_only=args.labelled_only,
        fast_cpu=args.fast_cpu,
        tables_only=args.tables_only,
        progress=not args.quiet,
    )


def _explain(args: argparse.Namespace) -> Any:
    from captum_fdcam.app import explain_files

    return explain_files(explain_request(args))


def _evaluate(args: argparse.Namespace) -> Any:
    from captum_fdcam.app import evaluate_files

    return evaluate_files(evaluate_request(args))


def _benchmark(args: argparse.Namespace) -> Any:
    from captum_fdcam import benchmark

    try:
        return benchmark.run(benchmark_request(args))
    finally:
        benchmark.teardown()


# ------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or not action.option_strings:
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", default=OFFLINE_MODEL, help=f"{OFFLINE_MODEL} (default: the offline "
        "pretrained ImageNet model), a torchvision architecture name with --weights, a "
        "TorchScript file, timm:NAME (resnet50, vit_base_patch16_224, ...) with --weights, "
        "or hf:DIR (a Hugging Face image classifier's save_pretrained folder); nothing is "
        "downloaded")  # fmt: skip
    add("--weights", type=Path, help="state dict (.pth, .pt or .safetensors) for a "
        "torchvision or timm: architecture (default: none; needed with one)")  # fmt: skip
    add("--num-classes", type=_positive_int, help="classes of the torchvision model "
        "(default: 1000; timm: and hf: models read theirs from the checkpoint)")  # fmt: skip
    add("--layer", help="module name of the layer to explain, as the model names it "
        "(default: by family: the offline model's head_activation, a ViT's last block's "
        "first norm, Swin's final norm, ConvNeXt's last stage, else the last Conv2d; "
        "printed)")  # fmt: skip
    lrp = ", ".join(m.class_name for m in registry.REGISTRY if not m.layer)
    add("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
        help=f"any of {', '.join(registry.cam_names())}; 'FG-' + one of them for FG-CAM "
        f"at the input; the LRP baselines {lrp}; or a Captum attribution class name "
        "(IntegratedGradients, LayerGradCam, ...)")  # fmt: skip
    add("--image-size", type=_positive_int, help="images are resized to SIZE * 256 / 224 "
        "and centre-cropped to SIZE, then normalised with ImageNet's mean and std "
        "(default: 224); timm: and hf: models take their checkpoint's size, crop share, "
        "mean and std, SIZE replacing the size")  # fmt: skip
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add("--quiet", action="store_true", help="no progress bars")


def _add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from captum_fdcam.benchmark import TABLES

    add = parser.add_argument
    add("--data", type=Path, required=True,
        help="folder of images with a labels.csv (columns file,class_index); required")  # fmt: skip
    add("--labels", type=Path, help="labels CSV (default: DATA/labels.csv)")
    add("--labelled-only", action="store_true", help="score only the images the labels "
        "file lists (default: an image of DATA without a label is an error)")  # fmt: skip
    add("--out", type=Path, default=BENCHMARK_OUT, help="output folder: scores, run.json, "
        "tables, paired differences, plots; a run resumes the scores already there, and "
        "refuses one of other data, image size or weights (default: ./"
        f"{BENCHMARK_OUT} in the current directory)")  # fmt: skip
    add("--tables", nargs="+", choices=TABLES, default=list(TABLES), metavar="TABLE",
        help=f"any of {', '.join(TABLES)} (default: all)")  # fmt: skip
    cams = registry.cam_names()
    add("--cams", nargs="+", choices=cams, default=list(cams), metavar="CAM",
        help=f"the CAMs of the tables, any of {', '.join(cams)} (default: all)")  # fmt: skip
    # Numbers are checked by the service (one line, nothing written), as from Python.
    add("--limit", type=int, help="the first N images by file name (default: all)")
    # 24: the minimum. The 500-photo sample has 307 photos the model gives
    # >= 0.5 to (one class each): 76 mosaics of all, 32 of the first 200, 16 of 100.
    add("--mosaics", type=int, default=24, help="GridPG mosaics, at most: fewer when the "
        "images' confidently classified classes run out (default: %(default)s)")  # fmt: skip
    add("--model", choices=list(OFFLINE_MODELS), default=OFFLINE_MODEL, help="the offline "
        f"pretrained model: any of {', '.join(OFFLINE_MODELS)} (default: %(default)s)")  # fmt: skip
    add("--image-size", type=int, help=f"resize/crop size, at least {MIN_IMAGE_SIZE} "
        "(default: the model's own, 224, 240 or 260)")  # fmt: skip
    add("--fast-cpu", action="store_true", help="channels-last memory format, and the "
        "metrics' passes on a copy with BatchNorm folded into the convolutions: about 2x "
        "faster on CPUs, scores equal up to float rounding; part of the run's identity, so "
        "a folder is never resumed the other way (default: off)")  # fmt: skip
    add("--tables-only", action="store_true", help="compute nothing: write the tables, "
        "paired differences and plots of the records already in --out, as after a stopped "
        "run, whose tables are those of the run before; refused while a run writes --out "
        "(default: off)")  # fmt: skip
    add("--quiet", action="store_true", help="no progress bar (default: a bar per rank)")


def _sub(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name, help=help, description=description, formatter_class=_HelpFormatter
    )
    parser.set_defaults(_parser=parser)
    return parser


def build_parser(prog: str = "captum-fdcam") -> argparse.ArgumentParser:
    from captum_fdcam import benchmark

    parser = CliArgumentParser(
        prog=prog,
        description="Explain images with CAM methods, evaluate them with Quantus metrics, "
        "reproduce the papers' tables. 'captum-fdcam COMMAND --help' for each command.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    explain = _sub(sub, "explain", "explain images with CAM methods: overlay figures and "
        "raw maps", "Explains each image with each method and writes, to --out, "
        "<stem>.png (the photo and an overlay per method), <stem>.<method>.npy (each map, "
        "H x W at the input size) and, for several images, comparison.png.")  # fmt: skip
    explain.add_argument("images", nargs="*", help="image files and/or folders of images "
        "(default: the bundled sample photo, scikit-image's chelsea)")  # fmt: skip
    _add_model_arguments(explain)
    explain.add_argument("--target", type=int, help="class to explain (default: top class)")
    explain.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    explain.set_defaults(handler=_explain)

    evaluate = _sub(sub, "evaluate", "score methods with Quantus metrics on images",
        "Scores each method on each image and writes, to --out, scores.jsonl (a record "
        "per image and method; a second run resumes them), scores.json and scores.md "
        "(means with bootstrap 95% CIs) and the mean insertion/deletion curves.")  # fmt: skip
    evaluate.add_argument("images", nargs="+", help="image files and/or folders of images; "
        "required")  # fmt: skip
    evaluate.add_argument("--labels", type=Path, help="CSV with columns file,class_index; "
        "it may list more images than are scored (default: labels.csv in the images' "
        "folder if present, else the model's top class)")  # fmt: skip
    _add_model_arguments(evaluate)
    evaluate.add_argument("--metrics", nargs="+", choices=EVALUATION_METRICS,
        default=list(DEFAULT_METRICS), metavar="METRIC",
        help=f"any of {', '.join(EVALUATION_METRICS)}")  # fmt: skip
    evaluate.add_argument("--limit", type=_positive_int, help="first N images only "
        "(default: all)")  # fmt: skip
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    evaluate.set_defaults(handler=_evaluate)

    bench = _sub(sub, "benchmark", "reproduce the papers' tables on a labelled image folder",
        (benchmark.__doc__ or "").split("\n\n")[0])  # fmt: skip
    _add_benchmark_arguments(bench)
    bench.set_defaults(handler=_benchmark)
    return parser


def benchmark_parser(prog: str) -> argparse.ArgumentParser:
    """The benchmark command on its own (``python -m captum_fdcam.benchmark``)."""
    from captum_fdcam import benchmark

    parser = CliArgumentParser(prog=prog, description=(benchmark.__doc__ or "").split("\n\n")[0])
    _add_benchmark_arguments(parser)
    parser.set_defaults(handler=_benchmark, _parser=parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "captum-fdcam") -> int:
    """Runs a command; returns its exit status (0, 2 for a mistake, 130 for Ctrl-C).
    With another ``prog``, runs the benchmark command alone under that name."""
    if prog == "captum-fdcam":
        args = build_parser(prog).parse_args(argv)
        name = f"{prog} {args.command}"
    else:
        args, name = benchmark_parser(prog).parse_args(argv), prog
    try:
        with terminated_as_interrupted():
            args.handler(args)
    except RequestError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except Interrupted as err:
        print(f"{name}: {err}", file=sys.stderr)
        return Interrupted.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
