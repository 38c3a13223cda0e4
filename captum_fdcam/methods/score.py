"""Input-masking CAMs: Score-CAM and Group-CAM.

Both turn (groups of) the layer's channels into masks at the input's resolution
and score the masked inputs with full forward passes, so they cost one forward
pass per distinct mask; masks that are identical share one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam._core.base import (
    GradientPerturbationLayerCam,
    LayerState,
    PerturbationLayerCam,
    safe_divide,
)
from captum_fdcam._core.layout import ReshapeTransform
from captum_fdcam._core.perturbation import PerturbationEngine, check_score_type, unique_rows


def _image_input(state: LayerState, method: str) -> Tensor:
    if len(state.inputs) != 1 or state.inputs[0].dim() != 4:
        shapes = [tuple(x.shape) for x in state.inputs]
        raise ValueError(
            f"{method} masks a single image input of shape (N, C, H, W); got inputs of "
            f"shapes {shapes}."
        )
    return state.inputs[0]


def upsampled_masks(maps: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinearly upsampled, min-max normalised masks of (M, h, w) maps.

    Returns the masks (M, H, W) in [0, 1] and each map's minimum and maximum after
    upsampling (M,), so that ``(map - low) / (high - low)`` upsamples to the mask.
    A constant map gives an all-zero mask.
    """
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.flatten(1).min(dim=1).values
    high = up.flatten(1).max(dim=1).values
    span = (high - low)[:, None, None]
    return safe_divide(up - low[:, None, None], span.expand_as(up)), low, high


def _canonical(maps: Tensor) -> Tensor:
    """Maps with constant ones set to 0: they all give the same (zero) mask."""
    flat = maps.flatten(1)
    constant = flat.max(dim=1).values == flat.min(dim=1).values
    return torch.where(constant[:, None, None], torch.zeros_like(maps), maps)


def _masked_scores(
    engine: PerturbationEngine,
    sample: int,
    maps: Tensor,
    size: tuple[int, int],
    perturb: Callable[[Tensor], Tensor],
    score: Literal["logit", "probability"],
) -> Tensor:
    """Scores of ``perturb(mask)`` for the mask of each (h, w) map in ``maps``, (M,).

    Maps giving identical masks are evaluated once; masks are built batch by batch
    so that memory grows with ``perturbations_per_eval``, not with M.
    """
    unique, inverse = unique_rows(_canonical(maps))

    def make_inputs(start: int, stop: int) -> tuple[Tensor, ...]:
        masks, _, _ = upsampled_masks(unique[start:stop], size)
        return (perturb(masks[:, None]),)

    scores = engine.input_scores(sample, len(unique), make_inputs, score)
    return scores[inverse]


