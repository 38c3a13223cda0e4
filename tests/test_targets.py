"""Scores to explain beyond classification: detection, embeddings, multi-label.

Every expected value is computed here without the wrapper under test: detection scores
from the model's own output dicts and an IoU written from its formula; cosine
similarities and sigmoids from their formulas; Grad-CAM with a forward hook and
``torch.autograd.grad``; Ablation-CAM, FD-CAM and Score-CAM with channels zeroed (kept,
masked) by hand; the multi-label rows against one call per image and label.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam as CaptumLayerGradCam
from captum.attr import NoiseTunnel
from conftest import SmallCNN, assert_same_snapshot, model_snapshot
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from captum_fdcam import (
    DetectionTarget,
    FGCam,
    InputError,
    LayerAblationCam,
    LayerFDCam,
    LayerGradCam,
    LayerGroupCam,
    LayerScoreCam,
    ModelOutputError,
    MultiLabelTarget,
    SimilarityTarget,
    UnsupportedModuleError,
    expand_labels,
)
from captum_fdcam.reshape import TokensToGrid
from captum_fdcam.targets import Detections

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------- hand computations


def iou_by_formula(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0  # two boxes of zero area: no overlap


def matching_detection(
    detections: Mapping[str, Tensor], box: Tensor, label: int, threshold: float = 0.5
) -> int | None:
    """The index of the detection with ``label`` of highest IoU with ``box`` (the first on
    ties), if that IoU is at least ``threshold``."""
    best, found = -1.0, None
    for j in range(len(detections["scores"])):
        if int(detections["labels"][j]) != label:
            continue
        overlap = iou_by_formula(box.tolist(), detections["boxes"][j].tolist())
        if overlap > best:
            best, found = overlap, j
    return found if found is not None and best >= threshold else None


def matched_score(detections: Mapping[str, Tensor], box: Tensor, label: int) -> Tensor:
    j = matching_detection(detections, box, label)
    return detections["scores"].new_zeros(()) if j is None else detections["scores"][j]


@contextmanager
def hooked(layer: nn.Module, change: Callable[[Tensor], Tensor] | None = None) -> Iterator[list]:
    """Records the layer's output (replaced by ``change(output)`` when given)."""
    seen: list[Tensor] = []

    def hook(_: nn.Module, __: Any, output: Tensor) -> Tensor:
        output = output if change is None else change(output)
        seen.append(output)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def grad_cam_by_hand(activation: Tensor, score: Tensor) -> Tensor:
    (gradient,) = torch.autograd.grad(score, activation)
    return (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True).detach()


