"""One exception class per kind of mistake, from every entry point that can hit it.

Each kind is provoked through the CAMs, FG-CAM (input and layer), LRP, CLRP, SGLRP and
FD-CAM's ``channel_scores`` where it applies; the class is that of
:mod:`captum_fdcam.errors`, which also derives from the built-in types raised before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from captum_fdcam import (
    CLRP,
    METHODS,
    SGLRP,
    FGCam,
    LayerFDCam,
    LayerFGCam,
    LayerGradCam,
    LayerGroupCam,
    LayerScoreCam,
    PropagationLRP,
)
from captum_fdcam.errors import (
    CamError,
    FeatureMapError,
    GradientsDisabledError,
    InputError,
    LayerError,
    ModelOutputError,
    NonFiniteError,
    TargetError,
    TorchScriptError,
    UnsupportedModuleError,
)

Explain = Callable[[Tensor, Any], Tensor]


class Net(nn.Module):
    """conv, ReLU, conv, ReLU (``act``: the CAMs' layer), pooled linear head of 3 classes.

    ``scale`` multiplies the logits (infinity: non-finite scores); ``unused`` never runs.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Conv2d(4, 4, 1)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        features = self.act(self.conv2(self.relu(self.conv1(x))))
        return self.fc(self.pool(features).flatten(1)) * self.scale


def _cam(name: str) -> Callable[[nn.Module, nn.Module], Explain]:
    def build(model: nn.Module, layer: nn.Module) -> Explain:
        cls = METHODS[name]
        cam = cls(model, layer, blur_kernel_size=3) if cls is LayerGroupCam else cls(model, layer)
        return lambda x, t: cam.attribute(x, target=t)

    return build


def _fg_input(model: nn.Module, layer: nn.Module) -> Explain:
    return FGCam(LayerGradCam(model, layer)).attribute


def _fg_layer(model: nn.Module, layer: nn.Module) -> Explain:
    return LayerFGCam(LayerGradCam(model, layer), model.conv1).attribute


def _fg_score(model: nn.Module, layer: nn.Module) -> Explain:
    return FGCam(LayerScoreCam(model, layer)).attribute


def _lrp(cls: type[PropagationLRP]) -> Callable[[nn.Module, nn.Module], Explain]:
    return lambda model, layer: cls(model).attribute


def _channel_scores(model: nn.Module, layer: nn.Module) -> Explain:
    return LayerFDCam(model, layer).channel_scores


CAMS = {name: _cam(name) for name in METHODS}
FG = {"FGCam": _fg_input, "LayerFGCam": _fg_layer, "FGCam(Score-CAM)": _fg_score}
LRP = {"PropagationLRP": _lrp(PropagationLRP), "CLRP": _lrp(CLRP), "SGLRP": _lrp(SGLRP)}
CHANNEL_SCORES = {"LayerFDCam.channel_scores": _channel_scores}
EVERY = {**CAMS, **FG, **LRP, **CHANNEL_SCORES}
WITH_LAYER = {**CAMS, **FG, **CHANNEL_SCORES}


def _explain(name: str, model: nn.Module | None = None, layer: str = "act") -> Explain:
    model = Net().eval() if model is None else model
    return EVERY[name](model, getattr(model, layer))


X = torch.randn(2, 3, 8, 8)


def test_each_class_is_also_the_builtin_raised_before() -> None:
    # ``except ValueError`` (IndexError, RuntimeError, TypeError) written before still works.
    assert issubclass(TargetError, ValueError) and issubclass(TargetError, IndexError)
    assert issubclass(LayerError, ValueError) and issubclass(LayerError, RuntimeError)
    assert issubclass(ModelOutputError, TypeError) and issubclass(ModelOutputError, ValueError)
    assert issubclass(TorchScriptError, TypeError)
    assert issubclass(GradientsDisabledError, RuntimeError)
    assert issubclass(UnsupportedModuleError, TypeError)
    for cls in (InputError, NonFiniteError, FeatureMapError):
        assert issubclass(cls, ValueError)
    for cls in (TargetError, LayerError, InputError, ModelOutputError, NonFiniteError):
        assert issubclass(cls, CamError)


@pytest.mark.parametrize("name", EVERY)
@pytest.mark.parametrize("target", [3, [0, 7], -1])
def test_target_out_of_range(name: str, target: Any) -> None:
    with pytest.raises(TargetError, match="out of range"):
        _explain(name)(X, target)


@pytest.mark.parametrize("name", EVERY)
def test_target_count_differs_from_the_batch(name: str) -> None:
    with pytest.raises(TargetError, match="3 entries but the batch has 2"):
        _explain(name)(X, [0, 1, 2])


@pytest.mark.parametrize("name", EVERY)
def test_nan_inputs(name: str) -> None:
    x = X.clone()
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN or Inf values \(examples \[1\]\)"):
        _explain(name)(x, [0, 1])


@pytest.mark.parametrize("name", EVERY)
def test_empty_batch(name: str) -> None:
    with pytest.raises(InputError, match="no examples"):
        _explain(name)(X[:0], [])


@pytest.mark.parametrize("name", WITH_LAYER)
def test_layer_not_called(name: str) -> None:
    with pytest.raises(LayerError, match="not called"):
        _explain(name, layer="unused")(X, [0, 1])


@pytest.mark.parametrize("name", WITH_LAYER)
def test_layer_not_in_the_model(name: str) -> None:
    with pytest.raises(LayerError, match="not a submodule"):
        EVERY[name](Net(), nn.ReLU())


def test_layer_fg_cam_layer_not_in_the_model() -> None:
    model = Net().eval()
    with pytest.raises(LayerError, match="not a submodule"):
        LayerFGCam(LayerGradCam(model, model.act), nn.Conv2d(3, 4, 3))


class Twice(Net):
    """``act`` runs twice in one forward pass."""

    def forward(self, x: Tensor) -> Tensor:
        features = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(features).flatten(1))


