"""Input-masking CAMs: Score-CAM and Group-CAM.

Both turn (groups of) the layer's channels into masks at the input's resolution
and score the masked inputs with full forward passes, so they cost one forward
pass per distinct mask; masks that are identical share one evaluation. Passes that
do not depend on the target (Score-CAM's masked inputs and baseline, Group-CAM's
blurred input; Group-CAM's masks come from the target's gradient) run once for the
examples of a batch with the same input (see :mod:`captum_fdcam._core.perturbation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution, PerturbationAttribution
from torch import Tensor
from torch.nn import Module
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam._core.base import (
    CamState,
    GradientPerturbationCamState,
    PerturbationCamState,
    PerturbationLayerCam,
    _PerturbationAttribute,
)
from captum_fdcam._core.layout import ReshapeSpec
from captum_fdcam._core.numeric import min_max, safe_divide
from captum_fdcam._core.perturbation import (
    PerturbationEngine,
    ScoreOption,
    ScoreType,
    check_score_type,
    unique_rows,
)
from captum_fdcam._core.validation import check_integer, check_real
from captum_fdcam.errors import FeatureMapError, InputError


def _image_input(state: CamState, method: str) -> Tensor:
    if len(state.inputs) != 1 or state.inputs[0].dim() != 4:
        shapes = [tuple(x.shape) for x in state.inputs]
        raise InputError(
            f"{method} masks a single image input of shape (N, C, H, W); got inputs of "
            f"shapes {shapes}."
        )
    return state.inputs[0]


def upsampled(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(M, h, w) maps bilinearly upsampled to ``size``, (M, H, W)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def upsampled_masks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly upsampled, min-max normalised masks of (M, h, w) maps: (M, H, W) in
    [0, 1], each map normalised on its own; a constant map gives an all-zero mask."""
    return min_max(upsampled(maps, size), dims=(1, 2))


def _canonical(maps: Tensor) -> Tensor:
    """Maps with constant ones set to 0: they all give the same (zero) mask."""
    flat = maps.flatten(1)
    constant = flat.max(dim=1).values == flat.min(dim=1).values
    return torch.where(constant[:, None, None], torch.zeros_like(maps), maps)


def distinct_maps(maps: Tensor) -> tuple[Tensor, Tensor]:
    """The maps of (M, h, w) ``maps`` that give distinct masks, and each map's index among them.

    Known before any pass runs, so that the progress bar's total counts the passes.
    """
    return unique_rows(_canonical(maps))


def _masked_scores(
    engine: PerturbationEngine,
    sample: int,
    distinct: tuple[Tensor, Tensor],
    size: tuple[int, int],
    perturb: Callable[[Tensor], Tensor],
    score: ScoreType,
    shared: str | None = None,
) -> Tensor:
    """Scores of ``perturb(mask)`` for the mask of each map, (M,), from
    :func:`distinct_maps` of the maps.

    Maps giving identical masks are evaluated once; masks are built batch by batch
    so that memory grows with ``perturbations_per_eval``, not with M. ``shared``: the
    masks depend on the example's input and activation only (see
    :meth:`PerturbationEngine.input_scores`).
    """
    unique, inverse = distinct

    def make_inputs(start: int, stop: int) -> tuple[Tensor, ...]:
        masks = upsampled_masks(unique[start:stop], size)
        return (perturb(masks[:, None]),)

    scores = engine.input_scores(sample, len(unique), make_inputs, score, shared=shared)
    return scores[inverse]


def check_map_size(activation: Tensor, method: str) -> None:
    """Masks from a 1 x 1 map are constant, so min-max normalisation makes every one of
    them 0: every weight, and the map, would be 0. Said here instead."""
    if activation.shape[-2] * activation.shape[-1] == 1:
        raise FeatureMapError(
            f"{method} masks the input with each channel's map, upsampled and min-max "
            f"normalised; the layer's map is 1 x 1 (activations {tuple(activation.shape)}), "
            "so every mask is empty and every weight 0. Explain a layer with a larger map "
            "(before the global pooling, or an earlier stage), or use larger inputs."
        )


def check_baseline(baseline: Any) -> float | Tensor | None:
    """Score-CAM's ``baseline``: None, a finite number, or a tensor (or numpy array) of
    finite real values; whether it fits the inputs is checked when they are known."""
    if baseline is None:
        return None
    if isinstance(baseline, np.ndarray) and baseline.ndim > 0:
        if baseline.dtype.kind not in "iuf":
            raise TypeError(f"baseline array must hold real numbers, got dtype {baseline.dtype}.")
        baseline = torch.from_numpy(baseline)
    if isinstance(baseline, Tensor) and baseline.dim() > 0:
        if baseline.dtype == torch.bool or baseline.is_complex():
            raise TypeError(f"baseline tensor must hold real numbers, got dtype {baseline.dtype}.")
        if not torch.isfinite(baseline).all():
            raise ValueError("baseline contains NaN or infinite values.")
        return baseline.detach()
    try:
        return check_real("baseline", baseline)
    except TypeError:
        raise TypeError(
            "baseline must be None, a number, or a tensor broadcastable to one input example, "
            f"got {type(baseline).__name__} ({baseline!r})."
        ) from None