class LayerScoreCam(PerturbationLayerCam):
    r"""Score-CAM: each channel weighted by the score of the input masked by it.

    .. math::
        H^k = s(\mathrm{Up}(A^k)),\qquad
        w_k = \mathrm{softmax}(f(X \circ H^k))_c - \mathrm{softmax}(f(X_b))_c

    with Up bilinear upsampling to the input size and s min-max normalisation
    (a constant channel gives a zero mask). The paper subtracts the score of a
    baseline input :math:`X_b` (``baseline=0.0``: the all-zero input, the default);
    the authors' code and ``torchcam`` do not (``baseline=None``). ``score='logit'``
    uses logits instead of probabilities.

    Cost: one forward pass per distinct mask (at most K), in batches of
    ``perturbations_per_eval``, plus one for the baseline.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR Workshops 2020. https://arxiv.org/abs/1910.01279

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        score: ``'probability'`` (default, softmax over classes) or ``'logit'``.
        baseline: value (float, or tensor broadcastable to one input) of the
            baseline input whose score is subtracted; ``None`` subtracts nothing.
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeTransform | None = None,
        score: Literal["logit", "probability"] = "probability",
        baseline: float | Tensor | None = 0.0,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        self.score = check_score_type(score)
        self.baseline = baseline

    def _weights(self, activation: Tensor, gradient: Tensor | None, state: LayerState) -> Tensor:
        engine = state.engine
        assert engine is not None
        x = _image_input(state, "Score-CAM")
        size = (x.shape[2], x.shape[3])
        n, k = activation.shape[:2]
        weights = []
        with engine.progress(n * k, "Score-CAM"):
            for i in range(n):
                image = x[i : i + 1]
                scores = _masked_scores(
                    engine, i, activation[i], size, lambda m, im=image: im * m, self.score
                )
                if self.baseline is not None:
                    base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
                    base = base.expand_as(image)
                    scores = scores - engine.input_scores(i, 1, lambda *_, b=base: (b,), self.score)
                weights.append(scores)
        return torch.stack(weights)[:, :, None, None].to(activation.dtype)


class LayerGroupCam(GradientPerturbationLayerCam):
    r"""Group-CAM: Grad-CAM-weighted channels in groups, scored on blurred-out inputs.

    1. The Grad-CAM terms :math:`\alpha_k A^k` are split into ``groups`` groups of
       consecutive channels and summed per group; ReLU; bilinear upsampling to the
       input; min-max normalisation: masks :math:`M_g`.
    2. :math:`X_g = X \circ M_g + \mathrm{blur}(X) \circ (1 - M_g)` (Gaussian blur,
       kernel 51, sigma 50).
    3. :math:`s_g = \mathrm{ReLU}(\mathrm{softmax}(f(X_g))_c -
       \mathrm{softmax}(f(\mathrm{blur}(X)))_c)`.
    4. Map :math:`\mathrm{ReLU}(\sum_g s_g M_g)`.

    The map is returned at the layer's resolution, as
    :math:`\sum_g s_g (R_g - m_g) / (M_g - m_g)` with :math:`R_g` the group sums
    and :math:`m_g, M_g` the minimum and maximum of their upsampled versions:
    bilinear upsampling (``LayerAttribution.interpolate``) turns it into the
    paper's map exactly. ``attr_dim_summation=False`` returns the G terms.

    Cost: one forward and one backward pass, then one forward pass per distinct
    group mask (at most ``groups``) plus one for the blurred input.

    Zhang et al., "Group-CAM: Group Score-Weighted Visual Explanations for Deep
    Convolutional Networks", 2021. https://arxiv.org/abs/2103.13859

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        groups: number of channel groups G (at most the number of channels;
            fewer channels give one group each). Default: 32
        blur_kernel_size: odd size of the Gaussian blur kernel. Default: 51
        blur_sigma: standard deviation of the blur. Default: 50.0
        score: ``'probability'`` (default) or ``'logit'``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeTransform | None = None,
        groups: int = 32,
        blur_kernel_size: int = 51,
        blur_sigma: float = 50.0,
        score: Literal["logit", "probability"] = "probability",
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        if groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups}.")
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {blur_kernel_size}.")
        self.groups = groups
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = float(blur_sigma)
        self.score = check_score_type(score)

    def grouped_terms(self, activation: Tensor, gradient: Tensor) -> tuple[Tensor, ...]:
        """The Grad-CAM terms ``alpha_k A^k`` in groups of consecutive channels."""
        terms = gradient.mean(dim=(2, 3), keepdim=True) * activation
        return torch.tensor_split(terms, min(self.groups, terms.shape[1]), dim=1)

    def group_maps(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the per-group sums of the Grad-CAM terms, (N, G, h, w)."""
        chunks = self.grouped_terms(activation, gradient)
        return F.relu(torch.cat([c.sum(dim=1, keepdim=True) for c in chunks], dim=1))

    def _components(self, activation: Tensor, gradient: Tensor | None, state: LayerState) -> Tensor:
        # Each group's term is shared among its channels in proportion to their
        # Grad-CAM terms (the LRP z-rule through the group sum), in equal shares
        # where those sum to zero, so the components still sum to the map.
        assert gradient is not None
        group_terms = self._terms(activation, gradient, state)
        parts = []
        for g, chunk in enumerate(self.grouped_terms(activation, gradient)):
            total = chunk.sum(dim=1, keepdim=True)
            share = torch.where(total != 0, safe_divide(chunk, total), 1.0 / chunk.shape[1])
            parts.append(share * group_terms[:, g : g + 1])
        return torch.cat(parts, dim=1)

    def blur(self, image: Tensor) -> Tensor:
        return gaussian_blur(image, [self.blur_kernel_size] * 2, [self.blur_sigma] * 2)

    def check_image_size(self, height: int, width: int) -> None:
        """The blur pads each side by ``blur_kernel_size // 2`` pixels with reflect padding,
        which needs more pixels than that: else torchvision fails deep inside with
        "Padding size should be less than the corresponding input dimension"."""
        pad = self.blur_kernel_size // 2
        if pad >= min(height, width):
            largest = 2 * min(height, width) - 1
            raise ValueError(
                f"Group-CAM's blur kernel of size {self.blur_kernel_size} pads each side by "
                f"{pad} pixels (reflect padding), which needs images of at least "
                f"{pad + 1} x {pad + 1} pixels; got {height} x {width}. Pass "
                f"blur_kernel_size={largest} or smaller (at most 2 * min(H, W) - 1)."
            )

    def _terms(self, activation: Tensor, gradient: Tensor | None, state: LayerState) -> Tensor:
        engine = state.engine
        assert engine is not None and gradient is not None
        x = _image_input(state, "Group-CAM")
        size = (x.shape[2], x.shape[3])
        self.check_image_size(*size)
        maps = self.group_maps(activation, gradient)
        n, g = maps.shape[:2]
        terms = []
        with engine.progress(n * (g + 1), "Group-CAM"):
            for i in range(n):
                image = x[i : i + 1]
                blurred = self.blur(image)
                base = engine.input_scores(i, 1, lambda *_, b=blurred: (b,), self.score)
                scores = _masked_scores(
                    engine,
                    i,
                    maps[i],
                    size,
                    lambda m, im=image, b=blurred: im * m + b * (1 - m),
                    self.score,
                )
                weights = F.relu(scores - base)
                _, low, high = upsampled_masks(maps[i], size)
                normalised = safe_divide(
                    maps[i] - low[:, None, None], (high - low)[:, None, None].expand_as(maps[i])
                )
                terms.append(weights[:, None, None].to(maps.dtype) * normalised)
        return torch.stack(terms)
