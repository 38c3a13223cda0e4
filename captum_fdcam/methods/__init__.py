"""CAM methods, one module per family."""

from captum_fdcam.methods.gradient import (
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerLayerCam,
    LayerXGradCam,
)

__all__ = ["LayerGradCam", "LayerGradCamPlusPlus", "LayerLayerCam", "LayerXGradCam"]
