"""The command line with hub models (issue 21, part 5): ``--model timm:NAME --weights
FILE`` and ``--model hf:DIR``. The maps saved equal the library's on the same model,
weights and image prepared as the checkpoint says; the classes, class names and
preprocessing come from the checkpoint; the default layer is the family's, printed with
the layout it is read with; every mistake is one line on stderr, exit code 2, nothing
written.

Tiny models with random weights: timm's own test architectures (``test_vit``,
``test_resnet``, ``test_mambaout``: real names, a few hundred thousand parameters) and
Hugging Face models built from small configs, written with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from captum_fdcam import ConstantMapWarning, cli
from captum_fdcam.evaluation import Insertion, explain
from captum_fdcam.hub import Preprocessing
from captum_fdcam.models import imagenet_categories, preprocess

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _picture(seed: int = 0) -> np.ndarray:
    """An RGB picture with smooth regions and edges, 40 x 48."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :48]
    base = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1) + rng.integers(0, 20, (40, 48, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _hf_vit(labels: dict[int, str] | None = None) -> nn.Module:
    """A 2-block Hugging Face ViT for 32 px images: 8 px patches, a 4 x 4 grid."""
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        # weights large enough that the scores follow the image: insertion curves move
        initializer_range=0.5,
        **({"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels else {}),
    )
    return transformers.ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The photo, the models (random weights) and what they were saved as."""
    root = tmp_path_factory.mktemp("hub")
    photo = root / "photos" / "a.png"
    photo.parent.mkdir()
    Image.fromarray(_picture()).save(photo)
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=5).eval()
    safetensors_torch.save_file(vit.state_dict(), root / "vit.safetensors")
    (root / "text.safetensors").write_text("not safetensors")
    resnet = timm.create_model("test_resnet", pretrained=False).eval()  # 1000 classes
    # As timm's train.py writes it: nested, with its argparse.Namespace.
    checkpoint = {"epoch": 3, "state_dict": resnet.state_dict(), "args": argparse.Namespace()}
    torch.save(checkpoint, root / "resnet.pth")
    mamba = timm.create_model("test_mambaout", pretrained=False, num_classes=3).eval()
    torch.save(mamba.state_dict(), root / "mamba.pth")
    quiet = transformers.utils.logging
    quiet.disable_progress_bar()
    hf_vit = _hf_vit({0: "cat", 1: "dog", 2: "cup"})
    hf_vit.save_pretrained(root / "hf-vit")
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.4, 0.3]
    ).save_pretrained(root / "hf-vit")
    convnext = transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(
            num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4, image_size=32
        )
    ).eval()
    convnext.save_pretrained(root / "hf-convnext")  # generic LABEL_i names, no processor
    transformers.ViTModel(_hf_vit().config).save_pretrained(root / "hf-no-head")
    bert = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    transformers.BertModel(bert).save_pretrained(root / "hf-bert")
    quiet.enable_progress_bar()
    return {
        "root": root,
        "photo": photo,
        "vit": vit,
        "resnet": resnet,
        "mamba": mamba,
        "hf-vit": hf_vit,
        "hf-convnext": convnext,
    }


def _path(hub: dict[str, Any], name: str) -> str:
    return str(hub["root"] / name)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs the command, which must succeed; its printed output."""
    code = cli.main([*argv, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _input(hub: dict[str, Any], size: int, **preprocessing: Any) -> Tensor:
    with Image.open(hub["photo"]) as image:
        return preprocess(image.convert("RGB"), size, **preprocessing)


def _timm_preprocessing(model: nn.Module) -> dict[str, Any]:
    cfg = model.pretrained_cfg
    return {"mean": cfg["mean"], "std": cfg["std"], "crop_fraction": cfg["crop_pct"]}


def _reference(
    model: nn.Module, x: Tensor, layer: str, methods: list[str], classes: int
) -> tuple[int, dict[str, np.ndarray]]:
    """The first class whose maps all vary, and the library's maps of it. Random weights
    leave some classes without positive evidence at a layer (a map of zeros), which would
    equal a wrong map as well; which classes depends on the versions of timm and torch."""
    for target in range(classes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantMapWarning)
            maps = {m: explain(model, x, [target], method=m, layer=layer)[0, 0] for m in methods}
        if all(a.max() > a.min() for a in maps.values()):
            return target, maps
    raise AssertionError(f"no class of {type(model).__name__} has maps that vary at {layer}")


def _assert_maps(out: Path, stem: str, expected: dict[str, np.ndarray]) -> None:
    for method, reference in expected.items():
        saved = np.load(out / f"{stem}.{method.lower()}.npy")
        np.testing.assert_allclose(saved, reference, rtol=1e-4, atol=1e-6, err_msg=method)


# ------------------------------------------------------------------------- timm


def test_a_timm_vit_is_explained_as_the_library_explains_it(hub, tmp_path: Path, capsys) -> None:
    model, methods = hub["vit"], ["Grad-CAM", "FD-CAM"]
    x = _input(hub, 160, **_timm_preprocessing(model))  # timm's pretrained_cfg: 160 px
    target, expected = _reference(model, x, "blocks.5.norm1", methods, 5)
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), "--model", "timm:test_vit"]
    argv += ["--weights", _path(hub, "vit.safetensors"), "--target", str(target)]
    printed = _run([*argv, "--methods", *methods, "--out", str(out)], capsys)
    # no --num-classes, no --image-size: the checkpoint's 5 classes, timm's 160 px
    assert "5 classes" in printed and "160 x 160" in printed, printed
    assert (
        "layer: blocks.5.norm1 (LayerNorm; the last block's first norm (ViT), default; pass "
        "--layer to change), tokens read as a 10x10 map: TokensToGrid(prefix_tokens=1, "
        "grid_size=(10, 10))"
    ) in printed
    assert f"a.png: class {target}, class {target} (" in printed
    _assert_maps(out, "a", expected)


def test_image_size_overrides_the_checkpoints(hub, tmp_path: Path, capsys) -> None:
    model = hub["vit"]
    x = _input(hub, 64, **_timm_preprocessing(model))
    target, expected = _reference(model, x, "blocks.2.norm1", ["FD-CAM"], 5)
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), "--model", "timm:test_vit", "--image-size", "64"]
    argv += ["--weights", _path(hub, "vit.safetensors"), "--layer", "blocks.2.norm1"]
    argv += ["--target", str(target), "--methods", "FD-CAM", "--out", str(out)]
    printed = _run(argv, capsys)
    # a layer given by name is not the default, but its layout is still said
    assert (
        "layer: blocks.2.norm1 (LayerNorm), tokens read as a 4x4 map: "
        "TokensToGrid(prefix_tokens=1, grid_size=(4, 4))"
    ) in printed
    _assert_maps(out, "a", expected)


def test_a_channels_last_layer(hub, tmp_path: Path, capsys) -> None:
    model = hub["mamba"]
    x = _input(hub, 160, **_timm_preprocessing(model))
    target, expected = _reference(model, x, "stages.3", ["Grad-CAM"], 3)
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), "--model", "timm:test_mambaout", "--layer", "stages.3"]
    argv += ["--weights", _path(hub, "mamba.pth"), "--target", str(target)]
    printed = _run([*argv, "--methods", "Grad-CAM", "--out", str(out)], capsys)
    assert (
        "layer: stages.3 (MambaOutStage), channels last, read as a 5x5 map: ChannelsLastToFirst()"
    ) in printed
    _assert_maps(out, "a", expected)