class LayerScoreCam(PerturbationLayerCam):
    r"""Score-CAM: each channel weighted by the score of the input masked by it.

    .. math::
        H^k = s(\mathrm{Up}(A^k)),\qquad
        w_k = \mathrm{softmax}(f(X \circ H^k))_c - \mathrm{softmax}(f(X_b))_c

    with Up bilinear upsampling to the input size and s min-max normalisation
    (a constant channel gives a zero mask). The paper subtracts the score of a
    baseline input :math:`X_b` (``baseline=0.0``: the all-zero input, the default);
    the authors' code and ``torchcam`` do not (``baseline=None``).

    The score :math:`s`: by default (``score='auto'``) the softmax probability of the
    target class, as the paper, for a model with several outputs; the output itself
    (``'logit'``) for a model with one output per example, where a softmax is always 1;
    what the model declares as ``default_score`` (the wrappers of
    :mod:`captum_fdcam.targets`: their outputs are the scores). ``score='sigmoid'`` for a
    multi-label model (each label's own probability, not a softmax across independent
    labels), ``'logit'`` or ``'probability'`` to choose.

    Cost: one forward pass per distinct mask (at most K), in batches of
    ``perturbations_per_eval``, plus one for the baseline: the steps of the progress
    bar of ``attribute(..., show_progress=True)`` (``Score-CAM``, at most K + 1 per example,
    "masked inputs and baseline"). None of them depends on the target: examples of a
    batch with the same input (one image for several targets) share them.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR Workshops 2020. https://arxiv.org/abs/1910.01279

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        score: ``'auto'`` (default: see above), ``'probability'`` (softmax over
            dimension 1), ``'logit'`` (the output as it is) or ``'sigmoid'``.
        baseline: finite value (float, or tensor broadcastable to one input
            example, e.g. (C, 1, 1) per channel) of the baseline input whose score
            is subtracted; ``None`` subtracts nothing.
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
        score: ScoreOption = "auto",
        baseline: float | Tensor | None = 0.0,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        self.score = check_score_type(score)
        self.baseline = check_baseline(baseline)

    def check_inputs(self, inputs: tuple[Tensor, ...]) -> None:
        # Before the model runs: a baseline that cannot fill one example would otherwise
        # fail only after the reference pass, in an expand deep inside.
        self._baseline_image(inputs[0])

    def _baseline_image(self, x: Tensor) -> Tensor | None:
        """The baseline as one example of ``x`` (N, ...), shape (1, ...); None without one."""
        if self.baseline is None:
            return None
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        example = (1, *x.shape[1:])
        try:
            fits = torch.broadcast_shapes(base.shape, example) == example
        except RuntimeError:
            fits = False
        if not fits:
            per_channel = (x.shape[1], *[1] * (x.dim() - 2)) if x.dim() > 2 else None
            raise InputError(
                f"Score-CAM's baseline of shape {tuple(base.shape)} does not broadcast to one "
                f"input example of shape {tuple(x.shape[1:])} (inputs {tuple(x.shape)}): pass "
                f"a float, or a tensor of shape {tuple(x.shape[1:])} or one that broadcasts to "
                "it" + (f" (e.g. {per_channel}: one value per channel)." if per_channel else ".")
            )
        return base.expand(example)

    def weights(self, state: PerturbationCamState) -> Tensor:
        activation, engine = state.activation, state.engine
        x = _image_input(state, "Score-CAM")
        size = (x.shape[2], x.shape[3])
        base = self._baseline_image(x)
        score = engine.resolve_score(self.score)
        check_map_size(activation, "Score-CAM")
        # The examples with the same input have the same maps: found once for them.
        firsts = [engine.members(i)[0] for i in range(len(activation))]
        found = {i: distinct_maps(activation[i]) for i in set(firsts)}
        distinct = [found[i] for i in firsts]

        def total() -> int:
            # One pass per distinct mask, and one for the baseline, for each distinct input.
            return sum(
                engine.input_passes(i, len(unique), score, "masked")
                + (0 if base is None else engine.input_passes(i, 1, score, "baseline"))
                for i, (unique, _) in enumerate(distinct)
            )

        weights = []
        unit = "masked inputs" if base is None else "masked inputs and baseline"
        with engine.progress(total, "Score-CAM", unit):
            for i, maps in enumerate(distinct):
                image = x[i : i + 1]
                scores = _masked_scores(
                    engine, i, maps, size, lambda m, im=image: im * m, score, "masked"
                )
                if base is not None:
                    scores = scores - engine.input_scores(
                        i, 1, lambda *_, b=base: (b,), score, shared="baseline"
                    )
                weights.append(scores)
        return torch.stack(weights)[:, :, None, None].to(activation.dtype)


class LayerGroupCam(
    _PerturbationAttribute[GradientPerturbationCamState],
    PerturbationAttribution,
    GradientAttribution,
):
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
    group mask (at most ``groups``) plus one for the blurred input: the steps of the
    progress bar of ``attribute(..., show_progress=True)`` (``Group-CAM``, "masked and
    blurred inputs"). The masks depend on the target (through its gradient); the
    blurred input does not: examples of a batch with the same input share its pass.

    Zhang et al., "Group-CAM: Group Score-Weighted Visual Explanations for Deep
    Convolutional Networks", 2021. https://arxiv.org/abs/2103.13859

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        groups: number of channel groups G (at most the number of channels;
            fewer channels give one group each). Default: 32
        blur_kernel_size: odd size of the Gaussian blur kernel. Default: 51
        blur_sigma: standard deviation of the blur, positive. Default: 50.0
        score: ``'auto'`` (default: as Score-CAM, the softmax probability for a model
            with several outputs, the output itself for one output or where the model
            declares it), ``'probability'``, ``'logit'`` or ``'sigmoid'``.
    """

    requires_gradients = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
        groups: int = 32,
        blur_kernel_size: int = 51,
        blur_sigma: float = 50.0,
        score: ScoreOption = "auto",
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        self.groups = check_integer("groups", groups)
        self.blur_kernel_size = check_integer("blur_kernel_size", blur_kernel_size)
        if self.blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {blur_kernel_size}.")
        self.blur_sigma = check_real("blur_sigma", blur_sigma)
        if self.blur_sigma <= 0:  # torchvision's blur needs it, and says so only when it runs
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}.")
        self.score = check_score_type(score)

    def grouped_terms(self, activation: Tensor, gradient: Tensor) -> tuple[Tensor, ...]:
        """The Grad-CAM terms ``alpha_k A^k`` in groups of consecutive channels."""
        terms = gradient.mean(dim=(2, 3), keepdim=True) * activation
        return torch.tensor_split(terms, min(self.groups, terms.shape[1]), dim=1)

    def group_maps(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the per-group sums of the Grad-CAM terms, (N, G, h, w)."""
        chunks = self.grouped_terms(activation, gradient)
        return F.relu(torch.cat([c.sum(dim=1, keepdim=True) for c in chunks], dim=1))

    def components(self, state: GradientPerturbationCamState) -> Tensor:
        # Each group's term is shared among its channels in proportion to their
        # Grad-CAM terms (the LRP z-rule through the group sum), in equal shares
        # where those sum to zero, so the components still sum to the map.
        activation, gradient = state.activation, state.gradient
        group_terms = self.terms(state)
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
            raise InputError(
                f"Group-CAM's blur kernel of size {self.blur_kernel_size} pads each side by "
                f"{pad} pixels (reflect padding), which needs images of at least "
                f"{pad + 1} x {pad + 1} pixels; got {height} x {width}. Pass "
                f"blur_kernel_size={largest} or smaller (at most 2 * min(H, W) - 1)."
            )

    def terms(self, state: GradientPerturbationCamState) -> Tensor:
        """The G group terms :math:`s_g (R_g - m_g) / (M_g - m_g)`, (N, G, h, w)."""
        activation, gradient, engine = state.activation, state.gradient, state.engine
        x = _image_input(state, "Group-CAM")
        size = (x.shape[2], x.shape[3])
        self.check_image_size(*size)
        score = engine.resolve_score(self.score)
        check_map_size(activation, "Group-CAM")
        maps = self.group_maps(activation, gradient)
        distinct = [distinct_maps(m) for m in maps]

        def total() -> int:
            # One pass per distinct mask for each example, and one for the blurred input
            # for each distinct input.
            return sum(
                engine.input_passes(i, 1, score, "blurred") + len(unique)
                for i, (unique, _) in enumerate(distinct)
            )

        terms = []
        blurs: dict[int, Tensor] = {}  # the blurred input, once for the same inputs
        with engine.progress(total, "Group-CAM", "masked and blurred inputs"):
            for i in range(len(maps)):
                image = x[i : i + 1]
                group = engine.members(i)
                if group[0] not in blurs:
                    blurs[group[0]] = self.blur(image)
                blurred = blurs[group[0]] if i != group[-1] else blurs.pop(group[0])
                base = engine.input_scores(i, 1, lambda *_, b=blurred: (b,), score, "blurred")
                scores = _masked_scores(
                    engine,
                    i,
                    distinct[i],
                    size,
                    lambda m, im=image, b=blurred: im * m + b * (1 - m),
                    score,
                )
                weights = F.relu(scores - base)
                up = upsampled(maps[i], size)
                # Normalised by the range of the upsampled maps: upsampling then gives
                # the paper's masks exactly.
                bounds = (up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True))
                normalised = min_max(maps[i], bounds=bounds)
                terms.append(weights[:, None, None].to(maps.dtype) * normalised)
        return torch.stack(terms)
