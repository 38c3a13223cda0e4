"""captum-fdcam: recent class-activation-map methods as Captum attributions.

Every method is a Captum ``LayerAttribution`` with ``LayerGradCam``'s constructor
and ``attribute`` signature::

    from captum_fdcam import LayerXGradCam
    cam = LayerXGradCam(model, model.layer4)
    attr = cam.attribute(images, target=labels, relu_attributions=True)  # (N, 1, h, w)
"""

from captum_fdcam._core.base import GradientLayerCam, LayerCamBase, LayerState
from captum_fdcam.methods import (
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerLayerCam,
    LayerXGradCam,
)

__version__ = "0.1.0"

#: The CAM methods of this library, by the names used in figures and tables.
METHODS = {
    "Grad-CAM": LayerGradCam,
    "Grad-CAM++": LayerGradCamPlusPlus,
    "XGrad-CAM": LayerXGradCam,
    "Layer-CAM": LayerLayerCam,
}

__all__ = [
    "METHODS",
    "GradientLayerCam",
    "LayerCamBase",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerLayerCam",
    "LayerState",
    "LayerXGradCam",
    "__version__",
]