def min_max_mask(channel: Tensor, size: tuple[int, int]) -> Tensor:
    up = F.interpolate(channel[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    return torch.zeros_like(up) if high == low else (up - low) / (high - low)


def score_cam_by_hand(
    activation: Tensor, image: Tensor, score: Callable[[Tensor], Tensor]
) -> Tensor:
    """Score-CAM of one example, (1, h, w): sum_k (score(x * mask_k) - score(0)) A^k."""
    with torch.no_grad():
        base = score(torch.zeros_like(image))
        weights = [score(image * min_max_mask(a, image.shape[-2:])) - base for a in activation]
    return sum(w * a for w, a in zip(weights, activation, strict=True))[None]


# ------------------------------------------------------------------ detection models


def _init_spread(model: nn.Module) -> nn.Module:
    """Random weights of unit gain and zero biases: torchvision initialises the heads
    (RetinaNet's, FCOS's) to nearly constant outputs, which would make every score and
    map almost the same. With these, scores differ and gradients are not tiny."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model.double().eval()


def _backbone(channels: int) -> nn.Sequential:
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(8, channels, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, 2, 1),  # the CAM layer: channels x 8 x 8
        nn.ReLU(),
    )
    backbone.out_channels = channels  # type: ignore[assignment]
    return backbone


def _anchors() -> AnchorGenerator:
    return AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))


def faster_rcnn() -> nn.Module:
    """torchvision's FasterRCNN on a 3-conv backbone, 64 px images, 3 classes."""
    return _init_spread(
        FasterRCNN(
            _backbone(16),
            rpn_anchor_generator=_anchors(),
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
            box_head=TwoMLPHead(16 * 7 * 7, 32),
            box_predictor=FastRCNNPredictor(32, 4),
            min_size=64,
            max_size=64,
            box_score_thresh=0.0,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=30,
            box_detections_per_img=10,
        )
    )


def retinanet() -> nn.Module:
    return _init_spread(
        RetinaNet(
            _backbone(16),
            num_classes=4,
            anchor_generator=_anchors(),
            min_size=64,
            max_size=64,
            score_thresh=0.0,
            detections_per_img=10,
        )
    )


def fcos() -> nn.Module:
    # FCOS's heads use GroupNorm with 32 groups: 32 channels.
    model = _init_spread(
        FCOS(
            _backbone(32),
            num_classes=4,
            anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
            min_size=64,
            max_size=64,
            score_thresh=0.0,
            detections_per_img=10,
        )
    )
    # FCOS's box sizes are ReLUs of the regression: with a zero bias half of them are 0.
    nn.init.constant_(model.head.regression_head.bbox_reg.bias, 1.0)
    return model


DETECTORS = {"faster_rcnn": faster_rcnn, "retinanet": retinanet, "fcos": fcos}


@pytest.fixture(scope="module", params=list(DETECTORS))
def detector(request: pytest.FixtureRequest) -> nn.Module:
    return DETECTORS[request.param]()


@pytest.fixture(scope="module")
def rcnn() -> nn.Module:
    return faster_rcnn()


def detector_images(seed: int = 3) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 64, 64, generator=generator, dtype=torch.double)


def query_boxes(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, 4 boxes to explain: its first detection; its second, moved by a tenth of
    its size; a box of its own placed at random; its third with a label it does not have
    there (likely unmatched)."""
    with torch.no_grad():
        output = model(list(images))
    generator = torch.Generator().manual_seed(5)
    boxes, labels = [], []
    for detections in output:
        corner = torch.rand(2, generator=generator, dtype=torch.double) * 40
        free = torch.cat([corner, corner + 20])
        boxes.append(
            torch.stack(
                [
                    detections["boxes"][0],
                    detections["boxes"][1]
                    + 0.1 * (detections["boxes"][1, 2:] - detections["boxes"][1, :2]).repeat(2),
                    free,
                    detections["boxes"][2],
                ]
            )
        )
        third = int(detections["labels"][2])
        labels.append(
            torch.tensor(
                [
                    int(detections["labels"][0]),
                    int(detections["labels"][1]),
                    int(detections["labels"][0]),
                    (third % 3) + 1 if third != 0 else 2,
                ]
            )
        )
    return torch.stack(boxes), torch.stack(labels)


def detection_scores_by_hand(
    model: nn.Module,
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    targets: Sequence[int],
    change: Callable[[Tensor], Tensor] | None = None,
    layer: nn.Module | None = None,
) -> Tensor:
    """(N,) the matched scores of box ``targets[n]`` of each image, the model's layer
    output replaced by ``change`` when given."""
    with torch.no_grad():
        if change is None or layer is None:
            output = model(list(images))
        else:
            with hooked(layer, change):
                output = model(list(images))
    return torch.stack(
        [matched_score(output[n], boxes[n, t], int(labels[n, t])) for n, t in enumerate(targets)]
    )


# --------------------------------------------------------------------- detection


def test_detection_scores_are_the_matching_detections(detector: nn.Module) -> None:
    x = detector_images()
    boxes, labels = query_boxes(detector, x)
    target = DetectionTarget(detector)
    scores = target(x, boxes, labels)
    assert scores.shape == (2, 4) and scores.requires_grad  # differentiable
    with torch.no_grad():
        output = detector(list(x))
    found = 0
    for n in range(2):
        for b in range(4):
            j = matching_detection(output[n], boxes[n, b], int(labels[n, b]))
            expected = 0.0 if j is None else float(output[n]["scores"][j])
            assert scores[n, b].item() == pytest.approx(expected, rel=1e-12, abs=0), (n, b)
            found += j is not None
    assert 2 <= found < 8  # both matched and unmatched boxes are checked
    # A box with a label no detection of that image has: 0, still part of the graph.
    none = torch.full_like(labels, 99)
    zeros = target(x, boxes, none)
    assert torch.equal(zeros, torch.zeros_like(zeros)) and zeros.requires_grad


def test_iou_threshold_and_ties(rcnn: nn.Module) -> None:
    x = detector_images()[:1]
    with torch.no_grad():
        (output,) = rcnn(list(x))
    first = output["boxes"][0]
    label = int(output["labels"][0])
    wider = first.clone()
    wider[2] += (first[2] - first[0]) / 3  # IoU 3/4 with the first detection
    # The IoU of the widened box with every same-label detection, from the formula.
    overlaps = [
        iou_by_formula(wider.tolist(), output["boxes"][j].tolist())
        for j in range(len(output["scores"]))
        if int(output["labels"][j]) == label
    ]
    best = max(overlaps)
    assert best == pytest.approx(0.75, rel=1e-9)
    boxes, labels = wider[None, None], torch.tensor([[label]])
    assert DetectionTarget(rcnn, iou_threshold=best)(x, boxes, labels).item() > 0  # "at least"
    assert DetectionTarget(rcnn, iou_threshold=best + 1e-6)(x, boxes, labels).item() == 0
    assert DetectionTarget(rcnn, iou_threshold=0.0)(x, boxes, labels).item() > 0
    # Two copies of one box: each column is scored on its own.
    twice = DetectionTarget(rcnn)(x, torch.cat([boxes, boxes], 1), labels.repeat(1, 2))
    assert twice[0, 0] == twice[0, 1] == output["scores"][0]


def test_detections_are_the_models_own_padded(detector: nn.Module) -> None:
    x = detector_images()
    target = DetectionTarget(detector)
    with torch.no_grad():
        output = detector(list(x))
    threshold = float(output[0]["scores"].median())
    found = target.detections(x, score_threshold=threshold)
    assert isinstance(found, Detections)
    kept = [[j for j in range(len(d["scores"])) if d["scores"][j] >= threshold] for d in output]
    count = max(len(k) for k in kept)
    assert found.boxes.shape == (2, count, 4) and found.labels.shape == (2, count)
    assert found.labels.dtype == torch.long and found.scores.shape == (2, count)
    for n, indices in enumerate(kept):
        for b in range(count):
            if b < len(indices):
                j = indices[b]
                assert torch.equal(found.boxes[n, b], output[n]["boxes"][j])
                assert int(found.labels[n, b]) == int(output[n]["labels"][j])
                assert found.scores[n, b] == output[n]["scores"][j]
            else:  # padding
                assert int(found.labels[n, b]) == -1 and found.scores[n, b] == 0
                assert not found.boxes[n, b].any()
    # Each detection matches itself (IoU 1): the wrapper gives back its score.
    scores = target(x, found.boxes, found.labels).detach()
    torch.testing.assert_close(scores, found.scores, rtol=0, atol=0)


def test_grad_cam_on_a_detector_matches_hook_and_autograd(detector: nn.Module) -> None:
    x = detector_images()
    boxes, labels = query_boxes(detector, x)
    layer = detector.backbone[4]
    targets = [0, 1]
    with hooked(layer) as seen:
        output = detector(list(x))
    (activation,) = seen
    score = sum(
        matched_score(output[n], boxes[n, t], int(labels[n, t])) for n, t in enumerate(targets)
    )
    expected = grad_cam_by_hand(activation, score)
    assert expected.abs().amax(dim=(1, 2, 3)).min() > 0
    det = DetectionTarget(detector)
    got = LayerGradCam(det, layer).attribute(
        x, target=targets, additional_forward_args=(boxes, labels)
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-15)
    # Captum's own Grad-CAM on the wrapper gives the same map.
    captum = CaptumLayerGradCam(det, layer).attribute(
        x, target=targets, additional_forward_args=(boxes, labels)
    )
    torch.testing.assert_close(captum, expected, rtol=1e-9, atol=1e-15)


def test_an_unmatched_box_gives_a_zero_map(rcnn: nn.Module) -> None:
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    none = torch.full_like(labels, 99)
    with pytest.warns(Warning, match="constant"):  # the library says the map is 0
        got = LayerGradCam(DetectionTarget(rcnn), rcnn.backbone[4]).attribute(
            x, target=0, additional_forward_args=(boxes, none)
        )
    assert got.shape == (2, 1, 8, 8) and not got.any()


def test_ablation_cam_on_a_detector_zeroes_channels_like_by_hand(detector: nn.Module) -> None:
    """w_k = (y - y with channel k zeroed) / y, the matched score recomputed by hand on
    the detections of the ablated model (they move: the box is matched again)."""
    x = detector_images()
    boxes, labels = query_boxes(detector, x)
    layer = detector.backbone[4]
    targets = [0, 1]
    with torch.no_grad(), hooked(layer) as seen:
        detector(list(x))
    (activation,) = seen
    y = detection_scores_by_hand(detector, x, boxes, labels, targets)
    assert (y > 0).all()
    terms = LayerAblationCam(DetectionTarget(detector), layer).attribute(
        x, target=targets, additional_forward_args=(boxes, labels), attr_dim_summation=False
    )
    live = activation.flatten(2).ne(0).any(dim=2)
    for k in [int(torch.nonzero(live[0] & live[1])[j]) for j in (0, -1)]:

        def zero_k(out: Tensor, k: int = k) -> Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        y_off = detection_scores_by_hand(detector, x, boxes, labels, targets, zero_k, layer)
        expected = ((y - y_off) / y)[:, None, None] * activation[:, k]
        torch.testing.assert_close(terms[:, k], expected, rtol=1e-7, atol=1e-12)


def test_fd_cam_switching_scores_on_a_detector_by_hand(rcnn: nn.Module) -> None:
    """Without grouping, s_k = ((y - y(k off)) + y(only k on)) / 2 with the matched score."""
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    layer = rcnn.backbone[4]
    targets = [0, 1]
    y = detection_scores_by_hand(rcnn, x, boxes, labels, targets)
    cam = LayerFDCam(DetectionTarget(rcnn), layer, group_fraction=None)
    scores = cam.channel_scores(x, target=targets, additional_forward_args=(boxes, labels))
    assert scores.shape == (2, 16)
    for k in (2, 11):
        only = torch.zeros(16, dtype=torch.double)
        only[k] = 1

        def off(out: Tensor, only: Tensor = only) -> Tensor:
            return out * (1 - only)[None, :, None, None]

        def on(out: Tensor, only: Tensor = only) -> Tensor:
            return out * only[None, :, None, None]

        y_off = detection_scores_by_hand(rcnn, x, boxes, labels, targets, off, layer)
        y_on = detection_scores_by_hand(rcnn, x, boxes, labels, targets, on, layer)
        torch.testing.assert_close(scores[:, k], ((y - y_off) + y_on) / 2, rtol=1e-7, atol=1e-12)
    attr = cam.attribute(x, target=targets, additional_forward_args=(boxes, labels))
    assert attr.shape == (2, 1, 8, 8) and torch.isfinite(attr).all() and attr.any()


@pytest.mark.parametrize("method", [LayerAblationCam, LayerFDCam])
def test_only_the_network_after_the_layer_runs_on_a_detector(
    detector: nn.Module, method: type
) -> None:
    """The backbone's first convolution sees each image once: the channel-switched copies
    start at the layer (the rest of the backbone, proposals, box head), with no fallback."""
    x = detector_images()
    boxes, labels = query_boxes(detector, x)
    rows: list[int] = []
    first = detector.backbone[0]
    handle = first.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            method(DetectionTarget(detector), detector.backbone[4]).attribute(
                x, target=[0, 1], additional_forward_args=(boxes, labels), perturbations_per_eval=5
            )
    finally:
        handle.remove()
    assert sum(rows) == 2


def test_score_cam_on_a_detector_masks_like_by_hand(rcnn: nn.Module) -> None:
    """Each image's copies are scored on the box of its own row (box 0 is each image's own
    first detection)."""
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    layer = rcnn.backbone[4]
    targets = [0, 0]
    with torch.no_grad(), hooked(layer) as seen:
        rcnn(list(x))
    (activation,) = seen
    expected = []
    for n, t in enumerate(targets):

        def score(image: Tensor, n: int = n, t: int = t) -> Tensor:
            (output,) = rcnn([image[0]])
            return matched_score(output, boxes[n, t], int(labels[n, t]))

        expected.append(score_cam_by_hand(activation[n], x[n : n + 1], score))
    assert all(e.any() for e in expected)
    got = LayerScoreCam(DetectionTarget(rcnn), layer, score="logit").attribute(
        x, target=targets, additional_forward_args=(boxes, labels)
    )
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-9, atol=1e-12)


def test_group_cam_on_a_detector_per_example_rows(rcnn: nn.Module) -> None:
    """Group-CAM on a batch equals one call per image: each image's copies get its own
    boxes."""
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    cam = LayerGroupCam(
        DetectionTarget(rcnn),
        rcnn.backbone[4],
        groups=8,
        blur_kernel_size=11,
        blur_sigma=5.0,
        score="logit",
    )
    targets = [0, 1]
    batch = cam.attribute(x, target=targets, additional_forward_args=(boxes, labels))
    singles = torch.cat(
        [
            cam.attribute(
                x[n : n + 1],
                target=t,
                additional_forward_args=(boxes[n : n + 1], labels[n : n + 1]),
            )
            for n, t in enumerate(targets)
        ]
    )
    assert batch.flatten(1).any(dim=1).all()
    torch.testing.assert_close(batch, singles, rtol=1e-9, atol=1e-12)


# A noisy copy can lose the detection matching its box: its map is 0, and says so.
@pytest.mark.filterwarnings("ignore:.*constant")
def test_noise_tunnel_repeats_the_boxes(rcnn: nn.Module) -> None:
    """Captum's NoiseTunnel repeats each image's boxes for its noisy copies."""
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    cam = LayerGradCam(DetectionTarget(rcnn), rcnn.backbone[4])
    torch.manual_seed(13)
    got = NoiseTunnel(cam).attribute(
        x, nt_samples=2, stdevs=0.05, target=[0, 1], additional_forward_args=(boxes, labels)
    )
    # Captum 0.9 draws the copies as one normal over the (N n, ...) rows, example-major.
    torch.manual_seed(13)
    std = torch.tensor(0.05).repeat((4, *x.shape[1:]))
    noisy = x.repeat_interleave(2, dim=0) + torch.normal(0, std)
    maps = [
        cam.attribute(
            noisy[r : r + 1],
            target=[0, 1][r // 2],
            additional_forward_args=(boxes[r // 2 : r // 2 + 1], labels[r // 2 : r // 2 + 1]),
        )
        for r in range(4)
    ]
    expected = torch.stack([(maps[0] + maps[1])[0] / 2, (maps[2] + maps[3])[0] / 2])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_detection_leaves_model_and_inputs_unchanged(rcnn: nn.Module) -> None:
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    saved = (x.clone(), boxes.clone(), labels.clone())
    before = model_snapshot(rcnn)
    det = DetectionTarget(rcnn)
    for cam in (
        LayerGradCam(det, rcnn.backbone[4]),
        LayerAblationCam(det, rcnn.backbone[4]),
        LayerScoreCam(det, rcnn.backbone[4], score="logit"),
    ):
        cam.attribute(x, target=0, additional_forward_args=(boxes, labels))
    det.detections(x)
    assert_same_snapshot(before, model_snapshot(rcnn))
    for value, copy in zip((x, boxes, labels), saved, strict=True):
        assert torch.equal(value, copy)


def test_fg_cam_refuses_a_detector_with_a_clear_error(rcnn: nn.Module) -> None:
    """FG-CAM propagates relevance through every module: a detector's resizing transform
    and box pipeline have no rule, and the error names the module."""
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    fg = FGCam(LayerGradCam(DetectionTarget(rcnn), rcnn.backbone[4]))
    with pytest.raises(UnsupportedModuleError, match="GeneralizedRCNNTransform"):
        fg.attribute(x, target=0, additional_forward_args=(boxes, labels))


def test_detection_errors(rcnn: nn.Module) -> None:
    x = detector_images()
    boxes, labels = query_boxes(rcnn, x)
    det = DetectionTarget(rcnn)
    with pytest.raises(InputError, match=r"additional_forward_args=\(boxes, labels\)"):
        det(x)
    with pytest.raises(InputError, match=r"boxes must be an \(N, B, 4\) tensor with N = 2"):
        det(x, boxes[0], labels)
    with pytest.raises(InputError, match=r"boxes must be an \(N, B, 4\)"):
        det(x, boxes[:1], labels[:1])
    with pytest.raises(InputError, match=r"labels must be an \(N, B\) integer tensor"):
        det(x, boxes, labels.double())
    with pytest.raises(InputError, match=r"labels must be an \(N, B\) integer tensor"):
        det(x, boxes, labels[:, :2])
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        det(x[0], boxes[:1], labels[:1])
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        DetectionTarget(rcnn, iou_threshold=1.5)
    rcnn.train()
    try:
        with pytest.raises(ModelOutputError, match=r"eval mode.*model\.eval\(\)"):
            det(x, boxes, labels)
    finally:
        rcnn.eval()
    with pytest.raises(ModelOutputError, match=r"'boxes', 'labels' and 'scores'.*got Tensor"):
        DetectionTarget(nn.Identity().eval())(x, boxes, labels)  # the images back

    class Stacked(nn.Module):
        def forward(self, images: list[Tensor]) -> Tensor:
            return torch.stack(images)

    with pytest.raises(ModelOutputError, match="one dict of boxes, labels and scores"):
        DetectionTarget(Stacked().eval())(x, boxes, labels)

    class Dicts(nn.Module):
        def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
            return [{"boxes": torch.zeros(1, 4)} for _ in images]

    with pytest.raises(ModelOutputError, match="'boxes', 'labels' and 'scores'"):
        DetectionTarget(Dicts().eval())(x, boxes, labels)


def test_grad_cam_on_torchvisions_faster_rcnn_resnet50_fpn() -> None:
    """The detector the docs use, at ``backbone.body.layer4``, against hook and autograd."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=96,
        max_size=128,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30,
        box_detections_per_img=10,
    ).eval()
    # Random weights saturate the softmax (scores of 1.0, gradients of 1e-6).
    nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.002)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    layer = model.backbone.body.layer4
    det = DetectionTarget(model)
    found = det.detections(x)
    targets = [0, 2]
    with hooked(layer) as seen:
        output = model(list(x))
    (activation,) = seen
    score = sum(
        matched_score(output[n], found.boxes[n, t], int(found.labels[n, t]))
        for n, t in enumerate(targets)
    )
    expected = grad_cam_by_hand(activation, score)
    got = LayerGradCam(det, layer).attribute(
        x, target=targets, additional_forward_args=(found.boxes, found.labels)
    )
    assert got.shape == (2, 1, 3, 4) and expected.abs().amax(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())