@pytest.mark.parametrize("name", WITH_LAYER)
def test_layer_called_twice(name: str) -> None:
    with pytest.raises(LayerError, match="called more than once"):
        _explain(name, Twice().eval())(X, [0, 1])


class ReluTwiceBeforeConv2(Net):
    def forward(self, x: Tensor) -> Tensor:
        features = self.act(self.conv2(self.relu(self.relu(self.conv1(x)))))
        return self.fc(self.pool(features).flatten(1))


def test_fg_cam_target_layer_called_twice() -> None:
    # The propagation's own capture of the explained layer (the base CAM's is fine).
    model = ReluTwiceBeforeConv2().eval()
    fg = LayerFGCam(LayerGradCam(model, model.conv2), model.relu)
    with pytest.raises(LayerError, match="called more than once"):
        fg.attribute(X, [0, 1])


@pytest.mark.parametrize("name", WITH_LAYER)
def test_non_finite_score(name: str) -> None:
    model = Net().eval()
    model.scale.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        _explain(name, model)(X, [0, 1])


@pytest.mark.parametrize("name", WITH_LAYER)
def test_layer_output_not_a_feature_map(name: str) -> None:
    with pytest.raises(FeatureMapError, match=r"4-D \(N, C, H, W\) feature map"):
        _explain(name, layer="fc")(X, [0, 1])


