"""Channel-switching CAMs: Ablation-CAM and FD-CAM.

Both switch channels of the layer's activations off (or on) and measure the
change of the target score. Only the network after the layer runs for the
switched copies (see :mod:`captum_fdcam._core.replay`). The copies do not depend on
the target (FD-CAM's channel groups come from the activation): examples of a batch
with the same input (one image for several targets) share their passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal, get_args

import torch
from captum._utils.typing import TargetType
from torch import Tensor
from torch.nn import Module

from captum_fdcam._core.base import (
    GradientPerturbationCamState,
    GradientPerturbationLayerCam,
    PerturbationCamState,
    PerturbationLayerCam,
    attribution_call,
)
from captum_fdcam._core.layout import ReshapeSpec
from captum_fdcam._core.numeric import min_max, safe_divide
from captum_fdcam._core.perturbation import ScoreType, check_score_type, score_dtype
from captum_fdcam._core.validation import check_real


def _per_channel(weights: list[Tensor]) -> Tensor:
    """Stacks per-example (K,) weights to (N, K, 1, 1)."""
    return torch.stack(weights)[:, :, None, None]


class LayerAblationCam(PerturbationLayerCam):
    r"""Ablation-CAM: the relative drop of the target score when a channel is removed.

    .. math:: w_k = \frac{y_c - y_c^{k\,\mathrm{off}}}{y_c}

    with :math:`y_c^{k\,\mathrm{off}}` the score with channel k of the layer's
    activations set to 0. Where :math:`y_c = 0` the weights are 0.

    Cost: one forward pass, then K copies through the network after the layer only
    (in batches of ``perturbations_per_eval``); all-zero channels cost nothing. The
    copies are the steps of the progress bar of ``attribute(..., show_progress=True)``
    (``Ablation-CAM``, "switched copies").

    Desai and Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020.

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        score: ``'logit'`` (default, as the paper: the output as it is),
            ``'probability'`` (softmax over dimension 1) or ``'sigmoid'``.
    """

    switches_channels = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
        score: ScoreType = "logit",
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        self.score = check_score_type(score, get_args(ScoreType))

    def weights(self, state: PerturbationCamState) -> Tensor:
        activation, engine = state.activation, state.engine
        n, k = activation.shape[:2]
        keep = ~torch.eye(k, dtype=torch.bool, device=activation.device)
        score = engine.resolve_score(self.score)
        weights = []
        with engine.progress(
            lambda: sum(engine.switch_passes(a, keep, i, score) for i, a in enumerate(activation)),
            "Ablation-CAM",
            "switched copies",
        ):
            for i in range(n):
                reference = engine.reference(i, score)
                off = engine.switch_scores(i, activation[i], keep, reference, score)
                weights.append(safe_divide(reference - off, reference.expand_as(off)))
        return _per_channel(weights).to(activation.dtype)


def cosine_similarity_matrix(activation: Tensor) -> Tensor:
    """(K, K) cosine similarities of the flattened channels of (K, h, w); 0 for zero-norm."""
    flat = activation.flatten(1)
    norms = flat.norm(dim=1)
    return safe_divide(flat @ flat.T, norms[:, None] * norms[None, :])


def similarity_groups(activation: Tensor, group_fraction: float | None) -> Tensor:
    """FD-CAM's channel groups, eq. (5): row k marks the group of channel k.

    Channel l is in the group of k when ``cos(A^k, A^l)`` is above the
    ``1 - group_fraction`` quantile of row k (linear interpolation, as
    ``torch.quantile`` and the authors' code), so the top ``group_fraction`` of
    channels are in; k itself always is. ``group_fraction=None``: groups of one.
    """
    k = activation.shape[0]
    eye = torch.eye(k, dtype=torch.bool, device=activation.device)
    if group_fraction is None:
        return eye
    # At least float32: torch.quantile refuses float16 and bfloat16.
    similarity = cosine_similarity_matrix(activation.to(score_dtype(activation.dtype)))
    threshold = torch.quantile(similarity, 1.0 - group_fraction, dim=1, keepdim=True)
    return (similarity > threshold) | eye


class LayerFDCam(GradientPerturbationLayerCam):
    r"""FD-CAM: gradient weights scaled by grouped channel-switching scores.

    For each channel k (Li et al., Sec. III):

    1. :math:`\alpha_k`: Grad-CAM's weight (spatially averaged gradient).
    2. :math:`G(A^k)`: the channels most similar to k by cosine similarity of their
       flattened maps (the top ``group_fraction``, 5% by default; eq. 4-5).
    3. Switch-off score :math:`s^-_k = y_c - y_c(G(A^k)\ \mathrm{off})` and
       switch-on score :math:`s^+_k = y_c(\mathrm{only}\ G(A^k)\ \mathrm{on})`,
       :math:`s_k = (s^-_k + s^+_k)/2` (eq. 6-8).
    4. Min-max normalise over the channels of the image: :math:`\hat\alpha, \hat s`.
    5. :math:`w_k = \hat\alpha_k e^{\hat s_k} - b`, b = 0.5 (eq. 10).

    Map: :math:`\mathrm{ReLU}(\sum_k w_k A^k)` with ``relu_attributions=True`` (eq. 11).

    Every variant of the paper's ablation tables (III, IV) is reachable:
    ``group_fraction=None`` (no grouping), ``switch='off'`` (switch-off score
    only), ``combination='linear'`` (:math:`\hat\alpha \hat s - b`) or ``'exp'``,
    any ``bias`` b. Scores are logits by default, as in the authors' code.

    Cost: one forward and one backward pass, then 2K switched copies through the
    network after the layer only (K with ``switch='off'``), in batches of
    ``perturbations_per_eval``; identical copies are evaluated once. The copies
    evaluated are the steps of the progress bar of ``attribute(...,
    show_progress=True)`` (``FD-CAM``, "switched copies").

    Li, Li, Ma and Wu, "FD-CAM: Improving Faithfulness and Discriminability of
    Visual Explanation for CNNs", CVPR 2022 XAI4CV workshop. https://arxiv.org/abs/2206.08792

    Args:
        forward_func, layer, device_ids, reshape_transform: as in
            :class:`~captum_fdcam.LayerCamBase` (Captum's ``LayerGradCam``, plus the
            transformer layout).
        group_fraction: share of the most similar channels in each group, in
            (0, 1]; ``None`` for no grouping. Default: 0.05
        switch: ``'both'`` (switch-off and switch-on, the paper) or ``'off'``.
        combination: ``'exp'`` (:math:`\hat\alpha e^{\hat s} - b`, eq. 10) or
            ``'linear'`` (:math:`\hat\alpha \hat s - b`).
        bias: b in eq. 10. Default: 0.5
        score: ``'logit'`` (default: the output as it is), ``'probability'`` (softmax
            over dimension 1) or ``'sigmoid'``.
    """

    switches_channels = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeSpec = None,
        group_fraction: float | None = 0.05,
        switch: Literal["both", "off"] = "both",
        combination: Literal["exp", "linear"] = "exp",
        bias: float = 0.5,
        score: ScoreType = "logit",
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform=reshape_transform)
        if group_fraction is not None:
            group_fraction = check_real("group_fraction", group_fraction)
            if not 0.0 < group_fraction <= 1.0:
                raise ValueError(f"group_fraction must be in (0, 1] or None, got {group_fraction}.")
        if switch not in ("both", "off"):
            raise ValueError(f"switch must be 'both' or 'off', got {switch!r}.")
        if combination not in ("exp", "linear"):
            raise ValueError(f"combination must be 'exp' or 'linear', got {combination!r}.")
        self.group_fraction = group_fraction
        self.switch = switch
        self.combination = combination
        self.bias = check_real("bias", bias)
        self.score = check_score_type(score, get_args(ScoreType))

    def switching_scores(
        self,
        activation: Tensor,
        state: PerturbationCamState,
        sample: int,
        keep: Tensor | None = None,
    ) -> Tensor:
        """The grouped channel-switching scores :math:`s_k` of example ``sample``, (K,),
        from its activation (K, h, w); ``keep``: its :meth:`switched_channels`, where
        already known."""
        engine = state.engine
        score = engine.resolve_score(self.score)
        reference = engine.reference(sample, score)
        k = activation.shape[0]
        if keep is None:
            keep = self.switched_channels(activation)
        scores = engine.switch_scores(sample, activation, keep, reference, score)
        if self.switch == "off":
            return reference - scores
        return ((reference - scores[:k]) + scores[k:]) / 2

    def switched_channels(self, activation: Tensor) -> Tensor:
        """The channels kept in each switched copy of (K, h, w) ``activation``: (K, K)
        switch-off rows (channel k's group off), then with ``switch='both'`` (K, K)
        switch-on rows (only channel k's group on)."""
        groups = similarity_groups(activation, self.group_fraction)
        return ~groups if self.switch == "off" else torch.cat([~groups, groups])

    def _keeps(self, state: PerturbationCamState) -> Iterator[tuple[int, Tensor]]:
        """Each example's index and :meth:`switched_channels`, computed once for the
        examples with the same input (kept until the last of them)."""
        engine, activation = state.engine, state.activation
        found: dict[int, Tensor] = {}
        for i in range(len(activation)):
            group = engine.members(i)
            if group[0] not in found:
                found[group[0]] = self.switched_channels(activation[i])
            yield i, found[group[0]] if i != group[-1] else found.pop(group[0])

    def _progress(self, state: PerturbationCamState) -> AbstractContextManager[None]:
        """The progress bar over the switched copies of every example of ``state``."""
        engine, activation = state.engine, state.activation
        score = engine.resolve_score(self.score)
        return engine.progress(
            # A function: the groups are computed again only when a bar is shown (once
            # for the examples with the same input, which share their copies).
            lambda: sum(
                engine.switch_passes(activation[i], self.switched_channels(activation[i]), i, score)
                for i in range(len(activation))
                if engine.members(i)[0] == i
            ),
            "FD-CAM",
            "switched copies",
        )

    def channel_scores(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
    ) -> Tensor:
        """The grouped channel-switching scores :math:`s_k` alone (before normalisation).

        The arguments are those of :meth:`attribute`; ``show_progress`` shows the same
        bar over the switched copies.

        Returns:
            (N, K) scores, for analysis and for the paper's ablations.
        """
        with attribution_call(self.forward_func, type(self).__name__, perturbs=True):
            (state,) = self.layer_state(
                inputs,
                target=target,
                additional_forward_args=additional_forward_args,
                attribute_to_layer_input=attribute_to_layer_input,
                perturbations_per_eval=perturbations_per_eval,
                show_progress=show_progress,
            )
            activation = state.activation
            with self._progress(state):
                return torch.stack(
                    [
                        self.switching_scores(activation[i], state, i, keep)
                        for i, keep in self._keeps(state)
                    ]
                )

    def weights(self, state: GradientPerturbationCamState) -> Tensor:
        activation, gradient = state.activation, state.gradient
        # Weights in at least float32 (the scores' dtype), the map in the activation's.
        alpha = gradient.to(score_dtype(gradient.dtype)).mean(dim=(2, 3))
        weights = []
        with self._progress(state):
            for i, keep in self._keeps(state):
                s_hat = min_max(
                    self.switching_scores(activation[i], state, i, keep).to(alpha.dtype)
                )
                a_hat = min_max(alpha[i])
                scale = torch.exp(s_hat) if self.combination == "exp" else s_hat
                weights.append(a_hat * scale - self.bias)
        return _per_channel(weights).to(activation.dtype)
