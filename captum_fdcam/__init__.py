"""captum-fdcam: recent class-activation-map methods as Captum attributions.

Every method is a Captum ``LayerAttribution`` with ``LayerGradCam``'s constructor
and ``attribute`` signature::

    from captum_fdcam import LayerXGradCam
    cam = LayerXGradCam(model, model.layer4)
    attr = cam.attribute(images, target=labels, relu_attributions=True)  # (N, 1, h, w)
"""

from captum_fdcam._core.base import (
    GradientLayerCam,
    GradientPerturbationLayerCam,
    LayerCamBase,
    LayerState,
    PerturbationLayerCam,
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
from captum_fdcam.targets import SegmentationTarget

__version__ = "0.1.0"

#: The CAM methods of this library, by the names used in figures and tables.
METHODS = {
    "Grad-CAM": LayerGradCam,
    "Grad-CAM++": LayerGradCamPlusPlus,
    "XGrad-CAM": LayerXGradCam,
    "Layer-CAM": LayerLayerCam,
    "Score-CAM": LayerScoreCam,
    "Ablation-CAM": LayerAblationCam,
    "Group-CAM": LayerGroupCam,
    "FD-CAM": LayerFDCam,
}

__all__ = [
    "CLRP",
    "METHODS",
    "SGLRP",
    "FGCam",
    "GradientLayerCam",
    "GradientPerturbationLayerCam",
    "LayerAblationCam",
    "LayerCamBase",
    "LayerFDCam",
    "LayerFGCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerGroupCam",
    "LayerLayerCam",
    "LayerScoreCam",
    "LayerState",
    "LayerXGradCam",
    "PerturbationLayerCam",
    "PropagationLRP",
    "SegmentationTarget",
    "ZBoxRule",
    "ZPlusRule",
    "__version__",
]