# -------------------------------------------------------------------- embeddings


class TinyImageTower(nn.Module):
    """A CLIP-style image tower: a CNN backbone, pooled, then a linear projection into the
    embedding space."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),  # the CAM layer: 12 x 8 x 8 for 16 px
            nn.ReLU(),
        )
        self.projection = nn.Linear(12, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tower() -> nn.Module:
    torch.manual_seed(0)
    return TinyImageTower().double().eval()


@pytest.fixture(scope="module")
def timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0
    ).eval()


def cosine_by_formula(f: Sequence[float], c: Sequence[float]) -> float:
    dot = sum(a * b for a, b in zip(f, c, strict=True))
    return dot / (math.sqrt(sum(a * a for a in f)) * math.sqrt(sum(b * b for b in c)))


def test_similarity_scores_by_formula(tower: nn.Module) -> None:
    x = torch.rand(3, 3, 16, 16, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    concepts = torch.randn(4, 8, dtype=torch.double, generator=torch.Generator().manual_seed(2))
    sim = SimilarityTarget(tower, concepts)
    scores = sim(x)
    with torch.no_grad():
        features = tower(x)
    assert scores.shape == (3, 4) and scores.requires_grad
    for n in range(3):
        for q in range(4):
            expected = cosine_by_formula(features[n].tolist(), concepts[q].tolist())
            assert scores[n, q].item() == pytest.approx(expected, rel=1e-12)
    # One concept as (D,); concepts from the images' own embeddings: similarity 1.
    torch.testing.assert_close(SimilarityTarget(tower, concepts[1])(x), scores[:, 1:2])
    own = SimilarityTarget(tower, sim.embeddings(x))(x)
    torch.testing.assert_close(own.diagonal(), torch.ones(3, dtype=torch.double))
    # An output object holding the embeddings (Hugging Face's image_embeds).
    wrapped = nn.ModuleDict({"tower": tower})

    class Output(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = wrapped

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"last_hidden_state": x, "image_embeds": self.inner["tower"](x)}

    torch.testing.assert_close(SimilarityTarget(Output(), concepts)(x), scores)

    class Zero(nn.Module):  # embeddings of norm 0: similarity 0, not NaN
        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1)[:, :8] * 0

    assert torch.equal(SimilarityTarget(Zero(), concepts)(x), torch.zeros(3, 4, dtype=x.dtype))


def test_grad_cam_on_timm_vit_embeddings_matches_hook_and_autograd(timm_vit: nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    concepts = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    layer = timm_vit.blocks[-1].norm1
    with hooked(layer) as seen:
        features = timm_vit(x)
    (tokens,) = seen
    assert features.shape == (2, 16)  # num_classes=0: the pooled features
    targets = [2, 0]
    score = sum(F.cosine_similarity(features[n], concepts[q], dim=0) for n, q in enumerate(targets))
    (gradient,) = torch.autograd.grad(score, tokens)
    prefix = timm_vit.num_prefix_tokens

    def grid(t: Tensor) -> Tensor:  # tokens (N, P + 16, C) -> (N, C, 4, 4)
        return t[:, prefix:].reshape(2, 4, 4, 16).permute(0, 3, 1, 2)

    a, g = grid(tokens.detach()), grid(gradient)
    expected = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    cam = LayerGradCam(
        SimilarityTarget(timm_vit, concepts), layer, reshape_transform=TokensToGrid(prefix)
    )
    got = cam.attribute(x, target=targets)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_ablation_and_score_cam_on_an_image_tower_by_hand(tower: nn.Module) -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.double, generator=torch.Generator().manual_seed(4))
    concepts = torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(5))
    layer = tower.backbone[3]
    targets = [1, 2]
    sim = SimilarityTarget(tower, concepts)

    def similarity(features: Tensor) -> Tensor:  # (N,) of each row's target concept
        return torch.stack(
            [
                torch.tensor(
                    cosine_by_formula(features[n].tolist(), concepts[q].tolist()),
                    dtype=torch.double,
                )
                for n, q in enumerate(targets[: len(features)])
            ]
        ).to(features.dtype)

    with torch.no_grad(), hooked(layer) as seen:
        y = similarity(tower(x))
    (activation,) = seen
    terms = LayerAblationCam(sim, layer).attribute(x, target=targets, attr_dim_summation=False)
    for k in (0, 7):
        with torch.no_grad(), hooked(layer, lambda o, k=k: o.index_fill(1, torch.tensor([k]), 0)):
            y_off = similarity(tower(x))
        expected = ((y - y_off) / y)[:, None, None] * activation[:, k]
        assert expected.abs().max() > 0
        torch.testing.assert_close(terms[:, k], expected, rtol=1e-9, atol=1e-12)

    expected_maps = []
    for n, q in enumerate(targets):

        def score(image: Tensor, q: int = q) -> Tensor:
            f = tower(image)[0]
            return torch.tensor(
                cosine_by_formula(f.tolist(), concepts[q].tolist()), dtype=torch.double
            )

        expected_maps.append(score_cam_by_hand(activation[n], x[n : n + 1], score))
    got = LayerScoreCam(sim, layer, score="logit").attribute(x, target=targets)
    torch.testing.assert_close(got, torch.stack(expected_maps).to(got.dtype), rtol=1e-9, atol=1e-12)


def test_fg_cam_and_hugging_face_clip_tower() -> None:
    """A Hugging Face CLIP image tower (``image_embeds``) at a token layer, and FG-CAM
    through it, which needs the wrapper to be a module."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=8,
    )
    clip = transformers.CLIPVisionModelWithProjection(config).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    concepts = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    sim = SimilarityTarget(clip, concepts)
    with torch.no_grad():
        embeds = clip(pixel_values=x).image_embeds
    expected = [[cosine_by_formula(e.tolist(), c.tolist()) for c in concepts] for e in embeds]
    np.testing.assert_allclose(sim(x).detach().numpy(), expected, rtol=1e-5)
    layer = clip.vision_model.encoder.layers[-1].layer_norm1
    cam = LayerGradCam(sim, layer, reshape_transform=TokensToGrid(1))
    maps = cam.attribute(x, target=[0, 1])
    assert maps.shape == (2, 1, 4, 4) and maps.any()
    tower = TinyImageTower().eval()
    fine = FGCam(LayerGradCam(SimilarityTarget(tower, concepts), tower.backbone[3]))
    full = fine.attribute(torch.rand(2, 3, 16, 16), target=[0, 1])
    assert full.shape == (2, 1, 16, 16) and torch.isfinite(full).all() and full.any()


