"""Scores to explain for models whose output is not one score per class.

A CAM explains one score per example, picked from the model's output by ``target``
as in Captum. A semantic segmentation model returns a score per class *and pixel*
((N, C, H, W), or torchvision's ``{"out": (N, C, H, W)}``); the usual score to explain is
the class's logit summed over a region: the pixels the model assigns to that class, or a
region of interest (pytorch-grad-cam's ``SemanticSegmentationTarget``).
:class:`~captum_fdcam.SegmentationTarget` wraps such a model into one that returns these
region sums, (N, C), so every attribution of this library and of Captum runs on it
unchanged::

    from captum_fdcam import LayerGradCam, SegmentationTarget

    seg = SegmentationTarget(model)  # e.g. torchvision's fcn_resnet50
    masks = seg.predicted_masks(x)  # (N, C, H, W): the pixels predicted as each class
    cam = LayerGradCam(seg, model.backbone.layer4)
    attr = cam.attribute(x, target=class_index, additional_forward_args=masks)

The other wrappers follow the same pattern, an ``nn.Module`` holding the model that
returns one row of scores per example:

- :class:`~captum_fdcam.DetectionTarget`: a detector's score of the detection matching
  each given box, (N, B) (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``);
- :class:`~captum_fdcam.SimilarityTarget`: an image encoder's cosine similarity to each
  concept embedding, (N, Q) (pytorch-grad-cam's ``SimilarityToConceptTarget``);
- :class:`~captum_fdcam.MultiLabelTarget`: a multi-label classifier's per-label sigmoids,
  (N, C), with :func:`~captum_fdcam.expand_labels` to explain several labels per image.

Their outputs are already the scores to compare: their ``default_score`` is ``"logit"``.

:class:`~captum_fdcam.targets.Logits` is the plainest: a model whose output is an object
holding ``logits`` (Hugging Face's ``ImageClassifierOutput``) as one that returns them,
for the code that needs a tensor (Quantus's metrics, Captum's own attributions); this
library's classes read the logits themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from captum_fdcam._core.validation import check_real, model_scores, python_scalar
from captum_fdcam.errors import InputError, ModelOutputError


class Logits(nn.Module):
    """A model whose output object holds ``logits`` (a Hugging Face ``ModelOutput``) as
    one that returns them: ``Logits(model)(x)`` is ``model(x).logits``, (N, C); a tensor
    output is returned as it is.

    The model's layers are the wrapper's under ``model.`` (``Logits(hf).model.vit...``);
    the wrapper takes the model's train/eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return model_scores(self.model(*args, **kwargs))


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


