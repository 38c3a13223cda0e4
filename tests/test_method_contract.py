"""The contract for method authors: the example of docs/api.md, as printed, is a working
CAM; the base classes are abstract; the hooks get a state typed per family."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import captum_fdcam
from captum_fdcam import (
    METHODS,
    CamState,
    FGCam,
    GradientCamState,
    GradientLayerCam,
    GradientPerturbationCamState,
    GradientPerturbationLayerCam,
    LayerCamBase,
    LayerFGCam,
    LayerGradCam,
    PerturbationCamState,
    PerturbationEngine,
    PerturbationLayerCam,
    WeightedLayerCam,
    ZBoxRule,
)
from captum_fdcam.propagation import RuleAssignment, propagate

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def docs_example() -> str:
    """The first Python block under "## Writing a new CAM" in docs/api.md."""
    text = API_PAGE.read_text(encoding="utf-8")
    section = text.split("## Writing a new CAM", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match is not None, "no code block under 'Writing a new CAM'"
    return match.group(1)


def example_class() -> type[GradientLayerCam]:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(docs_example(), str(API_PAGE), "exec"), namespace)
    return namespace["LayerPositiveGradCam"]


class Net(nn.Module):
    """``features`` up to the explained ReLU (``features[4]``), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def model() -> Net:
    return Net().double().eval()


@pytest.fixture(scope="module")
def x() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 8, 8, dtype=torch.float64)


def reference_components(model: Net, x: Tensor, targets: list[int]) -> Tensor:
    """The example's terms ``w_k A^k``, one example at a time: w_k is the spatial mean of
    the positive part of d y_t / d A^k at the explained ReLU."""
    terms = []
    for i, t in enumerate(targets):
        with torch.no_grad():
            a = model.features(x[i : i + 1])
        a.requires_grad_()
        (g,) = torch.autograd.grad(model.head(a)[0, t], a)
        terms.append(torch.relu(g).mean(dim=(2, 3), keepdim=True) * a.detach())
    return torch.cat(terms)


def test_example_is_short_and_uses_only_public_names() -> None:
    code = docs_example()
    assert len(code.strip().splitlines()) < 30
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports, code
    for line in imports:
        assert line.startswith(("import torch", "from torch ", "from captum_fdcam import")), line
    assert "_core" not in code
    # The page no longer sends authors to the private package.
    assert "_core" not in API_PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "targets", [[2, 2, 2], [0, 3, 4]], ids=["one-target", "per-example-targets"]
)
def test_example_map_matches_a_loop(model: Net, x: Tensor, targets: list[int]) -> None:
    cam = example_class()(model, model.features[4])
    expected = reference_components(model, x, targets).sum(dim=1, keepdim=True)
    for target in (targets, torch.tensor(targets)):
        got = cam.attribute(x, target=target)
        assert got.shape == (3, 1, 4, 4)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    relu = cam.attribute(x, target=targets, relu_attributions=True)
    torch.testing.assert_close(relu, torch.relu(expected), rtol=1e-12, atol=1e-14)
    split = cam.attribute(x, target=targets, attr_dim_summation=False)
    torch.testing.assert_close(split, reference_components(model, x, targets), rtol=1e-12, atol=0)


def test_example_works_with_fg_cam(model: Net, x: Tensor) -> None:
    targets = [0, 3, 4]
    cam = example_class()(model, model.features[4])
    components = reference_components(model, x, targets)
    # FG-CAM starts from the method's components and propagates them with its rules.
    (relevance,) = propagate(
        model,
        RuleAssignment(None, ZBoxRule()),
        (x,),
        None,
        start_relevance=lambda _: components,
        start=model.features[4],
    )
    got = FGCam(cam).attribute(x, target=targets)
    assert got.shape == (3, 1, 8, 8)
    torch.testing.assert_close(got, relevance.sum(dim=1, keepdim=True), rtol=1e-10, atol=1e-12)
    # At the method's own layer, FG-CAM is the method's map.
    at_layer = LayerFGCam(cam, model.features[4]).attribute(x, target=targets)
    torch.testing.assert_close(at_layer, cam.attribute(x, target=targets), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("base", "missing"),
    [
        (LayerCamBase, "terms"),
        (WeightedLayerCam, "weights"),
        (GradientLayerCam, "weights"),
        (PerturbationLayerCam, "weights"),
        (GradientPerturbationLayerCam, "weights"),
    ],
)
def test_exported_bases_refuse_instantiation(base: type, missing: str, model: Net) -> None:
    with pytest.raises(TypeError, match=rf"Can't instantiate abstract class .*{missing}"):
        base(model, model.features[4])

    class Incomplete(base):  # type: ignore[misc, valid-type]
        """A method that forgot its hook."""

    with pytest.raises(TypeError, match=rf"abstract class Incomplete .*'?{missing}'?"):
        Incomplete(model, model.features[4])


def test_every_exported_base_is_abstract() -> None:
    bases = [
        getattr(captum_fdcam, name)
        for name in captum_fdcam.__all__
        if isinstance(getattr(captum_fdcam, name), type)
        and issubclass(getattr(captum_fdcam, name), LayerCamBase)
        and name not in {m.__name__ for m in METHODS.values()}
    ]
    assert len(bases) == 5
    assert all(b.__abstractmethods__ for b in bases)
    # Every method implements its hooks (Group-CAM's terms are per group, not weights).
    assert not any(m.__abstractmethods__ for m in METHODS.values())


STATE_TYPES = {
    "Grad-CAM": GradientCamState,
    "Grad-CAM++": GradientCamState,
    "XGrad-CAM": GradientCamState,
    "Layer-CAM": GradientCamState,
    "Score-CAM": PerturbationCamState,
    "Ablation-CAM": PerturbationCamState,
    "Group-CAM": GradientPerturbationCamState,
    "FD-CAM": GradientPerturbationCamState,
}


@pytest.mark.parametrize("name", STATE_TYPES)
def test_layer_state_is_typed_per_family(name: str, model: Net, x: Tensor) -> None:
    cam = METHODS[name](model, model.features[4])
    (state,) = cam.layer_state(x, target=[0, 1, 2])
    assert type(state) is STATE_TYPES[name]
    assert isinstance(state, CamState)
    assert state.activation.shape == (3, 6, 4, 4)
    assert isinstance(getattr(state, "gradient", None), Tensor) == cam.requires_gradients
    assert isinstance(getattr(state, "engine", None), PerturbationEngine) == (
        cam.uses_perturbations
    )
    with pytest.raises(TypeError):
        cam.layer_state(x, [0, 1, 2])  # keyword-only after the inputs


def test_layer_state_gives_one_state_per_feature_map(x: Tensor) -> None:
    class Split(nn.Module):
        def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
            return a[:, :2], a[:, 2:]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.split = Split()
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            a, b = self.split(self.conv(x))
            return self.head(torch.cat([a, b], 1).mean((2, 3)))

    model = Model().double().eval()
    states = LayerGradCam(model, model.split).layer_state(x, target=1)
    assert [s.activation.shape[1] for s in states] == [2, 2]
    assert all(type(s) is GradientCamState for s in states)


def test_check_inputs_hook_runs_before_the_model(model: Net, x: Tensor) -> None:
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        cam = METHODS["Score-CAM"](model, model.features[4], baseline=torch.zeros(2, 1, 1))
        with pytest.raises(ValueError, match="baseline of shape"):
            cam.attribute(x, target=0)
    finally:
        handle.remove()
    assert calls == []
