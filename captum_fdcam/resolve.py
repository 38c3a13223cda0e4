"""One place that resolves a method's name and a layer: for ``explain()``, the commands,
the benchmark and the demo.

* :func:`method_class`: a name of this library (``"FD-CAM"``, ``"LayerFDCam"``) or of
  Captum (``"IntegratedGradients"``) to its class; a misspelt name gets close matches.
* :func:`check_methods`: names the commands can run (a model, a layer and a target are
  all they pass), and which of them explain a layer.
* :func:`find_layer` and :func:`default_layer_name`: a layer by its module name (close
  matches suggested), or the default of the model's family.

Only the standard library is imported at module level; torch and Captum are imported
by the functions that need them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from captum_fdcam import registry
from captum_fdcam.errors import RequestError

if TYPE_CHECKING:
    from torch import nn


def close_matches(name: str, choices: Sequence[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` of ``choices`` close to ``name``, case and punctuation aside."""

    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    by_norm: dict[str, str] = {}
    for choice in choices:
        by_norm.setdefault(norm(choice), choice)
    if norm(name) in by_norm:
        return [by_norm[norm(name)]]
    found = difflib.get_close_matches(norm(name), list(by_norm), n=limit, cutoff=0.6)
    if not found:
        return []
    # Only the matches about as close as the closest: one typo names one candidate.
    ratios = [difflib.SequenceMatcher(None, norm(name), f).ratio() for f in found]
    return [by_norm[f] for f, r in zip(found, ratios, strict=True) if r >= ratios[0] - 0.05]


def _suggestion(name: str, choices: Sequence[str]) -> str:
    matches = close_matches(name, choices)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def method_class(method: str | type) -> type:
    """The attribution class for a name of this library (``"FD-CAM"``, ``"LayerFDCam"``)
    or of Captum (``"LayerGradCam"``, ``"IntegratedGradients"``), or the class itself."""
    from captum.attr import Attribution

    if isinstance(method, type):
        if not issubclass(method, Attribution):
            raise TypeError(f"{method.__name__} is not a Captum Attribution class.")
        return method
    import captum.attr

    import captum_fdcam

    info = registry.find(method)
    # The registry's display names of its CAMs first; "LRP" stays Captum's LRP, as the
    # name of an attribution class of captum.attr (PropagationLRP is this library's).
    if info is not None and (info.layer or info.class_name == method):
        return registry.load_class(info)
    for namespace in (captum_fdcam, captum.attr):
        found = getattr(namespace, method, None)
        if isinstance(found, type) and issubclass(found, Attribution):
            return found
    known = ", ".join(sorted(registry.cam_names()))
    choices = [*registry.cam_names(), *registry.fg_names()]
    choices += [m.class_name for m in registry.REGISTRY]
    choices += [n for n in dir(captum.attr) if isinstance(getattr(captum.attr, n), type)]
    raise ValueError(
        f"Unknown method {method!r}: use one of {known}, 'FG-' + one of them, or the name "
        f"of an attribution class of captum_fdcam or captum.attr.{_suggestion(method, choices)}"
    )


def default_layer_name(model: nn.Module) -> str:
    """The module name of the layer :func:`find_layer` explains by default, by family
    (:func:`captum_fdcam.architectures.default_layer`): the offline model's
    ``head_activation``; a ViT's last block's first norm; Swin's final norm; ConvNeXt's
    last stage; else the model's last ``Conv2d``.

    Raises:
        ValueError: no such layer (a :class:`~captum_fdcam.errors.LayerError`).
    """
    from captum_fdcam.architectures import default_layer

    return default_layer(model).name


def find_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The module to explain: by name, as given, or by default the layer of
    :func:`default_layer_name`."""
    from torch import nn

    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            # Quantus's randomisation metrics (MPRT, ...) explain deep copies of the
            # model, where a module of the original would silently explain the original.
            raise ValueError(
                f"The layer {type(layer).__name__} is not a module of the model being "
                "explained: pass the layer by name (layer='layer4'), which also works on "
                "the copies Quantus's randomisation metrics make."
            )
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(_no_layer_message(model, layer)) from err
    return model.get_submodule(default_layer_name(model))


def _no_layer_message(model: nn.Module, layer: str) -> str:
    names = [name for name, _ in model.named_modules() if name]
    hint = _suggestion(layer, names)
    if not hint:
        # The top-level children say how the model names its parts.
        children = [name for name, _ in model.named_children()]
        shown = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "")
        hint = f" Its top-level modules: {shown}." if children else ""
    return f"The model has no module named {layer!r}.{hint}"


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

    layered: dict[str, bool] = {}
    for name in names:
        base, fg = registry.split_fg(name)
        try:
            cls = method_class(base)
        except (ValueError, TypeError) as err:
            raise RequestError(str(err)) from err
        problem = _method_problem(base, cls)
        if problem:
            raise RequestError(problem)
        if fg and not issubclass(cls, (LayerCamBase, CaptumLayerGradCam)):
            raise RequestError(f"{name}: FG-CAM works over a CAM (FG-Grad-CAM, ...), not {base}")
        layered[name] = fg or issubclass(cls, LayerAttribution)
    return layered


def check_scripted(methods: dict[str, bool], scripted: bool) -> None:
    """Layer methods on TorchScript (which has no hooks) are errors."""
    for name, layered in methods.items():
        if scripted and layered:
            raise RequestError(
                f"{name} needs forward hooks, which TorchScript models do not support: use a "
                "Python model, or an input method such as IntegratedGradients or Saliency"
            )