def _check_images(images: Any) -> int:
    """The number of images in an (N, C, H, W) tensor; an error for anything else."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"DetectionTarget takes images as one (N, 3, H, W) tensor, got {shape}.")
    return images.shape[0]


def _held_tensor(output: Any, key: str) -> Any:
    """``output`` if it is a tensor, else what it holds under ``key`` (a mapping's item or
    an attribute, as Hugging Face's ``ModelOutput`` offers both), else ``output``."""
    if isinstance(output, Tensor):
        return output
    held = output.get(key) if isinstance(output, Mapping) else None
    return held if held is not None else getattr(output, key, output)


def _one_hot_argmax(logits: Tensor) -> Tensor:
    labels = logits.argmax(dim=1, keepdim=True)
    return torch.zeros_like(logits).scatter_(1, labels, 1.0)


class Detections(NamedTuple):
    """A detection model's detections, one row per image, padded to the same count B.

    Attributes:
        boxes: (N, B, 4) boxes (x1, y1, x2, y2) in the input's pixels; 0 in padding.
        labels: (N, B) int64 class labels; -1 in padding (it matches no detection).
        scores: (N, B) scores; 0 in padding.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor


class DetectionTarget(nn.Module):
    """A detection model as a model of one score per box to explain: the score of the
    detection that matches the box.

    ``DetectionTarget(model)(images, boxes, labels)[n, b]`` is the score of the model's
    detection on image n whose label is ``labels[n, b]`` and whose IoU with ``boxes[n, b]``
    is highest and at least ``iou_threshold`` (ties: the first in the model's order, which
    is by decreasing score); 0 when no detection matches. This is pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` convention, one box per column instead of their sum, so
    that ``target=b`` picks the box to explain.

    The model is a torchvision detector in eval mode (Faster R-CNN, RetinaNet, FCOS,
    SSD...): it takes a list of (3, H, W) images and returns one dict of ``boxes``,
    ``labels`` and ``scores`` per image. Its scores are softmax (sigmoid) of class logits,
    gathered after non-maximum suppression: differentiable, so gradient CAMs explain them;
    the matching itself is not differentiated. An unmatched box's 0 is the product of the
    example's scores with 0, so that a gradient CAM gives a zero map for it rather than an
    error. The wrapper is an ``nn.Module`` holding the model: pass the model's layers as
    CAM layers (``model.backbone.body.layer4``) and the wrapper as ``forward_func``.

    Boxes and labels go in as ``additional_forward_args=(boxes, labels)``, one row per
    example (the perturbation CAMs hand each example's copies its own row): the
    perturbed copies are scored on their detection matching the same box, which is what
    makes perturbation CAMs meaningful for a detector whose detections move. Get the
    model's own detections to explain with :meth:`detections`.

    Args:
        model: the detection model, in eval mode.
        iou_threshold: the least IoU of a matching detection, in [0, 1]. Default: 0.5
    """

    #: Score-CAM's and Group-CAM's ``score="auto"``: the outputs are already the scores
    #: (softmax or sigmoid inside the detector); a softmax over the boxes would compare
    #: different objects.
    default_score: ClassVar[str] = "logit"

    def __init__(self, model: nn.Module, iou_threshold: float = 0.5) -> None:
        super().__init__()
        iou_threshold = check_real("iou_threshold", iou_threshold)
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
        self.model = model
        self.iou_threshold = iou_threshold

    def raw_detections(self, images: Tensor) -> list[Mapping[str, Tensor]]:
        """The model's output on ``images`` (N, 3, H, W): one dict of ``boxes`` (D, 4),
        ``labels`` (D,) and ``scores`` (D,) per image, checked."""
        _check_images(images)
        if self.model.training:
            # torchvision's detectors return their losses in training mode, and need targets.
            raise ModelOutputError(
                "DetectionTarget needs the detection model in eval mode (in training mode "
                "torchvision's detectors return losses, not detections): call model.eval()."
            )
        output = self.model(list(images))
        if not isinstance(output, (list, tuple)) or len(output) != len(images):
            got = f"{len(output)} items" if isinstance(output, (list, tuple)) else None
            raise ModelOutputError(
                f"DetectionTarget needs a model that returns one dict of boxes, labels and "
                f"scores per image ({len(images)} here), got "
                f"{got or type(output).__name__}."
            )
        for i, detections in enumerate(output):
            if not isinstance(detections, Mapping) or not {"boxes", "labels", "scores"} <= set(
                detections
            ):
                held = list(detections) if isinstance(detections, Mapping) else None
                raise ModelOutputError(
                    f"DetectionTarget needs a dict with 'boxes', 'labels' and 'scores' per "
                    f"image, got {held if held is not None else type(detections).__name__} "
                    f"for image {i}."
                )
            count = len(detections["scores"])
            if (
                detections["boxes"].shape != (count, 4)
                or detections["labels"].shape != (count,)
                or detections["scores"].dim() != 1
            ):
                raise ModelOutputError(
                    f"Image {i}'s detections have boxes {tuple(detections['boxes'].shape)}, "
                    f"labels {tuple(detections['labels'].shape)} and scores "
                    f"{tuple(detections['scores'].shape)}; DetectionTarget needs (D, 4), "
                    "(D,) and (D,)."
                )
        return list(output)

    @torch.no_grad()
    def detections(self, images: Tensor, score_threshold: float = 0.0) -> Detections:
        """The model's detections on ``images`` (N, 3, H, W) whose score is at least
        ``score_threshold``, padded to the largest count B: ``boxes`` (N, B, 4),
        ``labels`` (N, B) (-1 in padding), ``scores`` (N, B). Pass ``boxes, labels`` as
        ``additional_forward_args`` to explain them; ``target=b`` explains each image's
        b-th detection (by decreasing score)."""
        score_threshold = check_real("score_threshold", score_threshold)
        kept = [
            {k: d[k][d["scores"] >= score_threshold] for k in ("boxes", "labels", "scores")}
            for d in self.raw_detections(images)
        ]
        count = max(len(d["scores"]) for d in kept)
        reference = kept[0]["boxes"]
        boxes = reference.new_zeros(len(kept), count, 4)
        labels = torch.full((len(kept), count), -1, dtype=torch.long, device=reference.device)
        scores = reference.new_zeros(len(kept), count)
        for i, d in enumerate(kept):
            found = len(d["scores"])
            boxes[i, :found] = d["boxes"]
            labels[i, :found] = d["labels"]
            scores[i, :found] = d["scores"]
        return Detections(boxes, labels, scores)

    def forward(
        self, images: Tensor, boxes: Tensor | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """(N, B): the score of the detection matching each box (see the class).

        Args:
            images: (N, 3, H, W) images.
            boxes: (N, B, 4) boxes (x1, y1, x2, y2) in the images' pixels.
            labels: (N, B) integer class labels of the boxes (-1: matches nothing).
        """
        if boxes is None or labels is None:
            # Without them Python would only say that forward misses an argument.
            raise InputError(
                "DetectionTarget scores given boxes: pass additional_forward_args=(boxes, "
                "labels), (N, B, 4) and (N, B), e.g. from DetectionTarget.detections(images)."
            )
        n = _check_images(images)
        if not isinstance(boxes, Tensor) or boxes.dim() != 3 or boxes.shape[::2] != (n, 4):
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise InputError(
                f"boxes must be an (N, B, 4) tensor with N = {n} images, got {shape}: pass "
                "additional_forward_args=(boxes, labels), one row of boxes per image."
            )
        if (
            not isinstance(labels, Tensor)
            or labels.shape != boxes.shape[:2]
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise InputError(
                f"labels must be an (N, B) integer tensor matching boxes {tuple(boxes.shape)}, "
                f"got {shape}" + (f" of {labels.dtype}" if isinstance(labels, Tensor) else "") + "."
            )
        rows = []
        for detections, wanted, wanted_labels in zip(
            self.raw_detections(images), boxes, labels, strict=True
        ):
            scores = detections["scores"]
            # Unmatched boxes score 0 * the example's scores: still part of the graph.
            zero = scores.sum() * 0
            if len(scores) == 0:
                rows.append(zero.expand(len(wanted)))
                continue
            with torch.no_grad():  # the matching is piecewise constant
                iou = box_iou(wanted.to(detections["boxes"]), detections["boxes"])
                # Two boxes of zero area have no IoU (0 / 0): 0, not a NaN that max picks.
                iou = iou.nan_to_num(nan=0.0)
                same = wanted_labels[:, None] == detections["labels"][None, :].to(labels.device)
                iou = torch.where(same.to(iou.device), iou, torch.full_like(iou, -1.0))
                best, index = iou.max(dim=1)
                matched = best >= self.iou_threshold
            rows.append(torch.where(matched, scores[index], zero))
        return torch.stack(rows)


class SimilarityTarget(nn.Module):
    """An image encoder as a model of one score per concept: the cosine similarity of the
    image's embedding to each concept embedding.

    ``SimilarityTarget(model, concepts)(x)[n, q]`` is
    :math:`\\frac{f_n \\cdot c_q}{\\lVert f_n \\rVert \\lVert c_q \\rVert}` with
    :math:`f_n` the model's (N, D) embedding of image n and :math:`c_q` row q of
    ``concepts`` (pytorch-grad-cam's ``SimilarityToConceptTarget``, for Q concepts at
    once): ``target=q`` explains concept q. An embedding of norm 0 has similarity 0.

    The model returns (N, D) embeddings: a timm model with ``num_classes=0`` (its pooled
    features), a CLIP image tower (embedding plus projection), or an output holding them
    under ``output_key`` (Hugging Face's ``CLIPVisionModelWithProjection`` returns
    ``image_embeds``). Concepts: text embeddings from the matching text tower, or image
    embeddings from :meth:`embeddings` of reference images. They are stored as given
    (a plain tensor, not a buffer) and taken to the embeddings' device and dtype.

    Args:
        model: the image encoder.
        concepts: (Q, D) concept embeddings, or one (D,).
        output_key: where the embeddings are in a mapping or object output.
            Default: ``"image_embeds"``
    """

    #: Score-CAM's and Group-CAM's ``score="auto"``: the similarities are the scores;
    #: a softmax over the concepts would make each depend on the others.
    default_score: ClassVar[str] = "logit"

    def __init__(
        self, model: nn.Module, concepts: Tensor, output_key: str = "image_embeds"
    ) -> None:
        super().__init__()
        if not isinstance(concepts, Tensor) or concepts.dim() not in (1, 2):
            shape = (
                tuple(concepts.shape) if isinstance(concepts, Tensor) else type(concepts).__name__
            )
            raise InputError(f"concepts must be a (Q, D) or (D,) tensor, got {shape}.")
        concepts = concepts.detach().reshape(-1, concepts.shape[-1])
        if not concepts.is_floating_point() or concepts.numel() == 0:
            raise InputError(
                f"concepts must be non-empty floating point embeddings, got "
                f"{tuple(concepts.shape)} of {concepts.dtype}."
            )
        norms = concepts.norm(dim=1)
        if not (torch.isfinite(concepts).all() and (norms > 0).all()):
            bad = torch.nonzero(~(torch.isfinite(norms) & (norms > 0))).flatten().tolist()
            raise InputError(
                f"concepts {bad} are zero, NaN or infinite: a cosine similarity needs "
                "finite, non-zero embeddings."
            )
        self.model = model
        self.concepts = concepts.clone()
        self.output_key = output_key

    def _embeddings(self, inputs: Tensor, *args: Any) -> Tensor:
        output = _held_tensor(self.model(inputs, *args), self.output_key)
        dim = self.concepts.shape[1]
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != dim:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ModelOutputError(
                f"SimilarityTarget needs (N, {dim}) embeddings (the concepts' size) from the "
                f"model, got {got}. For timm models create them with num_classes=0; for an "
                f"output object pass output_key= the key of the embeddings."
            )
        return output

    @torch.no_grad()
    def embeddings(self, inputs: Tensor, *args: Any) -> Tensor:
        """The model's (N, D) embeddings of ``inputs``, detached: e.g. concepts from
        reference images."""
        return self._embeddings(inputs, *args).detach()

    def forward(self, inputs: Tensor, *args: Any) -> Tensor:
        """(N, Q): the cosine similarity of each embedding to each concept. Further
        arguments go to the model."""
        features = self._embeddings(inputs, *args)
        concepts = self.concepts.to(features.device, features.dtype)
        return F.normalize(features, dim=1) @ F.normalize(concepts, dim=1).T


class MultiLabelTarget(nn.Module):
    """A multi-label classifier as a model of per-label probabilities: the sigmoid of
    each label's logit, (N, C).

    A multi-label model's labels are independent, each with its own sigmoid: the softmax
    that Score-CAM's and Group-CAM's ``score="probability"`` would take over the labels
    makes each label's score depend on the others. The wrapper returns the sigmoids, the
    model's own probabilities, so that every perturbation CAM compares them as they are
    (its ``default_score`` is ``"logit"``: use the outputs as they are). For gradient CAMs
    the sigmoid scales each example's gradients by :math:`\\sigma'(z) > 0`: the same map
    up to that factor as the logit's.

    To explain several labels of each image in one call, repeat each image once per label
    with :func:`~captum_fdcam.expand_labels` and pass its targets as Captum's per-example
    ``target``.

    Args:
        model: the classifier; its output is (N, C) logits or holds them under
            ``output_key`` (Hugging Face's ``ImageClassifierOutput``).
        output_key: where the logits are in a mapping or object output.
            Default: ``"logits"``
    """

    #: Score-CAM's and Group-CAM's ``score="auto"``: the sigmoids are the scores.
    default_score: ClassVar[str] = "logit"

    def __init__(self, model: nn.Module, output_key: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.output_key = output_key

    def logits(self, inputs: Tensor, *args: Any) -> Tensor:
        """The model's (N, C) logits for ``inputs``."""
        logits = _held_tensor(self.model(inputs, *args), self.output_key)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ModelOutputError(
                f"MultiLabelTarget needs (N, C) logits from the model, got {got}; for an "
                "output object pass output_key= the key of the logits."
            )
        return logits

    @torch.no_grad()
    def predicted_labels(
        self, inputs: Tensor, *args: Any, threshold: float = 0.5
    ) -> list[list[int]]:
        """Each image's labels whose probability is at least ``threshold``, in label
        order: the ``labels`` of :func:`~captum_fdcam.expand_labels`."""
        threshold = check_real("threshold", threshold)
        probabilities = self.forward(inputs, *args)
        return [torch.nonzero(row >= threshold).flatten().tolist() for row in probabilities]

    def forward(self, inputs: Tensor, *args: Any) -> Tensor:
        """(N, C): the sigmoid of each label's logit. Further arguments go to the model."""
        return torch.sigmoid(self.logits(inputs, *args))


class LabelRows(NamedTuple):
    """Images repeated once per label to explain (:func:`~captum_fdcam.expand_labels`).

    Attributes:
        inputs: (M, ...) the rows: image ``image[m]`` for the m-th label (a tuple when
            the inputs were a tuple).
        target: M labels, Captum's per-example ``target``.
        image: (M,) int64, each row's image in the original batch: index other
            per-image tensors with it (``masks[rows.image]``), or group the maps by image.
    """

    inputs: Tensor | tuple[Tensor, ...]
    target: list[int]
    image: Tensor


def expand_labels(
    inputs: Tensor | tuple[Tensor, ...], labels: Sequence[Sequence[int]] | Tensor
) -> LabelRows:
    """Repeats each image once per label to explain, for one attribution call over
    several labels per image.

    Args:
        inputs: (N, ...) images, or a tuple of (N, ...) tensors.
        labels: per image, the labels to explain: N sequences of label indices (e.g.
            :meth:`~captum_fdcam.MultiLabelTarget.predicted_labels`), or an (N, C) multi-hot tensor.

    Returns:
        :class:`~captum_fdcam.targets.LabelRows`: the rows, the per-row targets, and each
        row's image. An image without labels gets no row.
    """
    tensors = inputs if isinstance(inputs, tuple) else (inputs,)
    if not tensors or not all(isinstance(t, Tensor) and t.dim() > 0 for t in tensors):
        raise InputError("inputs must be an (N, ...) tensor or a tuple of them.")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise InputError(f"The inputs have different batch sizes {[t.shape[0] for t in tensors]}.")
    if isinstance(labels, Tensor):
        if labels.dim() != 2 or labels.shape[0] != n:
            raise InputError(
                f"A multi-hot labels tensor must be (N, C) with N = {n}, got {tuple(labels.shape)}."
            )
        per_image = [torch.nonzero(row).flatten().tolist() for row in labels]
    else:
        per_image = [list(row) for row in labels]
        if len(per_image) != n:
            raise InputError(
                f"labels must give a list of labels for each of the {n} images, "
                f"got {len(per_image)} lists."
            )
    target: list[int] = []
    image: list[int] = []
    for i, row in enumerate(per_image):
        for label in row:
            value = python_scalar(label)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
                raise InputError(
                    f"Labels must be non-negative integers, got {label!r} for image {i}."
                )
            target.append(int(value))
            image.append(i)
    index = torch.tensor(image, dtype=torch.long)
    rows = tuple(t[index.to(t.device)] for t in tensors)
    return LabelRows(rows if isinstance(inputs, tuple) else rows[0], target, index)


__all__ = [
    "DetectionTarget",
    "Detections",
    "LabelRows",
    "Logits",
    "MultiLabelTarget",
    "SegmentationTarget",
    "SimilarityTarget",
    "expand_labels",
]
