"""Scores to explain for models whose output is not one score per class.

A CAM explains one score per example, picked from the model's output by ``target``
as in Captum. A semantic segmentation model returns a score per class *and pixel*
((N, C, H, W), or torchvision's ``{"out": (N, C, H, W)}``); the usual score to explain is
the class's logit summed over a region: the pixels the model assigns to that class, or a
region of interest (pytorch-grad-cam's ``SemanticSegmentationTarget``).
:class:`SegmentationTarget` wraps such a model into one that returns these region sums,
(N, C), so every attribution of this library and of Captum runs on it unchanged::

    from captum_fdcam import LayerGradCam, SegmentationTarget

    seg = SegmentationTarget(model)  # e.g. torchvision's fcn_resnet50
    masks = seg.predicted_masks(x)  # (N, C, H, W): the pixels predicted as each class
    cam = LayerGradCam(seg, model.backbone.layer4)
    attr = cam.attribute(x, target=class_index, additional_forward_args=masks)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from captum_fdcam.errors import ModelOutputError


class SegmentationTarget(nn.Module):
    """A segmentation model as a model of one score per class: the class's logits summed
    over a region.

    ``SegmentationTarget(model)(x, mask)[n, c]`` is
    :math:`\\sum_{h,w} \\mathrm{out}[n, c, h, w] \\, \\mathrm{mask}[n, (c,) h, w]`, with
    ``out`` the model's (N, C, H, W) output. The wrapper is an ``nn.Module`` holding the
    model, so the model's layers are its submodules: pass them as CAM layers
    (``model.backbone.layer4``) and the wrapper as ``forward_func``.

    The region: pass ``mask`` as ``additional_forward_args`` of ``attribute``, one per
    example (Captum and this library give each example its own row, also for the
    perturbed copies of NoiseTunnel and of the perturbation CAMs):

    - (N, H, W): one region per example, for every class;
    - (N, C, H, W): one region per example and class, e.g. :meth:`predicted_masks`.

    Without a mask, the region of class c is where the model's own output on the input
    being evaluated has its maximum at c (recomputed on every input: on a perturbed copy
    it is that copy's prediction). Pass ``predicted_masks(x)`` to keep the regions of the
    unperturbed image, as pytorch-grad-cam does; perturbation CAMs (Ablation-CAM, FD-CAM,
    Score-CAM, Group-CAM) then compare the same score on every copy.

    Args:
        model: the segmentation model; its output is an (N, C, H, W) tensor or a mapping
            holding one (torchvision's segmentation models return ``{"out": ...}``).
        output_key: the key of the logits in a mapping output. Default: ``"out"``
    """

    def __init__(self, model: nn.Module, output_key: str = "out") -> None:
        super().__init__()
        self.model = model
        self.output_key = output_key

    def logits(self, inputs: Tensor) -> Tensor:
        """The model's (N, C, H, W) per-pixel scores for ``inputs``."""
        output = self.model(inputs)
        if isinstance(output, Mapping):
            if self.output_key not in output:
                raise KeyError(
                    f"The model returned keys {list(output)}, not {self.output_key!r}: pass "
                    "output_key= the key of the per-pixel logits."
                )
            output = output[self.output_key]
        if not isinstance(output, Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ModelOutputError(
                f"SegmentationTarget needs (N, C, H, W) per-pixel scores, got {shape}."
            )
        return output

    @torch.no_grad()
    def predicted_masks(self, inputs: Tensor) -> Tensor:
        """(N, C, H, W) masks in the logits' dtype: 1 where the model's output on
        ``inputs`` is largest at that class, else 0."""
        logits = self.logits(inputs)
        return _one_hot_argmax(logits)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, C): each class's logits summed over its region (see the class)."""
        logits = self.logits(inputs)
        if mask is None:
            # The argmax is piecewise constant: no gradient flows through the region.
            region = _one_hot_argmax(logits.detach())
        else:
            if mask.dim() == 3:
                mask = mask[:, None]
            if (
                mask.dim() != 4
                or mask.shape[1] not in (1, logits.shape[1])
                or mask.shape[-2:] != logits.shape[-2:]
            ):
                raise ValueError(
                    f"mask must be (N, H, W) or (N, C, H, W) with C, H, W = "
                    f"{tuple(logits.shape[1:])}, got shape {tuple(mask.shape)}."
                )
            region = mask.to(logits.dtype)
        return (logits * region).sum(dim=(2, 3))


def _one_hot_argmax(logits: Tensor) -> Tensor:
    labels = logits.argmax(dim=1, keepdim=True)
    return torch.zeros_like(logits).scatter_(1, labels, 1.0)


__all__ = ["SegmentationTarget"]
