"""Models from the hubs, for the command line: ``timm:NAME`` with a local state dict, and
``hf:DIR``, a folder written by Hugging Face's ``save_pretrained``. Nothing is downloaded.

::

    model = load_hub_model("timm:resnet18", Path("r18.pth"), None, torch.device("cpu"), None)
    model.module, model.categories, model.preprocessing

Each model comes with what its checkpoint says about it: the number of classes (timm: the
classifier's weight in the state dict; Hugging Face: ``config.json``), the class names
(Hugging Face's ``id2label`` unless generic; else ImageNet's for 1000 classes, ``class
i`` otherwise) and the preprocessing (timm's ``pretrained_cfg``, Hugging Face's
``preprocessor_config.json``). Every mistake is a :class:`~captum_fdcam.errors.RequestError`.

Only the standard library is imported at module level: torch, timm and transformers
when a model is loaded, so that the library works without timm and transformers.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fdcam.errors import RequestError
from captum_fdcam.images import first_line

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

TIMM = "timm:"
HUGGING_FACE = "hf:"
#: What to install when timm or transformers is missing.
INSTALL = "pip install 'captum-fdcam[hub]'"
#: The keys under which training scripts nest a state dict (timm's train.py:
#: ``state_dict``; many others: ``model``).
_WRAPPERS = ("state_dict", "model")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


def is_hub_model(spec: str) -> bool:
    """Whether ``--model`` names a hub model (``timm:NAME``, ``hf:DIR``)."""
    return spec.startswith((TIMM, HUGGING_FACE))


@dataclass(frozen=True)
class Preprocessing:
    """How images become a model's input: resize the shorter side to
    ``size / crop_fraction``, centre-crop ``size`` x ``size``, normalise.

    Attributes:
        size: the crop's side.
        mean, std: per channel, of values in [0, 1]; ``None``: ImageNet's.
        crop_fraction: the share of the resized side kept (timm's ``crop_pct``).
        source: where these values come from, for the printed summary.
    """

    size: int = 224
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_fraction: float = 224 / 256
    source: str = "ImageNet's"

    def _norm(self) -> dict[str, Sequence[float]]:
        return {
            name: value
            for name, value in (("mean", self.mean), ("std", self.std))
            if value is not None
        }

    def apply(self, image: Image.Image) -> torch.Tensor:
        """The (1, 3, size, size) input of ``image``."""
        from captum_fdcam.images import preprocess

        return preprocess(image, self.size, crop_fraction=self.crop_fraction, **self._norm())

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 3, H, W) images in [0, 1] that ``x`` was made from (cropped)."""
        from captum_fdcam.images import denormalize

        return denormalize(x, **self._norm())

    def describe(self) -> str:
        from captum_fdcam.images import IMAGENET_MEAN, IMAGENET_STD

        mean = tuple(round(v, 4) for v in self.mean or IMAGENET_MEAN)
        std = tuple(round(v, 4) for v in self.std or IMAGENET_STD)
        resized = round(self.size / self.crop_fraction)
        return (
            f"{self.size} x {self.size}, centre-cropped after resizing the shorter side to "
            f"{resized}, mean {mean}, std {std} ({self.source})"
        )


@dataclass
class HubModel:
    """A hub model in eval mode on its device.

    Attributes:
        module: the model as its library builds it (a Hugging Face model returns a
            ``ModelOutput``); layers are named as it names them.
        categories: the class names, in index order.
        preprocessing: from the checkpoint.
        summary: one line on what was loaded, for the command's output.
        hugging_face: whether ``module`` returns a ``ModelOutput`` rather than scores.
    """

    module: nn.Module
    categories: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    summary: str = ""
    hugging_face: bool = False


def class_names(n: int) -> list[str]:
    """ImageNet's names for 1000 classes, else ``class 0``, ``class 1``, ..."""
    from captum_fdcam.models import imagenet_categories

    return imagenet_categories() if n == 1000 else [f"class {i}" for i in range(n)]


def load_hub_model(
    spec: str,
    weights: Path | None,
    num_classes: int | None,
    device: torch.device,
    image_size: int | None,
) -> HubModel:
    """``timm:NAME`` with ``weights`` or ``hf:DIR``, on ``device``, in eval mode.

    Args:
        spec: ``--model``.
        weights: ``--weights`` (timm: required; Hugging Face: refused).
        num_classes: ``--num-classes`` if given: must agree with the checkpoint.
        device: where the model goes.
        image_size: ``--image-size`` if given: it replaces the checkpoint's size (a timm
            ViT at another size interpolates its position embeddings).
    """
    if spec.startswith(TIMM):
        model = load_timm(spec[len(TIMM) :], weights, num_classes, image_size)
    else:
        if weights is not None:
            raise RequestError(
                f"--weights is for torchvision and timm: models; {spec} holds its own weights"
            )
        if num_classes is not None:
            raise RequestError(f"--num-classes: {spec} reads its classes from its config.json")
        model = load_hugging_face(Path(spec[len(HUGGING_FACE) :]))
    model.module = model.module.eval().to(device)
    return model


# ------------------------------------------------------------------- state dicts


def read_state_dict(path: Path) -> dict[str, Any]:
    """The state dict in ``path``: ``.safetensors``, or a PyTorch file read with
    ``weights_only=True``, optionally nested under ``state_dict`` or ``model`` (as
    training scripts save it)."""
    import argparse

    import torch

    if not path.is_file():
        raise RequestError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise RequestError(
                f"--weights {path} needs safetensors: pip install safetensors"
            ) from err
        try:
            return dict(load_file(str(path)))
        # safetensors raises its own SafetensorError (or OSError) for whatever is wrong
        except Exception as err:
            raise RequestError(
                f"--weights {path} is not a safetensors file: {first_line(err)}"
            ) from err
    try:
        # timm's train.py saves its argparse.Namespace next to the weights: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    # A text file, a truncated archive or a pickled model each fail differently inside
    # torch.load (KeyError, RuntimeError, UnpicklingError, EOFError, ...).
    except Exception as err:
        raise RequestError(
            f"--weights {path} is not a PyTorch checkpoint: {first_line(err)}"
        ) from err
    if isinstance(state, Mapping):
        for key in _WRAPPERS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise RequestError(
            f"--weights {path} holds a {type(state).__name__}, not a state dict "
            "(save model.state_dict())"
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = sorted(
            {type(v).__name__ for v in state.values() if not isinstance(v, torch.Tensor)}
        )
        raise RequestError(
            f"--weights {path} is a dict of {', '.join(kinds)}, not a state dict of tensors "
            "(save model.state_dict())"
        )
    return dict(state)


def _listed(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fit_problem(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading into ``model`` strictly, in one line, if
    anything: entries of other shapes, missing ones, unknown ones."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    shapes = [
        f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if shapes:
        problems.append(_listed(shapes, 2))
    if missing:
        problems.append(f"{len(missing)} entries missing from the file ({_listed(missing)})")
    if unknown:
        problems.append(f"{len(unknown)} entries the model does not have ({_listed(unknown)})")
    return "; ".join(problems) or None


# -------------------------------------------------------------------------- timm


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise RequestError(f"--model timm:... needs timm: {INSTALL} (or pip install timm)") from err
    return timm


def _classifier_name(model: nn.Module) -> str | None:
    """The module name of a timm model's classifier (DeiT's first of two heads)."""
    head = model.get_classifier()
    if isinstance(head, tuple):
        head = head[0]
    return next((name for name, m in model.named_modules() if m is head), None)


def _create_timm(timm: Any, name: str, image_size: int | None) -> nn.Module:
    """A timm model of random weights; at an ``image_size`` other than its own, one that
    interpolates its position embeddings where the family can (ViT, DeiT, EVA, ...)."""
    cfg = timm.models.get_pretrained_cfg(name)
    native = cfg.input_size[-1] if cfg is not None and cfg.input_size else None
    if image_size is not None and image_size != native:
        try:
            return timm.create_model(name, pretrained=False, dynamic_img_size=True)
        except TypeError:  # the family takes no dynamic_img_size: any size, or a fixed one
            pass
    return timm.create_model(name, pretrained=False)


def load_timm(
    name: str, weights: Path | None, num_classes: int | None, image_size: int | None
) -> HubModel:
    """timm's ``name`` (on the CPU), with the state dict ``weights``."""
    timm = _import_timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise RequestError(f"unknown timm model {name!r}{hint}: see timm.list_models()")
    if weights is None:
        raise RequestError(
            f"--model timm:{name} needs --weights FILE (a local state dict, .pth or "
            ".safetensors; nothing is downloaded)"
        )
    state = read_state_dict(weights)
    try:
        model = _create_timm(timm, name, image_size)
    # timm's constructors fail their own ways for names it lists but cannot build here.
    except Exception as err:
        raise RequestError(f"timm cannot build {name}: {first_line(err)}") from err
    head = _classifier_name(model)
    classes = model.num_classes
    if head is not None and hasattr(state.get(f"{head}.weight"), "shape"):
        classes = int(state[f"{head}.weight"].shape[0])
        if classes != model.num_classes:
            model.reset_classifier(classes)
    if num_classes is not None and num_classes != classes:
        raise RequestError(
            f"--num-classes {num_classes}, but the classifier {head}.weight in {weights} has "
            f"{classes} classes (leave --num-classes out for timm: models)"
        )
    problem = fit_problem(model, state)
    if problem:
        raise RequestError(f"--weights {weights} does not fit timm:{name}: {problem}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as err:
        raise RequestError(f"cannot load {weights} into timm:{name}: {first_line(err)}") from err
    cfg = model.pretrained_cfg
    preprocessing = Preprocessing(
        size=image_size or int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg["mean"]) if cfg.get("mean") else None,
        std=tuple(cfg["std"]) if cfg.get("std") else None,
        crop_fraction=float(cfg.get("crop_pct") or 224 / 256),
        source="timm's pretrained_cfg",
    )
    return HubModel(
        model,
        class_names(classes),
        preprocessing,
        summary=f"timm:{name} with {weights}, {classes} classes",
    )


# ------------------------------------------------------------------ Hugging Face


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """transformers logs its reports and draws progress bars on stderr, where the
    command prints one line per mistake; its settings are restored after."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_hugging_face(folder: Path) -> HubModel:
    """The image classifier a ``save_pretrained`` folder holds (on the CPU)."""
    spec = f"hf:{folder}"
    if not folder.is_dir():
        raise RequestError(f"--model {spec}: no such folder")
    if not (folder / "config.json").is_file():
        raise RequestError(
            f"--model {spec}: the folder has no config.json (write it with "
            "model.save_pretrained(folder))"
        )
    try:
        import transformers
    except ImportError as err:
        raise RequestError(f"--model hf:... needs transformers: {INSTALL}") from err
    with _quiet_transformers(transformers):
        try:
            model, info = transformers.AutoModelForImageClassification.from_pretrained(
                str(folder),
                local_files_only=True,
                output_loading_info=True,
                # Reported below, in one line, rather than as transformers' report.
                ignore_mismatched_sizes=True,
            )
        except ValueError as err:
            if "Unrecognized configuration class" in str(err):
                kind = _config_kind(folder)
                raise RequestError(
                    f"--model {spec} holds a {kind} model, not an image classifier "
                    "(AutoModelForImageClassification cannot load it)"
                ) from err
            raise RequestError(f"cannot load --model {spec}: {first_line(err)}") from err
        # A missing weights file, unreadable safetensors, a broken config.json, code
        # the folder asks to run (trust_remote_code), ...: transformers' own errors.
        except Exception as err:
            raise RequestError(f"cannot load --model {spec}: {first_line(err)}") from err
    problems = []
    if info.get("mismatched_keys"):
        shapes = [
            f"{k} is {tuple(a)} in the file, {tuple(b)} in the model"
            for k, a, b in sorted(info["mismatched_keys"])
        ]
        problems.append(_listed(shapes, 2))
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        problems.append(f"{len(missing)} weights missing from the folder ({_listed(missing)})")
    if problems:
        raise RequestError(
            f"the weights in {folder} do not fit {type(model).__name__}: {'; '.join(problems)}"
        )
    config = model.config
    labels = [str(config.id2label[i]) for i in sorted(config.id2label)]
    if not labels or all(_GENERIC_LABEL.fullmatch(label) for label in labels):
        labels = class_names(config.num_labels)
    return HubModel(
        model,
        labels,
        _hugging_face_preprocessing(folder, config),
        summary=f"{spec}, {type(model).__name__}, {len(labels)} classes",
        hugging_face=True,
    )


def _config_kind(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"


def _side(value: Any) -> int | None:
    """A size of ``preprocessor_config.json``: an int, or a dict with ``height`` (and
    ``width``) or ``shortest_edge``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        side = value.get("height", value.get("shortest_edge"))
        return side if isinstance(side, int) else None
    return None


def _hugging_face_preprocessing(folder: Path, config: Any) -> Preprocessing:
    """The size, mean and std of ``preprocessor_config.json``; without it, the
    config's ``image_size`` and ImageNet's mean and std.

    The processors resize differently (ViT's to the square, squashing; ConvNeXt's and
    CLIP's the shorter side, then a centre crop): here the shorter side is resized and
    the centre cropped, as for the other models, with the processor's crop share."""
    path = folder / "preprocessor_config.json"
    fallback = config.image_size if isinstance(getattr(config, "image_size", None), int) else 224
    if not path.is_file():
        return Preprocessing(size=fallback, source="ImageNet's; no preprocessor_config.json")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RequestError(f"cannot read {path}: {first_line(err)}") from err
    if not isinstance(saved, Mapping):
        raise RequestError(f"{path} holds a {type(saved).__name__}, not a processor's settings")
    resize = _side(saved.get("size"))
    crop = _side(saved.get("crop_size")) if saved.get("do_center_crop", True) else None
    if crop is not None and resize is not None and crop <= resize:
        size, fraction = crop, crop / resize
    else:
        size = crop or resize or fallback
        fraction = float(saved.get("crop_pct") or 1.0)
    if saved.get("do_normalize", True):
        mean, std = _channels(saved.get("image_mean")), _channels(saved.get("image_std"))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocessing(size, mean, std, fraction, source=path.name)


def _channels(value: Any) -> tuple[float, ...] | None:
    """A processor's mean or std as three values (one value is every channel's)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 3):
        with contextlib.suppress(TypeError, ValueError):
            return tuple(float(v) for v in value) * (3 // len(value))
    return None


# ------------------------------------------------------------------------ scores


def scores_module(model: nn.Module) -> nn.Module:
    """``model`` as a module that returns its scores (:class:`captum_fdcam.targets.Logits`):
    Quantus's metrics call ``model(x)`` and need a tensor; ``model``'s layers are the
    wrapper's under ``model.``, in ``model``'s mode (metrics refuse a model in training
    mode)."""
    from captum_fdcam.targets import Logits

    return Logits(model)


#: The prefix of a model's layer names in :func:`scores_module`'s wrapper.
SCORES_PREFIX = "model."