def test_1000_classes_are_imagenets(hub, tmp_path: Path, capsys) -> None:
    argv = ["explain", str(hub["photo"]), "--model", "timm:test_resnet", "--image-size", "64"]
    argv += ["--weights", _path(hub, "resnet.pth"), "--methods", "Saliency"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")
        printed = _run([*argv, "--out", str(tmp_path / "out")], capsys)
    model = hub["resnet"]
    with torch.no_grad():
        probs = model(_input(hub, 64, **_timm_preprocessing(model))).softmax(dim=-1)[0]
    top = int(probs.argmax())
    assert f"a.png: class {top}, {imagenet_categories()[top]} ({probs[top]:.1%})" in printed


# ----------------------------------------------------------------- Hugging Face

#: The Hugging Face ViT's preprocessor_config.json. Its processor resizes to the
#: square; the command resizes the shorter side, cropping nothing more.
HF_VIT = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.4, 0.3), "crop_fraction": 1.0}
HF_VIT_LAYER = "vit.layers.1.layernorm_before"


def test_a_hugging_face_vit_with_its_labels_and_processor(hub, tmp_path: Path, capsys) -> None:
    model, methods = hub["hf-vit"], ["Grad-CAM", "FD-CAM", "IntegratedGradients"]
    target, expected = _reference(model, _input(hub, 32, **HF_VIT), HF_VIT_LAYER, methods, 3)
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), "--model", f"hf:{_path(hub, 'hf-vit')}"]
    argv += ["--methods", *methods, "--target", str(target), "--out", str(out)]
    printed = _run(argv, capsys)
    assert "mean (0.1, 0.2, 0.3), std (0.5, 0.4, 0.3) (preprocessor_config.json)" in printed
    assert (
        "layer: vit.layers.1.layernorm_before (LayerNorm; the last block's first norm (ViT), "
        "default; pass --layer to change), tokens read as a 4x4 map: "
        "TokensToGrid(prefix_tokens=1, grid_size=(4, 4))"
    ) in printed
    name = ("cat", "dog", "cup")[target]  # config.json's id2label
    assert f"a.png: class {target}, {name} (" in printed
    _assert_maps(out, "a", expected)


