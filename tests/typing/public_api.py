"""Code as a user writes it against the public API, type-checked with ``mypy --strict``
(by scripts/test.sh and tests/test_release.py): the exports of ``captum_fdcam`` must
carry types a strict checker accepts, through the package's ``py.typed``.

Not run: only checked. Every ``reveal``-style assignment below states the type a user's
checker should infer; a wrong or missing annotation in the library fails the check.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import captum_fdcam
from captum_fdcam import (
    CLRP,
    SGLRP,
    CamError,
    ConstantMapWarning,
    DefaultLayerWarning,
    DetectionTarget,
    DeviceError,
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerFGCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerGroupCam,
    LayerLayerCam,
    LayerScoreCam,
    LayerXGradCam,
    Logits,
    MultiLabelTarget,
    PropagationLRP,
    SegmentationTarget,
    SimilarityTarget,
    TargetError,
    ZBoxRule,
    ZPlusRule,
    expand_labels,
)


def explain_with_every_cam(model: nn.Module, layer: nn.Module, x: Tensor) -> list[Tensor]:
    maps: list[Tensor] = []
    for cls in (LayerGradCam, LayerGradCamPlusPlus, LayerXGradCam, LayerLayerCam):
        out = cls(model, layer).attribute(x, target=0, relu_attributions=True)
        assert isinstance(out, Tensor)
        maps.append(out)
    for perturbation in (LayerScoreCam, LayerAblationCam, LayerGroupCam, LayerFDCam):
        cam = perturbation(model, layer)
        out = cam.attribute(x, target=[0, 1], perturbations_per_eval=8, show_progress=False)
        assert isinstance(out, Tensor)
        maps.append(out)
    scores: Tensor = LayerFDCam(model, layer).channel_scores(x, 0)
    maps.append(scores)
    return maps


def fine_grained(model: nn.Module, layer: nn.Module, shallow: nn.Module, x: Tensor) -> Tensor:
    base = LayerGradCam(model, layer)
    at_input = FGCam(base, denoise=True).attribute(x, target=0)
    at_layer = LayerFGCam(base, shallow).attribute(x, target=0)
    assert isinstance(at_input, Tensor) and isinstance(at_layer, Tensor)
    lrp = PropagationLRP(model).attribute(x, target=0)
    contrastive = CLRP(model).attribute(x, target=0)
    softmax = SGLRP(model).attribute(x, target=0)
    assert isinstance(lrp, Tensor) and isinstance(contrastive, Tensor)
    assert isinstance(softmax, Tensor)
    rules = {nn.Conv2d: ZPlusRule(), nn.Linear: ZBoxRule(-3.0, 3.0)}
    del rules
    return at_input + at_layer


def targets(model: nn.Module, x: Tensor) -> Tensor:
    logits: Tensor = Logits(model)(x)
    wrapped: list[nn.Module] = [
        SegmentationTarget(model),
        DetectionTarget(model),
        SimilarityTarget(model, torch.zeros(1, 8)),
        MultiLabelTarget(model),
    ]
    del wrapped
    rows = expand_labels(x, [[1, 2], [0]])
    assert isinstance(rows.inputs, Tensor)
    target: list[int] = rows.target
    return logits + rows.inputs.sum() + len(target)


def errors() -> tuple[type[Exception], ...]:
    warnings: tuple[type[Warning], ...] = (ConstantMapWarning, DefaultLayerWarning)
    del warnings
    return (CamError, TargetError, DeviceError)


version: str = captum_fdcam.__version__
methods: dict[str, type] = captum_fdcam.METHODS
