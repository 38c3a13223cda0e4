"""A model in channels-last memory format (as users run them for speed): every CAM,
FG-CAM and LRP give the maps of the same model in the default format, up to float
rounding, and leave the model's format as it was."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import Tensor, nn

from captum_fdcam import METHODS, FGCam, LayerGradCam, PropagationLRP
from captum_fdcam.errors import ConstantMapWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair() -> tuple[nn.Module, nn.Module, Tensor]:
    """ResNet-18 (random weights, batch norm statistics made non-trivial) and a
    channels-last copy; a 48 px batch of 2."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 48, 48))  # running statistics other than 0 / 1
    model.eval()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    return model, last, x


def _close(a: Tensor, b: Tensor, what: str) -> None:
    scale = a.abs().max().clamp_min(1e-12)
    assert ((a - b).abs().max() / scale).item() < 1e-4, what


@pytest.mark.parametrize("name", list(METHODS))
def test_every_cam_on_a_channels_last_model(name: str) -> None:
    model, last, x = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)
        maps = [METHODS[name](m, m.layer3).attribute(x, target=[1, 4]) for m in (model, last)]
    assert maps[0].abs().max() > 0, "a map to compare"
    _close(*maps, name)
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for p in last.parameters()
        if p.dim() == 4
    ), "the model's format is the user's"


def test_fg_cam_and_lrp_on_a_channels_last_model() -> None:
    model, last, x = _pair()
    fg = [FGCam(LayerGradCam(m, m.layer4)).attribute(x, target=[1, 4]) for m in (model, last)]
    _close(*fg, "FG-CAM")
    lrp = [PropagationLRP(m).attribute(x, target=[1, 4]) for m in (model, last)]
    _close(*lrp, "LRP")
    assert fg[0].shape == (2, 1, 48, 48) and lrp[0].shape == x.shape
