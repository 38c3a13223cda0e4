"""CAM methods, one module per family."""

from captum_fdcam.methods.fine_grained import FGCam, LayerFGCam
from captum_fdcam.methods.gradient import (
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerLayerCam,
    LayerXGradCam,
)
from captum_fdcam.methods.lrp import CLRP, SGLRP, PropagationLRP
from captum_fdcam.methods.score import LayerGroupCam, LayerScoreCam
from captum_fdcam.methods.switching import LayerAblationCam, LayerFDCam

__all__ = [
    "CLRP",
    "SGLRP",
    "FGCam",
    "LayerAblationCam",
    "LayerFDCam",
    "LayerFGCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerGroupCam",
    "LayerLayerCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "PropagationLRP",
]
