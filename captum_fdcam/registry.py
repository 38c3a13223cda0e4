"""The one list of this library's attribution methods: every other list reads from it.

``captum_fdcam.METHODS``, the benchmark's CAMs (``--cams``), the command line's method
help, :func:`captum_fdcam.evaluation.method_class` and the ``"FG-"`` name parsing all
come from :data:`REGISTRY`: a new method is one entry here (and its class exported by
``captum_fdcam``)::

    from captum_fdcam.registry import cam_names, split_fg
    cam_names()             # ("Grad-CAM", ..., "FD-CAM")
    split_fg("FG-FD-CAM")   # ("FD-CAM", True)

Only the standard library is imported: ``captum-fdcam --help`` reads the names without
importing torch. :func:`load_class` imports a method's module when its class is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

Family = Literal["gradient", "perturbation", "gradient+perturbation", "propagation"]

#: Prefix of a name that asks for FG-CAM over a CAM: ``"FG-Grad-CAM"``.
FG_PREFIX = "FG-"
#: FG-CAM's classes, which wrap a CAM of the registry (``"FG-" + its name``).
FG_CLASSES = {"FGCam": "captum_fdcam.methods", "LayerFGCam": "captum_fdcam.methods"}


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method of this library.

    Attributes:
        name: the name in figures and tables (``"FD-CAM"``); a CAM's name is also a
            method name of :func:`captum_fdcam.evaluation.explain` and the command
            line. Input methods go there by class name (``"PropagationLRP"``): ``"LRP"``
            is the name of Captum's own ``captum.attr.LRP``.
        class_name: its class, exported by ``captum_fdcam`` (``"LayerFDCam"``).
        module: the module that defines the class (imported by :func:`load_class`).
        family: how it computes its weights: ``"gradient"``, ``"perturbation"``,
            ``"gradient+perturbation"`` or ``"propagation"`` (a rule-modified backward).
        fg: whether FG-CAM can run over it: ``"FG-" + name`` is a method too.
        layer: whether it explains a layer (a CAM: built as ``cls(model, layer)``) rather
            than the input (built as ``cls(model)``).
    """

    name: str
    class_name: str
    module: str
    family: Family
    fg: bool
    layer: bool


_METHODS = "captum_fdcam.methods"

#: Every method, in the order of figures and tables.
REGISTRY: tuple[MethodInfo, ...] = (
    MethodInfo("Grad-CAM", "LayerGradCam", _METHODS, "gradient", fg=True, layer=True),
    MethodInfo("Grad-CAM++", "LayerGradCamPlusPlus", _METHODS, "gradient", fg=True, layer=True),
    MethodInfo("XGrad-CAM", "LayerXGradCam", _METHODS, "gradient", fg=True, layer=True),
    MethodInfo("Layer-CAM", "LayerLayerCam", _METHODS, "gradient", fg=True, layer=True),
    MethodInfo("Score-CAM", "LayerScoreCam", _METHODS, "perturbation", fg=True, layer=True),
    MethodInfo("Ablation-CAM", "LayerAblationCam", _METHODS, "perturbation", fg=True, layer=True),
    MethodInfo(
        "Group-CAM", "LayerGroupCam", _METHODS, "gradient+perturbation", fg=True, layer=True
    ),
    MethodInfo("FD-CAM", "LayerFDCam", _METHODS, "gradient+perturbation", fg=True, layer=True),
    MethodInfo("LRP", "PropagationLRP", _METHODS, "propagation", fg=False, layer=False),
    MethodInfo("CLRP", "CLRP", _METHODS, "propagation", fg=False, layer=False),
    MethodInfo("SGLRP", "SGLRP", _METHODS, "propagation", fg=False, layer=False),
)


def _entries() -> tuple[MethodInfo, ...]:
    # Read at call time (not bound at import) so that a test that adds an entry to
    # REGISTRY sees it everywhere.
    return REGISTRY


def cam_names(*families: Family) -> tuple[str, ...]:
    """The CAMs (methods that explain a layer), by display name, in table order; only
    those of the given families if any are given (``cam_names("gradient")``)."""
    return tuple(m.name for m in _entries() if m.layer and (not families or m.family in families))


def fg_names() -> tuple[str, ...]:
    """``"FG-" + name`` of every method FG-CAM can run over."""
    return tuple(FG_PREFIX + m.name for m in _entries() if m.fg)


def method_classes() -> dict[str, str]:
    """The CAMs' class names by display name (what ``captum_fdcam.METHODS`` holds)."""
    return {m.name: m.class_name for m in _entries() if m.layer}


def find(name: str) -> MethodInfo | None:
    """The entry of a display name (``"FD-CAM"``) or class name (``"LayerFDCam"``)."""
    for info in _entries():
        if name in (info.name, info.class_name):
            return info
    return None


def split_fg(name: str) -> tuple[str, bool]:
    """``(base name, whether FG-CAM was asked for)``: ``"FG-FD-CAM"`` gives
    ``("FD-CAM", True)``, ``"FD-CAM"`` gives ``("FD-CAM", False)``."""
    if name.startswith(FG_PREFIX):
        return name[len(FG_PREFIX) :], True
    return name, False


def load_class(info: MethodInfo) -> type:
    """The entry's class (imports its module, and with it torch)."""
    return getattr(importlib.import_module(info.module), info.class_name)
