"""CAM methods, one module per family."""

from captum_fdcam.methods.gradient import (
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerLayerCam,
    LayerXGradCam,
)
from captum_fdcam.methods.score import LayerGroupCam, LayerScoreCam
from captum_fdcam.methods.switching import LayerAblationCam, LayerFDCam

__all__ = [
    "LayerAblationCam",
    "LayerFDCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerGroupCam",
    "LayerLayerCam",
    "LayerScoreCam",
    "LayerXGradCam",
]
