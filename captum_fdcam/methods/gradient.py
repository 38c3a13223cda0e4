"""Gradient-weighted CAMs: one forward pass and one backward pass to the layer.

Each class only says how its channel weights are computed from the activations
A (N, K, h, w) and the gradients g = dy_c/dA of the target score; the map is
``sum_k w_k A^k`` (ReLU with ``relu_attributions=True``), see
:class:`captum_fdcam.LayerCamBase`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_fdcam._core.base import GradientCamState, GradientLayerCam
from captum_fdcam._core.numeric import safe_divide

_SPATIAL = (2, 3)


class LayerGradCam(GradientLayerCam):
    r"""Grad-CAM: channel weights are the spatially averaged gradients.

    .. math:: w_k = \frac{1}{hw} \sum_{ij} \frac{\partial y_c}{\partial A^k_{ij}}

    The same map as Captum's :class:`captum.attr.LayerGradCam`, on the shared
    base (so with its checks, and usable as FD-CAM's gradient weights).

    Cost: one forward pass and one backward pass from the output to the layer.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017. https://arxiv.org/abs/1610.02391
    """

    def weights(self, state: GradientCamState) -> Tensor:
        return torch.mean(state.gradient, dim=_SPATIAL, keepdim=True)


class LayerGradCamPlusPlus(GradientLayerCam):
    r"""Grad-CAM++: positive gradients weighted by higher-order terms.

    .. math::
        a^k_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{ab} A^k_{ab}\, g_{ij}^3},
        \qquad w_k = \sum_{ij} a^k_{ij}\, \mathrm{ReLU}(g_{ij})

    with :math:`g = \partial y_c / \partial A^k` (eq. 19 of the paper, the
    exponential-score derivation that turns higher derivatives into powers of
    the first). The paper's weights carry a further factor :math:`\exp(y_c)`,
    positive and equal for every channel of an image: it only rescales the map
    and overflows float32 for logits above 88, so it is left out (as in the
    authors' and common implementations). Where the denominator is 0 (zero
    gradient) the coefficient is 0; no epsilon is added.

    Cost: one forward pass and one backward pass from the output to the layer.

    Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018.
    https://arxiv.org/abs/1710.11063
    """

    def weights(self, state: GradientCamState) -> Tensor:
        activation, gradient = state.activation, state.gradient
        grad_2 = gradient.pow(2)
        grad_3 = grad_2 * gradient
        denominator = 2 * grad_2 + activation.sum(dim=_SPATIAL, keepdim=True) * grad_3
        alpha = safe_divide(grad_2, denominator)
        return (alpha * F.relu(gradient)).sum(dim=_SPATIAL, keepdim=True)


class LayerXGradCam(GradientLayerCam):
    r"""XGrad-CAM (Axiom-based Grad-CAM): gradients weighted by normalised activations.

    .. math:: w_k = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}}
              \frac{\partial y_c}{\partial A^k_{ij}}

    Derived from the sensitivity and conservation axioms. A channel whose
    activations sum to 0 gets weight 0.

    Cost: one forward pass and one backward pass from the output to the layer.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020. https://arxiv.org/abs/2008.02312
    """

    def weights(self, state: GradientCamState) -> Tensor:
        activation = state.activation
        return safe_divide(
            (activation * state.gradient).sum(dim=_SPATIAL, keepdim=True),
            activation.sum(dim=_SPATIAL, keepdim=True),
        )


class LayerLayerCam(GradientLayerCam):
    r"""Layer-CAM: pixel-wise weights, the positive gradients.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g^k) \odot A^k\Big)

    (the outer ReLU with ``relu_attributions=True``). Because each location keeps
    its own weight, it stays meaningful at shallow layers, where averaged
    gradients are not.

    Cost: one forward pass and one backward pass from the output to the layer.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021. https://doi.org/10.1109/TIP.2021.3089943
    """

    def weights(self, state: GradientCamState) -> Tensor:
        return F.relu(state.gradient)