class Maps(Net):
    """Returns per-location scores (N, 3, 8, 8), not (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))[:, :3]


@pytest.mark.parametrize("name", LRP)
def test_lrp_needs_class_scores(name: str) -> None:
    with pytest.raises(ModelOutputError, match=r"\(N, C\) output"):
        _explain(name, Maps().eval())(X, [0, 1])


class NoBatch(Net):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).sum()


@pytest.mark.parametrize("name", WITH_LAYER)
def test_model_output_without_batch_dimension(name: str) -> None:
    with pytest.raises(ModelOutputError, match="batch dimension"):
        _explain(name, NoBatch().eval())(X, 0)


def _scripted_head() -> Net:
    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent PyTorch
        model.fc = torch.jit.script(model.fc)
    return model


@pytest.mark.parametrize("name", {**FG, **LRP})
def test_scripted_submodule_refused_by_every_propagating_method(name: str) -> None:
    # The CAM itself works (its layer is outside the scripted part); propagation hooks
    # every module, which TorchScript refuses with a bare message.
    with pytest.raises(TorchScriptError, match=r"'fc' .* is a TorchScript module"):
        _explain(name, _scripted_head())(X, [0, 1])


@pytest.mark.parametrize("name", CAMS)
def test_scripted_layer(name: str) -> None:
    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.act = torch.jit.script(model.act)
    with pytest.raises(TorchScriptError, match="The layer is a TorchScript"):
        _explain(name, model)


@pytest.mark.parametrize(
    "name",
    [n for n in EVERY if n not in ("Score-CAM", "Ablation-CAM")],
)
def test_inference_mode(name: str) -> None:
    # Score-CAM and Ablation-CAM need no gradients, and run under inference_mode.
    explain = _explain(name)
    with torch.inference_mode(), pytest.raises(GradientsDisabledError, match="inference_mode"):
        explain(X, [0, 1])


class WithLayerNorm(Net):
    """A leaf module without an LRP rule (LayerNorm has one now: the std held
    constant); the attribute keeps its old name."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Softsign()

    def forward(self, x: Tensor) -> Tensor:
        features = self.act(self.conv2(self.relu(self.conv1(x))))
        return self.fc(self.norm(self.pool(features).flatten(1)))


@pytest.mark.parametrize("name", LRP)
def test_module_without_rule(name: str) -> None:
    with pytest.raises(UnsupportedModuleError, match="No LRP rule for 'norm'"):
        _explain(name, WithLayerNorm().eval())(X, [0, 1])


class NormBeforeLayer(Net):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Softsign()  # no LRP rule

    def forward(self, x: Tensor) -> Tensor:
        features = self.act(self.conv2(self.norm(self.relu(self.conv1(x)))))
        return self.fc(self.pool(features).flatten(1))


@pytest.mark.parametrize("name", FG)
def test_fg_cam_module_without_rule(name: str) -> None:
    with pytest.raises(UnsupportedModuleError, match="No LRP rule for 'norm'"):
        _explain(name, NormBeforeLayer().eval())(X, [0, 1])


# ------------------------------------------------- the same guards on every entry point


class PartlyCompiled(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = torch.compile(self.conv2, backend="eager")  # type: ignore[assignment]


@pytest.mark.parametrize("name", {**FG, **LRP})
def test_compiled_submodule_runs_eagerly(name: str) -> None:
    # A compiled graph inlines the hooks of the call that compiled it and skips later
    # calls' hooks: the propagation would miss the module. Eager: the plain model's map.
    compiled = PartlyCompiled().eval()
    plain = Net().eval()
    plain.load_state_dict(
        {k.replace("conv2._orig_mod.", "conv2."): v for k, v in compiled.state_dict().items()}
    )
    for _ in range(2):  # the second call is where a compiled graph would be reused
        got = _explain(name, compiled)(X, [0, 1])
        torch.testing.assert_close(got, _explain(name, plain)(X, [0, 1]), rtol=0, atol=0)


def test_scripted_submodule_after_something_was_compiled() -> None:
    # Once Dynamo has compiled anything in the process, every call looks for compiled
    # parts in the model: a TorchScript submodule's class has a forward that raises
    # AttributeError when read, which failed every CAM on such a model.
    torch.compile(nn.Linear(2, 2), backend="eager")(torch.randn(1, 2))
    model = _scripted_head()
    expected = Net().eval()
    got = _cam("Grad-CAM")(model, model.act)(X, [0, 1])
    torch.testing.assert_close(got, _cam("Grad-CAM")(expected, expected.act)(X, [0, 1]))
