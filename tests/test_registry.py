"""The one registry of methods: every list of methods reads from it, and explain builds
every method it names, FG-CAM included, with the base CAM's and FG-CAM's options apart."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch
from captum.attr import Attribution, GradientAttribution, LayerAttribution
from captum.attr._utils.attribution import PerturbationAttribution
from conftest import SmallCNN
from torch import nn

import captum_fdcam
from captum_fdcam import (
    FGCam,
    LayerCamBase,
    LayerFDCam,
    LayerFGCam,
    LayerGradCam,
    benchmark,
    cli,
    registry,
    resolve,
)
from captum_fdcam.evaluation import explain, method_class
from captum_fdcam.registry import REGISTRY, MethodInfo

#: Captum's kinds of attribution each family's classes are (gradient, perturbation).
FAMILY_KINDS = {
    "gradient": (True, False),
    "perturbation": (False, True),
    "gradient+perturbation": (True, True),
    "propagation": (True, False),  # a rule-modified backward pass
}


def _exported_methods() -> set[str]:
    """The attribution classes captum_fdcam exports from its methods package, less
    FG-CAM's wrappers (the registry's ``"FG-"`` forms)."""
    found = set()
    for name in captum_fdcam.__all__:
        value = getattr(captum_fdcam, name)
        if (
            isinstance(value, type)
            and issubclass(value, Attribution)
            and value.__module__.startswith("captum_fdcam.methods")
            and name not in registry.FG_CLASSES
        ):
            found.add(name)
    return found


def test_every_exported_method_is_registered_and_every_entry_is_exported() -> None:
    assert {m.class_name for m in REGISTRY} == _exported_methods()
    assert set(registry.FG_CLASSES) == {"FGCam", "LayerFGCam"}
    names = [m.name for m in REGISTRY]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("info", REGISTRY, ids=lambda m: m.name)
def test_each_entry_describes_its_class(info: MethodInfo) -> None:
    cls = registry.load_class(info)
    assert cls is getattr(captum_fdcam, info.class_name)
    assert cls.__module__.startswith(info.module)
    assert info.layer == issubclass(cls, LayerAttribution)
    kinds = (issubclass(cls, GradientAttribution), issubclass(cls, PerturbationAttribution))
    assert kinds == FAMILY_KINDS[info.family]
    assert issubclass(cls, LayerCamBase) == (info.family != "propagation")
    if info.fg:  # FG-CAM runs over CAMs of this library
        assert issubclass(cls, LayerCamBase)


def test_methods_and_the_lists_read_the_registry() -> None:
    cams = [m.name for m in REGISTRY if m.layer]
    assert list(captum_fdcam.METHODS) == cams == list(registry.cam_names())
    assert captum_fdcam._METHOD_CLASSES == registry.method_classes()
    for info in REGISTRY:
        if info.layer:
            assert captum_fdcam.METHODS[info.name] is registry.load_class(info)
            assert method_class(info.name) is registry.load_class(info)
        assert method_class(info.class_name) is registry.load_class(info)
    assert benchmark.CAMS == registry.cam_names()
    assert registry.fg_names() == tuple(f"FG-{m}" for m in cams)


def test_fg_names_are_parsed_in_one_place() -> None:
    assert registry.split_fg("FG-FD-CAM") == ("FD-CAM", True)
    assert registry.split_fg("FD-CAM") == ("FD-CAM", False)
    assert registry.split_fg("FG-") == ("", True)
    assert registry.find("LayerFDCam") is registry.find("FD-CAM") is not None
    assert registry.find("FG-FD-CAM") is None


# The registry imports only the standard library: test_application_layer.py checks it.


# ------------------------------------------------------- a method added to the registry


class LayerTinyCam(LayerGradCam):
    """A CAM added by a newcomer: Grad-CAM under another name."""


TINY = MethodInfo("Tiny-CAM", "LayerTinyCam", __name__, "gradient", fg=True, layer=True)


@pytest.fixture
def with_tiny(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "REGISTRY", (*REGISTRY, TINY))
    # METHODS is built on first use and cached in the package: built again here.
    monkeypatch.delitem(vars(captum_fdcam), "METHODS", raising=False)
    yield
    vars(captum_fdcam).pop("METHODS", None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()  # (N, 3, 8, 8) images; features.2 and act give 4 x 4 maps


@pytest.mark.usefixtures("with_tiny")
def test_a_method_added_to_the_registry_is_everywhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert captum_fdcam.METHODS["Tiny-CAM"] is LayerTinyCam
    assert "Tiny-CAM" in registry.cam_names()
    assert "Tiny-CAM" in benchmark.CAMS
    argv = ["benchmark", "--data", "x", "--cams", "Tiny-CAM"]
    assert cli.build_parser().parse_args(argv).cams == ["Tiny-CAM"]
    rows = benchmark.jobs_for(("fdcam-table1",), ("Tiny-CAM",))
    assert [(r.table, r.job.method) for r in rows] == [("fdcam-table1", "Tiny-CAM")]
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    assert "Tiny-CAM" in " ".join(capsys.readouterr().out.split())
    assert resolve.check_methods(["Tiny-CAM", "FG-Tiny-CAM"]) == {
        "Tiny-CAM": True,
        "FG-Tiny-CAM": True,
    }
    assert method_class("Tiny-CAM") is LayerTinyCam
    model, x = _model(), torch.randn(2, 3, 8, 8)
    ours = explain(model, x, [1, 2], method="Tiny-CAM", layer="act")
    grad_cam = explain(model, x, [1, 2], method="Grad-CAM", layer="act")
    assert (ours == grad_cam).all()


# --------------------------------------------------------------- FG methods in explain


@pytest.mark.parametrize("fg_layer", [None, "features.2"])
def test_fg_options_go_to_fg_cam_and_method_options_to_the_base_cam(fg_layer: str | None) -> None:
    """FG-FD-CAM at the input (FGCam) and at a shallower layer (LayerFGCam, upsampled)."""
    model, x = _model(), torch.randn(2, 3, 8, 8)
    target = torch.tensor([1, 3])
    options = {"method": "FG-FD-CAM", "layer": "act", "fg_layer": fg_layer}
    ours = explain(
        model,
        x,
        target,
        method_kwargs={"group_fraction": 0.25},
        fg_kwargs={"denoise": True},
        **options,
    )
    base = LayerFDCam(model, model.act, group_fraction=0.25)
    if fg_layer is None:
        fg: FGCam | LayerFGCam = FGCam(base, denoise=True)
    else:
        fg = LayerFGCam(base, model.get_submodule(fg_layer), denoise=True)
    expected = fg.attribute(x, target=target, relu_attributions=True)
    expected = LayerAttribution.interpolate(expected, (8, 8), "bilinear")  # 4 x 4 -> 8 x 8
    assert ours.shape == (2, 1, 8, 8)
    assert torch.equal(torch.from_numpy(ours), expected)
    # not the default grouping: the option reached the base CAM
    default = explain(model, x, target, fg_kwargs={"denoise": True}, **options)
    assert not (default == ours).all()


def test_fg_mistakes_are_clear() -> None:
    model, x = _model(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="FG-CAM's"):
        explain(model, x, [0], method="Grad-CAM", fg_kwargs={"denoise": True})
    with pytest.raises(ValueError, match="FG-CAM's"):
        explain(model, x, [0], method="Grad-CAM", fg_layer="0")
    with pytest.raises(ValueError, match="works over a CAM"):
        explain(model, x, [0], method="FG-CLRP")
    with pytest.raises(ValueError, match="wraps a CAM"):
        explain(model, x, [0], method=LayerFGCam)


def test_method_signatures_take_model_and_layer() -> None:
    """What the registry's ``layer`` flag promises: ``cls(model, layer)`` for CAMs,
    ``cls(model)`` for the others."""
    for info in REGISTRY:
        parameters = list(inspect.signature(registry.load_class(info).__init__).parameters)
        assert parameters[1] in {"model", "forward_func"}, info
        assert (len(parameters) > 2 and parameters[2] == "layer") == info.layer, info