def test_generic_labels_and_no_processor(hub, tmp_path: Path, capsys) -> None:
    layer = "convnext.encoder.stages.1"
    x = _input(hub, 32)  # config.json's image_size, ImageNet's mean and std
    target, expected = _reference(hub["hf-convnext"], x, layer, ["Grad-CAM"], 4)
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), "--model", f"hf:{_path(hub, 'hf-convnext')}"]
    printed = _run(
        [*argv, "--target", str(target), "--methods", "Grad-CAM", "--out", str(out)], capsys
    )
    assert f"a.png: class {target}, class {target} (" in printed  # not LABEL_{target}
    assert (
        "layer: convnext.encoder.stages.1 (ConvNextStage; the last stage (ConvNeXt), default; "
        "pass --layer to change), a 4x4 map"
    ) in printed
    _assert_maps(out, "a", expected)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits


def test_evaluate_a_hugging_face_model(hub, tmp_path: Path, capsys) -> None:
    model, x = hub["hf-vit"], _input(hub, 32, **HF_VIT)
    target, maps = _reference(model, x, HF_VIT_LAYER, ["Grad-CAM"], 3)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,class_index\na.png,{target}\n")
    out = tmp_path / "eval"
    argv = ["evaluate", str(hub["photo"].parent), "--model", f"hf:{_path(hub, 'hf-vit')}"]
    argv += ["--labels", str(labels), "--methods", "Grad-CAM", "--metrics", "insertion"]
    _run([*argv, "--out", str(out)], capsys)
    (record,) = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    y = np.array([target])
    a = maps["Grad-CAM"][None, None]
    expected = Insertion(disable_warnings=True)(_Logits(model).eval(), x.numpy(), y, a_batch=a)
    assert record["scores"]["insertion"] == pytest.approx(expected[0], rel=1e-5)


def test_the_overlay_shows_the_image_the_model_saw() -> None:
    """The checkpoint's normalisation undone (the photo under the maps): the crop in [0, 1]."""
    image = Image.fromarray(_picture())
    steps = Preprocessing(24, (0.1, 0.2, 0.3), (0.5, 0.4, 0.3), crop_fraction=0.8)
    x = steps.apply(image)
    assert x.shape == (1, 3, 24, 24)
    plain = preprocess(image, 24, mean=(0, 0, 0), std=(1, 1, 1), crop_fraction=0.8)
    torch.testing.assert_close(steps.undo(x), plain.clamp(0, 1))
    assert not torch.allclose(x, plain)


# ------------------------------------------------------------------------ errors


def _vit_with(hub: dict[str, Any], name: str, change: dict[str, Tensor]) -> str:
    state = {**hub["vit"].state_dict(), **change}
    path = hub["root"] / name
    torch.save(state, path)
    return str(path)


