"""Shared test models and helpers.

Reference computations in the tests never use the library's hooks: they split
each model by hand into the part before the target layer, the layer, and the
part after it, and take gradients with ``torch.autograd.grad`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """A small CNN whose head is not linear, so gradients vary over positions.

    Input (N, 3, image_size, image_size); ``features[3]`` (then ``act``) gives
    (N, 12, image_size / 2, image_size / 2). The default 8 px keeps the hand-split
    references cheap; the method matrix uses 32 px, which Group-CAM's default blur needs.
    """

    def __init__(self, num_classes: int = 5, inplace: bool = False, image_size: int = 8) -> None:
        super().__init__()
        cells = (image_size // 2) ** 2
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
        )
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(12 * cells, 16), nn.Tanh(), nn.Linear(16, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.features(x)))


def small_vit(seed: int = 0) -> nn.Module:
    """A 2-block torchvision ViT for 32 px images (8 px patches: a 4x4 grid of patch
    tokens after the class token, 16 channels, 5 classes), random weights, eval mode.

    torchvision initialises the head and the class token to zeros, which would make
    every score the same constant: both are drawn at random here.
    """
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    nn.init.normal_(model.heads.head.weight)
    nn.init.normal_(model.class_token)
    return model.eval()


def small_swin(seed: int = 1) -> nn.Module:
    """A 2-stage torchvision Swin for 32 px images (8x8 then 4x4 channels-last maps,
    8 then 16 channels, 5 classes), random weights, eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[2, 2],
        num_classes=5,
    )
    return model.eval()


@dataclass
class SplitModel:
    """A model and the same network cut at ``layer``: ``post(layer(pre(x)))``."""

    name: str
    model: nn.Module
    layer: nn.Module
    pre: Callable[[Tensor], Tensor]
    post: Callable[[Tensor], Tensor]
    input_shape: tuple[int, ...]
    num_classes: int


def _small_cnn() -> SplitModel:
    torch.manual_seed(0)
    m = SmallCNN().double().eval()
    return SplitModel(
        "small_cnn",
        m,
        m.features[3],
        lambda x: m.features[:3](x),
        lambda a: m.head(m.act(a)),
        (3, 8, 8),
        5,
    )


def _resnet18() -> SplitModel:
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).double().eval()

    def pre(x: Tensor) -> Tensor:
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer3(m.layer2(m.layer1(x)))

    return SplitModel(
        "resnet18",
        m,
        m.layer4,
        pre,
        lambda a: m.fc(torch.flatten(m.avgpool(a), 1)),
        (3, 64, 64),
        10,
    )


def _vgg11() -> SplitModel:
    # features[18] is a conv followed by ReLU(inplace=True): the in-place trap.
    torch.manual_seed(0)
    m = torchvision.models.vgg11(num_classes=10).double().eval()
    return SplitModel(
        "vgg11",
        m,
        m.features[18],
        lambda x: m.features[:18](x),
        lambda a: m.classifier(torch.flatten(m.avgpool(m.features[19:](a)), 1)),
        (3, 64, 64),
        10,
    )


SPLIT_MODELS: dict[str, Callable[[], SplitModel]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,
    "vgg11": _vgg11,
}


@pytest.fixture(scope="module", params=list(SPLIT_MODELS))
def split_model(request: pytest.FixtureRequest) -> SplitModel:
    return SPLIT_MODELS[request.param]()


def reference_activations_and_gradients(
    split: SplitModel, x: Tensor, targets: list[int]
) -> tuple[Tensor, Tensor]:
    """Activations A and gradients dy_c/dA, (N, K, h, w), from the hand-split model."""
    with torch.no_grad():
        a = split.layer(split.pre(x))
    a = a.detach().requires_grad_(True)
    # clone: the part after the layer may start with an in-place ReLU.
    out = split.post(a.clone())
    score = out[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (g,) = torch.autograd.grad(score, a)
    return a.detach(), g


def model_snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about a model that an attribution call must leave as it was."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for n, m in model.named_modules()
        },
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["grads"].keys() == after["grads"].keys()
    for name, grad in after["grads"].items():
        assert (grad is None) == (before["grads"][name] is None), f".grad of {name} changed"
    for key in ("params", "buffers"):
        for name, value in before[key].items():
            assert torch.equal(value, after[key][name]), f"{key} {name} changed"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: its many small tensors gain little from a second
    thread on the 2-core CI runner, and lose a lot when other jobs share it (the examples'
    file took 143 s instead of 17 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The real bars (tqdm) the engine creates, kept after they are closed."""
    # Imported here: conftest itself leaves the package unimported (import-time tests).
    import captum_fdcam._core.perturbation as perturbation

    made: list[Any] = []
    real = perturbation.captum_progress

    def recording(**kwargs: Any) -> Any:
        made.append(real(**kwargs))
        return made[-1]

    monkeypatch.setattr(perturbation, "captum_progress", recording)
    return made
