"""The ``captum-fdcam`` command: explain images, evaluate methods, reproduce the tables.

::

    captum-fdcam explain photo.jpg --methods Grad-CAM FD-CAM --out figures/
    captum-fdcam explain photos/ --model resnet50 --weights resnet50.pth --layer layer4
    captum-fdcam explain photo.jpg --model timm:vit_base_patch16_224 --weights vit.safetensors
    captum-fdcam explain photo.jpg --model hf:path/to/save_pretrained-folder
    captum-fdcam evaluate photos/ --methods Grad-CAM FD-CAM --metrics insertion deletion
    captum-fdcam benchmark --data imagenet-sample --tables fdcam-table1 --limit 20

Everything is checked before the first image is explained: the arguments, every image
(decoded in full), the model, the layer (one forward pass on a blank image) and the
output folder, which is created only then. A mistake is one line on stderr and exit
code 2, with nothing written.

Only the standard library is imported at module level: ``--help`` must not wait for
torch and Captum, so each function imports what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam import registry
from captum_fdcam.errors import CliArgumentParser, CliError
from captum_fdcam.evaluation.data import (
    IMAGE_SUFFIXES,
    folder_images,
    sample_image,
)
from captum_fdcam.evaluation.data import first_line as _first_line
from captum_fdcam.evaluation.metric_info import per_image_metrics
from captum_fdcam.hub import Preprocessing, is_hub_model

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

OFFLINE_MODEL = "efficientnet-lite0"
#: evaluate's --metrics choices: the metric table's metrics scored on single images.
EVALUATION_METRICS = per_image_metrics()

# CliError (from captum_fdcam.errors), folder_images, sample_image and IMAGE_SUFFIXES (from
# captum_fdcam.evaluation.data) stay importable from here, as before they moved.
__all__ = ["IMAGE_SUFFIXES", "CliError", "build_parser", "folder_images", "main", "sample_image"]


# ------------------------------------------------------------------------- inputs


def image_paths(specs: Sequence[str | Path]) -> list[Path]:
    """The images named on the command line: files as given, folders by image suffix.

    A folder contributes its images (:func:`folder_images`).
    """
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise CliError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"no such file or folder: {path}")
    return paths


def read_image(path: Path) -> Image.Image:
    """The image, fully decoded, as 8-bit RGB (16-bit images scaled), or a one-line
    error naming the file (evaluation's loader, :func:`captum_fdcam.evaluation.read_image`)."""
    from captum_fdcam.evaluation.data import read_image as load

    try:
        return load(path)
    except ValueError as err:
        raise CliError(str(err)) from err


def check_images(paths: Sequence[Path]) -> None:
    """Decodes every image in full, so that a broken or truncated file fails before the
    first output is written (the images are decoded again when used: holding them all
    would take the memory of the whole folder)."""
    for path in paths:
        read_image(path)


def check_out(out: Path) -> None:
    """``--out`` must be a folder or a path where one can be created, and writable."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"--out {out}: {parent} is a file, not a folder")
    # os.access answers for the real user; as root it always says yes.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: {parent} is not writable")


def resolve_device(name: str) -> torch.device:
    """The device, checked by computing on it (``meta`` and missing backends fail)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA was asked for, but no GPU is available")
    try:
        (torch.zeros(1, device=device) + 1).cpu()
    # Each backend fails its own way (NotImplementedError on meta, AssertionError for a
    # backend torch was built without, RuntimeError for a missing GPU index, ...).
    except Exception as err:
        raise CliError(f"--device {name} cannot run the model: {_first_line(err)}") from err
    return device


# ------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its class names, and whether it is TorchScript.

    A TorchScript model's classes are known after :func:`probe_model` has run it.

    Attributes:
        preprocessing: how its images are prepared (a hub model's checkpoint says).
        hugging_face: ``module`` returns a Hugging Face ``ModelOutput``, not scores.
        summary: for hub models, one line on what was loaded (printed).
    """

    module: nn.Module
    categories: list[str]
    scripted: bool = False
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    hugging_face: bool = False
    summary: str = ""

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The model's (N, classes) scores of ``x``."""
        from captum_fdcam._core.validation import model_scores

        return model_scores(self.module(x))

    def scoring(self, layer: str | None) -> tuple[nn.Module, str | None]:
        """The model as Quantus's metrics call it, returning its scores (a Hugging Face
        model's logits), and the layer's name in that model."""
        if not self.hugging_face:
            return self.module, layer
        from captum_fdcam.hub import SCORES_PREFIX, scores_module

        return scores_module(self.module), None if layer is None else SCORES_PREFIX + layer


def _class_names(n: int) -> list[str]:
    from captum_fdcam.hub import class_names

    return class_names(n)


def load_model(
    spec: str,
    weights: Path | None,
    num_classes: int | None,
    device: torch.device,
    image_size: int | None = None,
) -> LoadedModel:
    """The offline EfficientNet-Lite0, a torchvision architecture with a local state
    dict, a TorchScript file, a timm model with a local state dict (``timm:NAME``) or a
    Hugging Face ``save_pretrained`` folder (``hf:DIR``); ``num_classes`` and
    ``image_size`` as given on the command line (None: not given)."""
    import torch

    if is_hub_model(spec):
        from captum_fdcam.hub import load_hub_model

        hub = load_hub_model(spec, weights, num_classes, device, image_size)
        return LoadedModel(
            hub.module,
            hub.categories,
            preprocessing=hub.preprocessing,
            hugging_face=hub.hugging_face,
            summary=hub.summary,
        )
    if spec == OFFLINE_MODEL:
        if weights is not None:
            raise CliError(f"--weights is for torchvision architectures, not {OFFLINE_MODEL}")
        from captum_fdcam.models import efficientnet_lite0

        return LoadedModel(efficientnet_lite0(pretrained=True).to(device), _class_names(1000))
    path = Path(spec)
    if path.suffix in {".pt", ".pth", ".ts", ".jit"} or path.is_file():
        if not path.is_file():
            raise CliError(f"no such model file: {path}")
        if weights is not None:
            raise CliError("--weights is for torchvision architectures, not TorchScript files")
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as err:  # whatever the file holds, it is not TorchScript
            raise CliError(f"{path} is not a TorchScript file: {_first_line(err)}") from err
        return LoadedModel(module.eval(), [], scripted=True)
    import torchvision

    if spec not in torchvision.models.list_models(module=torchvision.models):
        raise CliError(
            f"unknown model {spec!r}: use {OFFLINE_MODEL}, a torchvision classification "
            "architecture (resnet50, vgg16_bn, ...) with --weights, a TorchScript file, "
            "timm:NAME with --weights, or hf:DIR (a save_pretrained folder)"
        )
    if weights is None:
        raise CliError(f"--model {spec} needs --weights FILE (a local state dict; no downloads)")
    from captum_fdcam.hub import read_state_dict

    state = read_state_dict(weights)
    num_classes = 1000 if num_classes is None else num_classes
    model = torchvision.models.get_model(spec, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        hint = " (is --num-classes right?)" if "size mismatch" in str(err) else ""
        raise CliError(f"cannot load {weights} into {spec}{hint}: {_first_line(err)}") from err
    return LoadedModel(model.eval().to(device), _class_names(num_classes))


def resolve_layer(model: LoadedModel, name: str | None) -> str | None:
    """The layer's module name, as the model names it: as given (checked), or the
    default of the model's family (:func:`captum_fdcam.architectures.default_layer`);
    None for a TorchScript model, which has no named layer to hook (only input methods
    run on it)."""
    from captum_fdcam.evaluation.explainer import default_layer_name, find_layer

    if model.scripted:
        return None
    try:
        found = default_layer_name(model.module) if name is None else name
        find_layer(model.module, found)
    except ValueError as err:
        raise CliError(str(err)) from err
    return found


@dataclass(frozen=True)
class Layout:
    """How the CAMs read the layer's output (``reshape_transform="auto"``): the
    transform (None for an (N, C, h, w) map) and the map's (h, w)."""

    transform: Any
    grid: tuple[int, int]

    def describe(self) -> str:
        from captum_fdcam.reshape import TokensToGrid

        size = f"{self.grid[0]}x{self.grid[1]} map"
        if self.transform is None:
            return f"a {size}"
        kind = "tokens" if isinstance(self.transform, TokensToGrid) else "channels last,"
        return f"{kind} read as a {size}: {self.transform!r}"


def describe_layer(model: LoadedModel, layer: str, given: bool, layout: Layout | None) -> str:
    """The printed line: the layer, why it was chosen, and how it is read."""
    from captum_fdcam.architectures import default_layer

    kind = type(model.module.get_submodule(layer)).__name__
    if not given:
        kind += f"; {default_layer(model.module).reason}, default; pass --layer to change"
    return f"layer: {layer} ({kind})" + (f", {layout.describe()}" if layout else "")


def probe_model(
    model: LoadedModel, layer: str | None, size: int, device: torch.device, needs_map: bool
) -> Layout | None:
    """Runs the model once on a blank ``size`` x ``size`` image: the size must suit the
    model, the output must be (1, classes) (a Hugging Face model's logits), and, for
    layer methods, the layer must run once per forward pass and give a map the CAMs can
    read (:class:`captum_fdcam.architectures.AutoLayout`: (N, C, h, w), channels last,
    or a transformer's tokens), which is returned. Sets a TorchScript model's classes."""
    import torch

    from captum_fdcam._core.validation import model_scores
    from captum_fdcam.architectures import AutoLayout
    from captum_fdcam.errors import FeatureMapError, ModelOutputError
    from captum_fdcam.reshape import ChannelsLastToFirst, TokensToGrid

    shapes: list[tuple[int, ...] | str] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        shapes.append(
            tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        )

    hook = None
    if needs_map and layer is not None:
        hook = model.module.get_submodule(layer).register_forward_hook(record)
    try:
        with torch.no_grad():
            out = model.module(torch.zeros(1, 3, size, size, device=device))
    # Whatever the model raises on a blank image of this size (a kernel larger than the
    # map, a pooling to 0 x 0, a fixed input size, ...): the size is the thing to change.
    except Exception as err:
        raise CliError(
            f"the model cannot run on {size} x {size} images (--image-size {size}): "
            f"{_first_line(err)}"
        ) from err
    finally:
        if hook is not None:
            hook.remove()
    with contextlib.suppress(ModelOutputError):  # reported as not (N, classes) below
        out = model_scores(out)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CliError(f"the model's output is {got}, not (N, classes) scores of a classifier")
    if model.scripted:
        model.categories = _class_names(out.shape[1])
    elif out.shape[1] != len(model.categories):
        raise CliError(f"the model gives {out.shape[1]} scores for {len(model.categories)} classes")
    if hook is None:
        return None
    if not shapes:
        raise CliError(f"--layer {layer} is not run by the model's forward pass")
    if len(shapes) > 1:
        raise CliError(
            f"--layer {layer} runs {len(shapes)} times per forward pass; the layer methods "
            "need a layer that runs once"
        )
    (shape,) = shapes
    if isinstance(shape, str) or len(shape) not in (3, 4):
        raise CliError(
            f"--layer {layer} gives {shape}, not a 4-D (N, C, H, W) feature map or (N, T, C) "
            "tokens: choose a convolutional layer or a transformer block's norm"
        )
    assert layer is not None  # a hook was set on it
    try:
        auto = AutoLayout(model.module, model.module.get_submodule(layer), (size, size))
        transform = auto.resolve(shape)
    except FeatureMapError as err:
        raise CliError(
            f"--layer {layer}: {_first_line(err)} (the command reads layers as "
            "reshape_transform='auto' does: choose another --layer)"
        ) from err
    if isinstance(transform, TokensToGrid):
        grid = tuple(transform.grid_size)
    elif isinstance(transform, ChannelsLastToFirst):
        grid = shape[1:3]
    else:
        grid = shape[2:]
    if min(grid) < 1:
        raise CliError(
            f"--layer {layer} gives a {grid[0]} x {grid[1]} map at --image-size {size}: "
            "use larger images or an earlier layer"
        )
    return Layout(transform, (int(grid[0]), int(grid[1])))


_MODEL_ARGUMENTS = {"forward_func", "model"}


def _method_problem(name: str, cls: type) -> str | None:
    """Why the command line cannot run ``cls`` as it builds methods (``cls(model)``, or
    ``cls(model, layer)`` for layer methods, then ``attribute(x, target=...)``), if so."""
    from captum.attr import LayerAttribution

    if not callable(getattr(cls, "attribute", None)) or any(
        getattr(getattr(cls, attr, None), "__isabstractmethod__", False) for attr in dir(cls)
    ):
        return f"{name} is a base class, not a method"
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if not parameters or parameters[0].name not in _MODEL_ARGUMENTS:
        first = parameters[0].name if parameters else "nothing"
        hint = "; use 'FG-' + a CAM for FG-CAM" if cls.__name__ in registry.FG_CLASSES else ""
        return f"{name} wraps another method (it takes {first}, not a model){hint}"
    given = 2 if issubclass(cls, LayerAttribution) else 1
    missing = [p.name for p in parameters[given:] if _required(p)]
    attribute = list(inspect.signature(cls.attribute).parameters.values())[1:]  # less self
    missing += [p.name for p in attribute[1:] if _required(p) and p.name != "target"]
    if missing:
        return f"{name} needs {', '.join(missing)}, which the command line cannot pass"
    kinds = {p.kind for p in attribute}
    if "target" not in {p.name for p in attribute} and inspect.Parameter.VAR_KEYWORD not in kinds:
        return f"{name} takes no target class"
    return None


def _required(parameter: inspect.Parameter) -> bool:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return parameter.default is inspect.Parameter.empty and parameter.kind not in variadic


def check_methods(names: Sequence[str]) -> dict[str, bool]:
    """Each method's name checked (known, and runnable with only a model, a layer and a
    target), and whether it explains a layer (FG-CAM counts: its CAM does)."""
    from captum.attr import LayerAttribution
    from captum.attr import LayerGradCam as CaptumLayerGradCam

    from captum_fdcam import LayerCamBase
    from captum_fdcam.evaluation.explainer import method_class

    layered: dict[str, bool] = {}
    for name in names:
        base, fg = registry.split_fg(name)
        try:
            cls = method_class(base)
        except (ValueError, TypeError) as err:
            raise CliError(str(err)) from err
        problem = _method_problem(base, cls)
        if problem:
            raise CliError(problem)
        if fg and not issubclass(cls, (LayerCamBase, CaptumLayerGradCam)):
            raise CliError(f"{name}: FG-CAM works over a CAM (FG-Grad-CAM, ...), not {base}")
        layered[name] = fg or issubclass(cls, LayerAttribution)
    return layered


def check_scripted(methods: dict[str, bool], scripted: bool) -> None:
    """Layer methods on TorchScript (which has no hooks) are errors."""
    for name, layered in methods.items():
        if scripted and layered:
            raise CliError(
                f"{name} needs forward hooks, which TorchScript models do not support: use a "
                "Python model, or an input method such as IntegratedGradients or Saliency"
            )


def prepare_model(
    args: argparse.Namespace, methods: dict[str, bool], device: torch.device
) -> tuple[LoadedModel, str | None]:
    """The model and the layer's module name (None for TorchScript) of explain and
    evaluate, both checked; the model's preprocessing at ``--image-size`` if given.
    Prints what was chosen: a hub model's checkpoint, the default layer, a layout."""
    model = load_model(args.model, args.weights, args.num_classes, device, args.image_size)
    check_scripted(methods, model.scripted)
    size = args.image_size or model.preprocessing.size
    model.preprocessing = replace(model.preprocessing, size=size)
    layer = resolve_layer(model, args.layer)
    layout = probe_model(model, layer, size, device, any(methods.values()))
    if model.summary:
        print(f"model: {model.summary}; images: {model.preprocessing.describe()}")
    if layer is not None and (args.layer is None or (layout and layout.transform is not None)):
        print(describe_layer(model, layer, args.layer is not None, layout))
    return model, layer


@contextlib.contextmanager
def _method_errors(method: str) -> Iterator[None]:
    """The library's errors of a method on this model (a module FG-CAM cannot propagate
    through, ...) as the command's one-line errors."""
    from captum_fdcam.errors import CamError

    try:
        yield
    except CamError as err:
        raise CliError(f"{method}: {_first_line(err)}") from err


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
    paths = image_paths(args.images or [sample_image()])
    out: Path = args.out
    check_out(out)
    methods = check_methods(args.methods)
    device = resolve_device(args.device)
    check_images(paths)
    model, layer = prepare_model(args, methods, device)
    if args.target is not None and not 0 <= args.target < len(model.categories):
        raise CliError(
            f"--target {args.target} is not a class of this model (0-{len(model.categories) - 1})"
        )

    import numpy as np
    import torch

    from captum_fdcam.evaluation.explainer import explain
    from captum_fdcam.visualization import comparison_figure, overlay_figure

    written: list[Path] = []
    rows = []
    for path in _progress(paths, not args.quiet, "images"):
        x = model.preprocessing.apply(read_image(path)).to(device)
        with torch.no_grad():
            probs = model.scores(x).softmax(dim=-1)[0]
        target = int(probs.argmax()) if args.target is None else args.target
        label = f"{model.categories[target]} ({probs[target]:.1%})"
        print(f"{path.name}: class {target}, {label}")
        maps = {}
        for method in args.methods:
            with _method_errors(method):
                a = explain(model.module, x, [target], method=method, layer=layer, device=device)
            maps[method] = a[0, 0]
        # Created once the first image's maps exist: a method that cannot explain this
        # model (FG-CAM through a transformer's attention, ...) leaves nothing written.
        out.mkdir(parents=True, exist_ok=True)
        for method, values in maps.items():
            written.append(out / f"{path.stem}.{_slug(method)}.npy")
            np.save(written[-1], values)
        image = model.preprocessing.undo(x)[0].permute(1, 2, 0).cpu().numpy()
        title = f"{path.name}: {label}"
        written.append(
            overlay_figure(image, maps, out / f"{path.stem}.png", title=title, layer=layer)
        )
        rows.append((f"{path.name}\n{model.categories[target]}", image, maps))
    if len(rows) > 1:
        written.append(comparison_figure(rows, out / "comparison.png", layer=layer))
    print(f"wrote {len(written)} files to {out}")
    return written


# ----------------------------------------------------------------------- evaluate


def _targets(folder: Path, paths: list[Path], labels: Path | None) -> dict[Path, int] | None:
    """Each image's class from the labels file (file names relative to the image folder)."""
    if labels is None:
        return None
    from captum_fdcam.evaluation.data import read_labels

    try:
        pairs = read_labels(folder, labels)
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = str(err)
        if str(labels) not in message:
            message = f"bad labels file {labels}: {message}"
        raise CliError(message) from err
    known = {p.resolve(): c for p, c in pairs}
    missing = [p.name for p in paths if p.resolve() not in known]
    if missing:
        raise CliError(f"{len(missing)} images have no label in {labels}: {missing[:3]}")
    return {p: known[p.resolve()] for p in paths}


def check_labels(targets: dict[Path, int], labels: Path, classes: int) -> None:
    """Every label must be a class of the model."""
    wrong = [f"{p.name}: {c}" for p, c in targets.items() if not 0 <= c < classes]
    if wrong:
        raise CliError(
            f"{len(wrong)} labels in {labels} are not classes of this model (0-{classes - 1}): "
            + ", ".join(wrong[:3])
        )


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Scores each method on each image with the chosen metrics; writes
    ``scores.jsonl`` (per image), ``scores.json`` and ``scores.md`` (means with bootstrap
    95% CIs) and the mean insertion/deletion curve plots. Returns the summary."""
    paths = image_paths([args.folder])[: args.limit]
    out: Path = args.out
    check_out(out)
    methods = check_methods(args.methods)
    labels = args.labels
    if labels is None and (Path(args.folder) / "labels.csv").is_file():
        labels = Path(args.folder) / "labels.csv"
    targets = _targets(Path(args.folder), paths, labels)
    device = resolve_device(args.device)
    check_images(paths)
    model, layer = prepare_model(args, methods, device)
    if targets is not None and labels is not None:
        check_labels(targets, labels, len(model.categories))

    import numpy as np
    import torch

    from captum_fdcam.evaluation.report import markdown, plot_curves, summarise
    from captum_fdcam.evaluation.scoring import Job, score

    # Quantus's metrics call the model and need its scores as a tensor; the layer is
    # named in that model (a Hugging Face model's is a wrapper that returns its logits).
    scorer, scored_layer = model.scoring(layer)
    jobs = [Job(m, m, scored_layer, metrics=tuple(args.metrics)) for m in args.methods]
    records = []
    with contextlib.ExitStack() as stack:
        handle = None
        for path in _progress(paths, not args.quiet, "images"):
            x = model.preprocessing.apply(read_image(path)).to(device)
            if targets is None:
                with torch.no_grad():
                    y = scorer(x).argmax(dim=-1).cpu().numpy()
            else:
                y = np.array([targets[path]])
            lines = []
            for job in jobs:
                with _method_errors(job.name):
                    scores = score(scorer, job, x.cpu().numpy(), y)
                record = {"table": "evaluate", "method": job.name, "item": path.name}
                records.append({**record, "scores": scores})
                lines.append(json.dumps(records[-1]) + "\n")
            if handle is None:  # once the first image is scored, as for explain
                out.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context((out / "scores.jsonl").open("w"))
            handle.writelines(lines)
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
    import torch

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


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help unless the help already states it:
    flags read "(default: off)", lists are written as typed."""

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
    parser.add_argument(
        "--model",
        default=OFFLINE_MODEL,
        help=f"{OFFLINE_MODEL} (default: the offline pretrained ImageNet model), a "
        "torchvision architecture name with --weights, a TorchScript file, timm:NAME (a "
        "timm architecture, resnet50, vit_base_patch16_224, ...) with --weights, or "
        "hf:DIR (a folder written by a Hugging Face image classifier's save_pretrained); "
        "nothing is downloaded",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="state dict (.pth, .pt or .safetensors) for a torchvision or timm: "
        "architecture (default: none; needed with one)",
    )
    parser.add_argument(
        "--num-classes",
        type=_positive_int,
        help="classes of the torchvision model (default: 1000; timm: and hf: models read "
        "theirs from the checkpoint)",
    )
    parser.add_argument(
        "--layer",
        help="module name of the layer to explain, as the model names it (default: by "
        "family: the offline model's head_activation, a ViT's last block's first norm, "
        "Swin's final norm, ConvNeXt's last stage, else the last Conv2d; printed)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["Grad-CAM", "FD-CAM"],
        metavar="METHOD",
        help=f"any of {', '.join(registry.cam_names())}; 'FG-' + one of them for FG-CAM at "
        "the input; the LRP baselines "
        f"{', '.join(m.class_name for m in registry.REGISTRY if not m.layer)}; or a Captum "
        "attribution class name (IntegratedGradients, LayerGradCam, ...)",
    )
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        help="images are resized to SIZE * 256 / 224 and centre-cropped to SIZE, then "
        "normalised with ImageNet's mean and std (default: 224); timm: and hf: models "
        "take their checkpoint's size, crop share, mean and std, SIZE replacing the size",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from captum_fdcam import benchmark

    parser = CliArgumentParser(
        prog="captum-fdcam",
        description="Explain images with CAM methods, evaluate them with Quantus metrics, "
        "reproduce the papers' tables. 'captum-fdcam COMMAND --help' for each command.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = sub.add_parser(
        "explain",
        help="explain images with CAM methods: overlay figures and raw maps",
        description="Explains each image with each method and writes, to --out, "
        "<stem>.png (the photo and an overlay per method), <stem>.<method>.npy (each map, "
        "H x W at the input size) and, for several images, comparison.png (images x "
        "methods).",
        formatter_class=_HelpFormatter,
    )
    explain.add_argument(
        "images",
        nargs="*",
        help="image files and/or folders of images; a folder contributes its image files, "
        "hidden files skipped (default: the bundled sample photo, scikit-image's chelsea)",
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
        formatter_class=_HelpFormatter,
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
        metavar="METRIC",
        help=f"any of {', '.join(EVALUATION_METRICS)}",
    )
    evaluate.add_argument("--limit", type=_positive_int, help="first N images only (default: all)")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    evaluate.set_defaults(handler=run_evaluate)

    bench = sub.add_parser(
        "benchmark",
        help="reproduce the papers' tables on a labelled image folder",
        description=(benchmark.__doc__ or "").split("\n\n")[0],
        formatter_class=_HelpFormatter,
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