ERRORS = {
    "unknown timm name": (
        lambda h: ["--model", "timm:test_vitt", "--weights", _path(h, "vit.safetensors")],
        "unknown timm model 'test_vitt' (did you mean test_vit",
    ),
    "timm without weights": (
        lambda h: ["--model", "timm:test_vit"],
        "--model timm:test_vit needs --weights FILE",
    ),
    "missing weights": (
        lambda h: ["--model", "timm:test_vit", "--weights", _path(h, "none.pth")],
        "no such weights file: {root}/none.pth",
    ),
    "unreadable safetensors": (
        lambda h: ["--model", "timm:test_vit", "--weights", _path(h, "text.safetensors")],
        "--weights {root}/text.safetensors is not a safetensors file",
    ),
    "weights of another architecture": (
        lambda h: ["--model", "timm:test_vit", "--weights", _path(h, "mamba.pth")],
        "--weights {root}/mamba.pth does not fit timm:test_vit: 80 entries missing from the "
        "file (cls_token, pos_embed, patch_embed.proj.weight and 77 more); 78 entries the "
        "model does not have (stem.conv1.weight,",
    ),
    "a tensor of another shape": (
        lambda h: [
            "--model",
            "timm:test_vit",
            "--weights",
            _vit_with(h, "wide.pth", {"blocks.0.norm1.weight": torch.ones(3)}),
        ],
        "blocks.0.norm1.weight is (3,) in the file, (64,) in the model",
    ),
    "num-classes against the checkpoint": (
        lambda h: [
            *("--model", "timm:test_vit", "--weights", _path(h, "vit.safetensors")),
            *("--num-classes", "10"),
        ],
        "--num-classes 10, but the classifier head.weight in {root}/vit.safetensors has 5 classes",
    ),
    "no such folder": (
        lambda h: ["--model", f"hf:{_path(h, 'nowhere')}"],
        "--model hf:{root}/nowhere: no such folder",
    ),
    "no config.json": (
        lambda h: ["--model", f"hf:{_path(h, 'photos')}"],
        "the folder has no config.json",
    ),
    "not an image classifier": (
        lambda h: ["--model", f"hf:{_path(h, 'hf-bert')}"],
        "holds a bert model, not an image classifier",
    ),
    "a model without a classification head": (
        lambda h: ["--model", f"hf:{_path(h, 'hf-no-head')}"],
        "do not fit ViTForImageClassification: 2 weights missing from the folder "
        "(classifier.bias, classifier.weight)",
    ),
    "weights for an hf: folder": (
        lambda h: ["--model", f"hf:{_path(h, 'hf-vit')}", "--weights", _path(h, "mamba.pth")],
        "holds its own weights",
    ),
    "a layer that gives a tuple": (
        lambda h: ["--model", f"hf:{_path(h, 'hf-vit')}", "--layer", "vit.layers.1.attention"],
        "--layer vit.layers.1.attention gives tuple, not a 4-D (N, C, H, W) feature map",
    ),
    "a pooled layer": (
        # (N, classes): no map for "auto" to read
        lambda h: ["--model", f"hf:{_path(h, 'hf-vit')}", "--layer", "classifier"],
        "--layer classifier gives (1, 3), not a 4-D (N, C, H, W) feature map",
    ),
    "an image size the model cannot take": (
        lambda h: ["--model", f"hf:{_path(h, 'hf-vit')}", "--image-size", "64"],
        "the model cannot run on 64 x 64 images (--image-size 64)",
    ),
    "a method that cannot explain the layer": (
        # the last convolution is 1 x 1 at 32 px: every Score-CAM mask would be empty
        lambda h: [
            *("--model", "timm:test_resnet", "--weights", _path(h, "resnet.pth")),
            *("--image-size", "32", "--methods", "Score-CAM"),
        ],
        "Score-CAM: FeatureMapError: Score-CAM masks the input",
    ),
}


@pytest.mark.parametrize("mistake", list(ERRORS))
def test_each_mistake_is_one_line_and_writes_nothing(
    mistake: str, hub, tmp_path: Path, capsys
) -> None:
    build, expected = ERRORS[mistake]
    out = tmp_path / "out"
    argv = ["explain", str(hub["photo"]), *build(hub), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("captum-fdcam explain: error: "), err
    assert expected.format(root=hub["root"]) in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("module", "model", "expected"),
    [
        ("timm", "timm:test_vit", "--model timm:... needs timm: pip install 'captum-fdcam[hub]'"),
        ("transformers", "hf:{root}/hf-vit", "--model hf:... needs transformers: pip install"),
    ],
)
def test_a_missing_library_names_the_extra(
    module: str, model: str, expected: str, hub, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    argv = ["explain", str(hub["photo"]), "--model", model.format(root=hub["root"])]
    argv += ["--weights", _path(hub, "vit.safetensors")] if module == "timm" else []
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_evaluate_writes_nothing_when_a_method_cannot_run(hub, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(hub["photo"].parent), "--model", "timm:test_resnet"]
    argv += ["--weights", _path(hub, "resnet.pth"), "--image-size", "32"]
    argv += ["--methods", "Grad-CAM", "Score-CAM", "--metrics", "insertion"]
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "captum-fdcam evaluate: error: Score-CAM: FeatureMapError" in err, err
    assert not out.exists()  # not even Grad-CAM's scores of the image before
