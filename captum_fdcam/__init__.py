"""captum-fdcam: recent class-activation-map methods as Captum attributions.

Every method is a Captum ``LayerAttribution`` with ``LayerGradCam``'s constructor
and ``attribute`` signature::

    from captum_fdcam import LayerXGradCam
    cam = LayerXGradCam(model, model.layer4)
    attr = cam.attribute(images, target=labels, relu_attributions=True)  # (N, 1, h, w)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from captum_fdcam import registry as _registry

# The names below are imported on first use (PEP 562): importing torch and Captum takes
# seconds, which ``captum-fdcam --help`` and anything else that only needs a submodule
# (captum_fdcam.cli, captum_fdcam.reshape) should not pay.
if TYPE_CHECKING:
    from captum_fdcam._core.base import (
        CamState,
        GradientCamState,
        GradientLayerCam,
        GradientPerturbationCamState,
        GradientPerturbationLayerCam,
        LayerCamBase,
        PerturbationCamState,
        PerturbationLayerCam,
        StateT,
        WeightedLayerCam,
    )
    from captum_fdcam._core.layout import FeatureLayout
    from captum_fdcam._core.perturbation import PerturbationEngine
    from captum_fdcam.errors import (
        CamError,
        ConstantMapWarning,
        DefaultLayerWarning,
        DeviceError,
        FeatureMapError,
        GradientsDisabledError,
        InputError,
        LayerError,
        ModelOutputError,
        NonFiniteError,
        TargetError,
        TorchScriptError,
        UnsupportedModuleError,
    )
    from captum_fdcam.methods import (
        CLRP,
        SGLRP,
        FGCam,
        LayerAblationCam,
        LayerFDCam,
        LayerFGCam,
        LayerGradCam,
        LayerGradCamPlusPlus,
        LayerGroupCam,
        LayerLayerCam,
        LayerScoreCam,
        LayerXGradCam,
        PropagationLRP,
    )
    from captum_fdcam.propagation import ZBoxRule, ZPlusRule
    from captum_fdcam.targets import (
        DetectionTarget,
        Logits,
        MultiLabelTarget,
        SegmentationTarget,
        SimilarityTarget,
        expand_labels,
    )

__version__ = "0.1.0"

_EXPORTS = {
    "CamState": "captum_fdcam._core.base",
    "GradientCamState": "captum_fdcam._core.base",
    "GradientLayerCam": "captum_fdcam._core.base",
    "GradientPerturbationCamState": "captum_fdcam._core.base",
    "GradientPerturbationLayerCam": "captum_fdcam._core.base",
    "LayerCamBase": "captum_fdcam._core.base",
    "PerturbationCamState": "captum_fdcam._core.base",
    "PerturbationLayerCam": "captum_fdcam._core.base",
    "StateT": "captum_fdcam._core.base",
    "WeightedLayerCam": "captum_fdcam._core.base",
    "FeatureLayout": "captum_fdcam._core.layout",
    "PerturbationEngine": "captum_fdcam._core.perturbation",
    "CamError": "captum_fdcam.errors",
    "ConstantMapWarning": "captum_fdcam.errors",
    "DefaultLayerWarning": "captum_fdcam.errors",
    "FeatureMapError": "captum_fdcam.errors",
    "DeviceError": "captum_fdcam.errors",
    "GradientsDisabledError": "captum_fdcam.errors",
    "InputError": "captum_fdcam.errors",
    "LayerError": "captum_fdcam.errors",
    "ModelOutputError": "captum_fdcam.errors",
    "NonFiniteError": "captum_fdcam.errors",
    "TargetError": "captum_fdcam.errors",
    "TorchScriptError": "captum_fdcam.errors",
    "UnsupportedModuleError": "captum_fdcam.errors",
    # The methods' classes and FG-CAM's, from the registry: a method added there is
    # exported with no change here (its name still goes into __all__, for static tools).
    **{m.class_name: m.module for m in _registry.REGISTRY},
    **_registry.FG_CLASSES,
    "ZBoxRule": "captum_fdcam.propagation",
    "ZPlusRule": "captum_fdcam.propagation",
    "SegmentationTarget": "captum_fdcam.targets",
    "DetectionTarget": "captum_fdcam.targets",
    "Logits": "captum_fdcam.targets",
    "SimilarityTarget": "captum_fdcam.targets",
    "MultiLabelTarget": "captum_fdcam.targets",
    "expand_labels": "captum_fdcam.targets",
}

# METHODS by class name, so that the command line can list the names without importing
# the classes: read from the one registry of methods (standard library only).
_METHOD_CLASSES = _registry.method_classes()

# Subpackages the eager version of this module imported, so that code written as
# ``import captum_fdcam; captum_fdcam.methods.X`` keeps working.
_SUBMODULES = ("_core", "architectures", "methods", "propagation", "reshape", "targets")

#: The CAM methods of this library, by the names used in figures and tables.
METHODS: dict[str, type]

__all__ = [
    "CLRP",
    "METHODS",
    "SGLRP",
    "CamError",
    "CamState",
    "ConstantMapWarning",
    "DefaultLayerWarning",
    "DetectionTarget",
    "DeviceError",
    "FGCam",
    "FeatureLayout",
    "FeatureMapError",
    "GradientCamState",
    "GradientLayerCam",
    "GradientPerturbationCamState",
    "GradientPerturbationLayerCam",
    "GradientsDisabledError",
    "InputError",
    "LayerAblationCam",
    "LayerCamBase",
    "LayerError",
    "LayerFDCam",
    "LayerFGCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerGroupCam",
    "LayerLayerCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "Logits",
    "ModelOutputError",
    "MultiLabelTarget",
    "NonFiniteError",
    "PerturbationCamState",
    "PerturbationEngine",
    "PerturbationLayerCam",
    "PropagationLRP",
    "SegmentationTarget",
    "SimilarityTarget",
    "StateT",
    "TargetError",
    "TorchScriptError",
    "UnsupportedModuleError",
    "WeightedLayerCam",
    "ZBoxRule",
    "ZPlusRule",
    "__version__",
    "expand_labels",
]


def __getattr__(name: str) -> Any:
    if name == "METHODS":
        # The classes of the registry's CAMs, each from the module the registry names
        # (a method added there needs no change here).
        value: Any = {m.name: _registry.load_class(m) for m in _registry.REGISTRY if m.layer}
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Cached as a global: later look-ups do not come here, and METHODS stays one dict.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