def test_similarity_errors(tower: nn.Module) -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.double)
    with pytest.raises(InputError, match=r"concepts must be a \(Q, D\) or \(D,\) tensor"):
        SimilarityTarget(tower, torch.zeros(1, 2, 8))
    with pytest.raises(InputError, match=r"or \(D,\) tensor, got list"):
        SimilarityTarget(tower, [[1.0] * 8])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"concepts \[1\] are zero"):
        SimilarityTarget(tower, torch.stack([torch.ones(8), torch.zeros(8)]))
    with pytest.raises(InputError, match="floating point"):
        SimilarityTarget(tower, torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ModelOutputError, match=r"\(N, 5\) embeddings.*num_classes=0"):
        SimilarityTarget(tower, torch.ones(2, 5))(x)
    with pytest.raises(ModelOutputError, match="output_key"):
        SimilarityTarget(nn.Flatten(0), torch.ones(2, 8))(x)


# ------------------------------------------------------------------- multi-label


@pytest.fixture(scope="module")
def multilabel() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5).double().eval()  # 8 px, 12 channels of 4x4 at features[3]


def test_multilabel_scores_are_sigmoids(multilabel: nn.Module) -> None:
    x = torch.rand(3, 3, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    target = MultiLabelTarget(multilabel)
    probabilities = target(x)
    with torch.no_grad():
        logits = multilabel(x)
    expected = [[1 / (1 + math.exp(-z)) for z in row] for row in logits.tolist()]
    np.testing.assert_allclose(probabilities.detach().numpy(), expected, rtol=1e-12)
    threshold = float(probabilities.detach().median())
    predicted = target.predicted_labels(x, threshold=threshold)
    assert predicted == [[c for c in range(5) if expected[n][c] >= threshold] for n in range(3)]
    assert sum(map(len, predicted)) >= 3


def test_expand_labels() -> None:
    x = torch.arange(3 * 2, dtype=torch.double).reshape(3, 2)
    rows = expand_labels(x, [[4, 1], [], [0]])
    assert rows.target == [4, 1, 0]
    assert rows.image.tolist() == [0, 0, 2]
    assert torch.equal(rows.inputs, torch.stack([x[0], x[0], x[2]]))
    hot = torch.zeros(3, 5, dtype=torch.bool)
    hot[0, [1, 4]] = True
    hot[2, 0] = True
    by_mask = expand_labels((x, x * 2), hot)
    assert by_mask.target == [1, 4, 0] and by_mask.image.tolist() == [0, 0, 2]
    assert isinstance(by_mask.inputs, tuple)
    assert torch.equal(by_mask.inputs[1], 2 * torch.stack([x[0], x[0], x[2]]))
    with pytest.raises(InputError, match="for each of the 3 images, got 2"):
        expand_labels(x, [[1], [2]])
    with pytest.raises(InputError, match="non-negative integers, got -1 for image 1"):
        expand_labels(x, [[1], [-1], []])
    with pytest.raises(InputError, match="non-negative integers"):
        expand_labels(x, [[1.5], [], []])
    with pytest.raises(InputError, match=r"multi-hot labels tensor must be \(N, C\) with N = 3"):
        expand_labels(x, hot[:2])
    with pytest.raises(InputError, match="different batch sizes"):
        expand_labels((x, x[:2]), [[1], [], []])


def test_multilabel_rows_equal_one_call_per_label(multilabel: nn.Module) -> None:
    """All labels of all images in one call: the same maps as one call per image and
    label, for a gradient CAM, a perturbation CAM, FG-CAM and Captum's Grad-CAM; Grad-CAM
    also by hand."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(2))
    labels = [[0, 3, 4], [2]]
    rows = expand_labels(x, labels)
    target = MultiLabelTarget(multilabel)
    layer = multilabel.features[3]
    cams = [
        LayerGradCam(target, layer),
        LayerScoreCam(target, layer, score="logit"),
        FGCam(LayerGradCam(target, layer)),
        CaptumLayerGradCam(target, layer),  # Captum's own attributions run on it too
    ]
    for cam in cams:
        batch = cam.attribute(rows.inputs, target=rows.target)
        singles = torch.cat(
            [
                cam.attribute(x[i : i + 1], target=label)
                for i, image_labels in enumerate(labels)
                for label in image_labels
            ]
        )
        assert batch.shape[0] == 4 and batch.any()
        torch.testing.assert_close(batch, singles, rtol=1e-9, atol=1e-12)
    # Grad-CAM of the sigmoid by hand, row by row.
    with hooked(layer) as seen:
        logits = multilabel(rows.inputs)
    (activation,) = seen
    score = sum(torch.sigmoid(logits[m, c]) for m, c in enumerate(rows.target))
    torch.testing.assert_close(
        cams[0].attribute(rows.inputs, target=rows.target),
        grad_cam_by_hand(activation, score),
        rtol=1e-9,
        atol=1e-15,
    )


def test_score_cam_on_sigmoids_by_hand(multilabel: nn.Module) -> None:
    """Score-CAM with the outputs as they are: the label's own sigmoid, no softmax over
    the labels."""
    x = torch.rand(1, 3, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(3))
    layer = multilabel.features[3]
    with torch.no_grad(), hooked(layer) as seen:
        multilabel(x)
    (activation,) = seen

    def score(image: Tensor) -> Tensor:
        return 1 / (1 + torch.exp(-multilabel(image)[0, 3]))

    expected = score_cam_by_hand(activation[0], x, score)[None]
    got = LayerScoreCam(MultiLabelTarget(multilabel), layer, score="logit").attribute(x, target=3)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_multilabel_errors(multilabel: nn.Module) -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.double)
    with pytest.raises(ModelOutputError, match=r"\(N, C\) logits.*output_key"):
        MultiLabelTarget(nn.Identity())(x)

    class HuggingFaceLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = multilabel

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"logits": self.inner(x)}

    torch.testing.assert_close(
        MultiLabelTarget(HuggingFaceLike())(x), MultiLabelTarget(multilabel)(x)
    )


# ------------------------------------------------------------------------- shared


@pytest.mark.parametrize("wrapper", [DetectionTarget, SimilarityTarget, MultiLabelTarget])
def test_score_default(wrapper: type) -> None:
    """Score-CAM's and Group-CAM's score="auto" reads ``default_score``: these wrappers'
    outputs are already scores, to be compared as they are."""
    assert wrapper.default_score == "logit"


def test_detection_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from captum_fdcam.visualization import OVERLAY_SCALE, build_detection_figure, detection_figure

    image = np.random.default_rng(0).random((32, 48, 3))
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [10.0, 5.0, 40.0, 25.0], [0, 0, 0, 0]])
    labels = torch.tensor([1, 2, -1])  # the last is padding: not drawn
    scores = torch.tensor([0.9, 0.4, 0.0])
    maps = {"box 0": torch.rand(1, 1, 32, 48), "box 1": torch.rand(32, 48)}
    fig = build_detection_figure(
        image,
        maps,
        boxes,
        labels,
        scores,
        explained={"box 0": 0, "box 1": 1},
        class_names=["background", "cat", "dog"],
        layer="backbone.body.layer4",
    )
    try:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert [ax.get_title() for ax in panels] == ["input", "box 0", "box 1"]
        for ax, bold in zip(panels, [None, 0, 1], strict=True):
            rects = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert [r.get_label() for r in rects] == ["cat 0.90", "dog 0.40"]
            for b, rect in enumerate(rects):
                x1, y1, x2, y2 = boxes[b].tolist()
                assert rect.get_xy() == (x1, y1)
                assert (rect.get_width(), rect.get_height()) == (x2 - x1, y2 - y1)
                assert rect.get_linewidth() == (2.0 if bold in (None, b) else 1.0)
            texts = [t.get_text() for t in ax.texts]
            assert texts == (
                ["cat 0.90", "dog 0.40"] if bold is None else [rects[bold].get_label()]
            )
        (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert bar.get_xlabel() == OVERLAY_SCALE
        assert fig.get_suptitle() == "layer: backbone.body.layer4"
    finally:
        plt.close(fig)
    path = detection_figure(image, maps, boxes, labels, tmp_path / "fig" / "d.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="one label \\(and score\\) per box: got 3 boxes, 2"):
        build_detection_figure(image, maps, boxes, labels[:2])
    with pytest.raises(ValueError, match=r"explained names panels \['other'\]"):
        build_detection_figure(image, maps, boxes, labels, explained={"other": 0})


# --------------------------------------------------------------------------- docs


def docs_sections() -> dict[str, list[str]]:
    """The python blocks of docs/beyond-classification.md, by its "## " section."""
    page = (ROOT / "docs" / "beyond-classification.md").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    for part in re.split(r"^## ", page, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        blocks = re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)
        if blocks:
            sections[title.strip()] = blocks
    return sections


DOC_SECTIONS = docs_sections()
#: The segmentation example runs FD-CAM over 512 channels of a 96 px FCN: about 5 s idle,
#: 19 s on a shared machine.
SLOW_SECTIONS = {"Segmentation"}


def test_the_docs_have_a_runnable_example_per_task() -> None:
    assert set(DOC_SECTIONS) == {"Segmentation", "Detection", "Embeddings", "Multi-label"}


@pytest.mark.parametrize(
    "section",
    [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW_SECTIONS else []) for s in DOC_SECTIONS],
)
def test_the_docs_examples_run(section: str) -> None:
    """Every python block of the section runs as written, in order, in one namespace."""
    namespace: dict[str, Any] = {}
    page = str(ROOT / "docs" / "beyond-classification.md")
    for code in DOC_SECTIONS[section]:
        exec(compile(code, page, "exec"), namespace)
    maps = namespace["attr"]
    assert isinstance(maps, Tensor) and torch.isfinite(maps).all() and maps.any()
