"""Suites of methods and metrics in one ``quantus.evaluate`` call: ``Explainer`` and
``captum_fdcam.evaluation.evaluate``.

Every suite score is checked against the same metric called directly, on maps computed
with the method's own class (and, for the metrics that explain again, with an explain
function built on that class), so a method whose options were dropped or shared with
another one scores differently.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import quantus
import torch
from captum.attr import IntegratedGradients, LayerAttribution
from torch import Tensor, nn

from captum_fdcam import FGCam, LayerFDCam, LayerGradCam, LayerLayerCam
from captum_fdcam.evaluation import Deletion, Explainer, evaluate, explain
from tests.conftest import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")

Maps = Callable[[nn.Module, Tensor, Tensor], Tensor]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    return x, np.array([0, 3, 1])


def metrics() -> dict[str, Any]:
    """Fresh metrics: two that read the maps only, two that run the model, one of which
    (RandomLogit) explains the images again for other classes."""
    quiet = {"disable_warnings": True}
    return {
        "Sparseness": quantus.Sparseness(**quiet),
        "PixelFlipping": quantus.PixelFlipping(features_in_step=8, perturb_baseline=0.0, **quiet),
        "Deletion": Deletion(pixels_per_step=16, **quiet),
        "RandomLogit": quantus.RandomLogit(num_classes=5, **quiet),
    }


# The maps each method's class gives, upsampled and summed over channels as `explain`
# documents; "features.3" is the model's last Conv2d, explain's default layer.


def _up(cam: Tensor, x: Tensor) -> Tensor:
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")


def grad_cam(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    cam = LayerGradCam(model, model.get_submodule("features.3"))
    return _up(cam.attribute(x, target=y, relu_attributions=True), x)


def fd_cam(group_fraction: float, layer: str = "features.3") -> Maps:
    def maps(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cam = LayerFDCam(model, model.get_submodule(layer), group_fraction=group_fraction)
        return _up(cam.attribute(x, target=y, relu_attributions=True), x)

    return maps


def fg_grad_cam_denoised(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    fg = FGCam(LayerGradCam(model, model.get_submodule("features.3")), denoise=True)
    return fg.attribute(x, target=y, relu_attributions=True).sum(dim=1, keepdim=True)


def layer_cam_at(layer: str) -> Maps:
    def maps(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cam = LayerLayerCam(model, model.get_submodule(layer))
        return _up(cam.attribute(x, target=y, relu_attributions=True), x)

    return maps


def integrated_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return IntegratedGradients(model).attribute(x, target=y, n_steps=8).sum(dim=1, keepdim=True)


def quantus_saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.from_numpy(quantus.explain(model, x.numpy(), y.numpy(), method="Saliency"))


def as_explain_func(maps: Maps) -> Callable[..., np.ndarray]:
    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        return maps(model, x, y).detach().numpy()

    return explain_func


def direct_scores(model: nn.Module, x: np.ndarray, y: np.ndarray, maps: Maps) -> dict[str, Any]:
    """Each metric called on its own with the class's maps (the way quantus.evaluate
    calls it: maps given, and an explain function for the metrics that explain again)."""
    func = as_explain_func(maps)
    a = func(model, x, y)
    assert a.shape == (len(x), 1, *x.shape[-2:]) and a.max() > 0
    return {
        name: metric(model, x, y, a_batch=a, explain_func=func, explain_func_kwargs={})
        for name, metric in metrics().items()
    }


def assert_scores(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(value), rtol=1e-5, atol=1e-7)


def test_each_method_scores_as_its_own_class(model: nn.Module, batch) -> None:
    """Per-method options are applied: two FD-CAMs that differ only in group_fraction, a
    Layer-CAM whose own layer wins over the shared one, FG-CAM's options, a Captum method
    with attribute options; the shared explain_func_kwargs fill in the rest."""
    x, y = batch
    suite = {
        "Grad-CAM": (Explainer("Grad-CAM"), grad_cam),
        "FD-CAM 10%": (Explainer("FD-CAM", method_kwargs={"group_fraction": 0.1}), fd_cam(0.1)),
        "FD-CAM 50%": (Explainer("FD-CAM", method_kwargs={"group_fraction": 0.5}), fd_cam(0.5)),
        "FG-Grad-CAM-D": (
            Explainer("FG-Grad-CAM", fg_kwargs={"denoise": True}),
            fg_grad_cam_denoised,
        ),
        "Layer-CAM, features.0": (
            Explainer("Layer-CAM", layer="features.0"),
            layer_cam_at("features.0"),
        ),
        "IG": (
            Explainer("IntegratedGradients", attribute_kwargs={"n_steps": 8}),
            integrated_gradients,
        ),
    }
    explainers = {name: explainer for name, (explainer, _) in suite.items()}
    shared = {"layer": "features.3"}
    results = evaluate(metrics(), explainers, model, x, y, explain_func_kwargs=shared)
    assert list(results) == list(suite)
    for name, (_, maps) in suite.items():
        assert_scores(results[name], direct_scores(model, x, y, maps))
    # Explainers are Quantus's callable form: quantus.evaluate itself agrees.
    plain = quantus.evaluate(
        metrics=metrics(),
        xai_methods=explainers,
        model=model,
        x_batch=x,
        y_batch=y,
        explain_func_kwargs=shared,
    )
    for name in suite:
        assert_scores(plain[name], results[name])
    # The options made a difference: the two FD-CAMs, and Layer-CAM at the shared layer.
    for metric in ("Sparseness", "RandomLogit"):
        assert not np.allclose(results["FD-CAM 10%"][metric], results["FD-CAM 50%"][metric])
    shared_layer = direct_scores(model, x, y, layer_cam_at("features.3"))["Sparseness"]
    assert not np.allclose(results["Layer-CAM, features.0"]["Sparseness"], shared_layer)


def test_dict_entries_explain_what_they_say(model: nn.Module, batch) -> None:
    """Each dict form scores its own method, never Quantus's gradient; a Quantus entry
    neither drops the shared layer of the entries after it nor re-explains with its
    display name (both of which plain quantus.evaluate does)."""
    x, y = batch
    xai_methods = {
        "Saliency (Quantus's)": {"method": "Saliency"},
        "FD-CAM 10%": {
            "explain_func": explain,
            "method": "FD-CAM",
            "method_kwargs": {"group_fraction": 0.1},
        },
        "FD-CAM": {"explain_func_kwargs": {"method_kwargs": {"group_fraction": 0.5}}},
        "Grad-CAM, features.3": {"explain_func": Explainer("Grad-CAM"), "layer": "features.3"},
        "Layer-CAM": explain,  # the callable form: the key is the method, the layer shared
    }
    expected = {
        "Saliency (Quantus's)": quantus_saliency,
        "FD-CAM 10%": fd_cam(0.1, "features.0"),
        "FD-CAM": fd_cam(0.5, "features.0"),
        "Grad-CAM, features.3": grad_cam,
        "Layer-CAM": layer_cam_at("features.0"),
    }
    results = evaluate(
        metrics(), xai_methods, model, x, y, explain_func_kwargs={"layer": "features.0"}
    )
    assert list(results) == list(expected)
    for name, maps in expected.items():
        assert_scores(results[name], direct_scores(model, x, y, maps))
    gradient = quantus.explain(model, x, y, method="Gradient")
    plain = quantus.Sparseness(disable_warnings=True)(model, x, y, a_batch=gradient)
    for name in list(expected)[1:]:
        assert not np.allclose(results[name]["Sparseness"], plain), name


def _spy_metric(calls: list[str]) -> Callable[..., list[float]]:
    def metric(**kwargs: Any) -> list[float]:
        calls.append(kwargs["explain_func_kwargs"]["method"])
        return [0.0]

    return metric


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"layer": "features.3"}, "plain 'Gradient'"),  # Quantus would score a gradient
        ({"explain_func": explain}, "has no method 'mine'"),
        ({"method": "NoSuchCAM"}, "neither Quantus"),
        ({"xai_lib": "zennit"}, "without an 'attributor'"),
        ({"explain_func": Explainer("Grad-CAM"), "method": "FD-CAM"}, "method is fixed"),
        (
            {"explain_func": explain, "method": "FD-CAM", "explain_func_kwargs": {"method": "X"}},
            r"\['method'\] both",
        ),
        (explain, "Explainer\\(<method>"),  # explain would be called with method='mine'
        ({"explain_func": explain, "method": "FD-CAM", "xai_lib_kwargs": {}}, None),
    ],
)
def test_entries_that_would_explain_something_else_are_refused(
    model: nn.Module, batch, entry: Any, message: str | None
) -> None:
    x, y = batch
    calls: list[str] = []
    xai_methods = {"Grad-CAM": Explainer("Grad-CAM"), "mine": entry}
    error = TypeError if message is None else ValueError
    with pytest.raises(error, match=message or "explain does not have: \\['xai_lib_kwargs'\\]"):
        evaluate({"spy": _spy_metric(calls)}, xai_methods, model, x, y)
    assert calls == []  # refused before anything was explained or scored


def test_a_quantus_name_as_key_without_method_is_refused(model: nn.Module, batch) -> None:
    """Quantus's dict form explains {"Saliency": {}} with a gradient, then re-explains
    with "Saliency": ambiguous, so it needs its method spelled out."""
    x, y = batch
    with pytest.raises(ValueError, match="plain 'Gradient'"):
        evaluate({"spy": _spy_metric([])}, {"Saliency": {"xai_lib": "captum"}}, model, x, y)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"explain_func_kwargs": {"method": "FD-CAM"}}, ValueError, "replaces by each"),
        ({"call_kwargs": {"set": {"a_batch": None}}}, ValueError, "passes itself"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
    ],
)
def test_arguments_quantus_would_override_are_refused(
    model: nn.Module, batch, kwargs: dict[str, Any], error: type, message: str
) -> None:
    x, y = batch
    calls: list[str] = []
    with pytest.raises(error, match=message):
        evaluate({"spy": _spy_metric(calls)}, {"Grad-CAM": explain}, model, x, y, **kwargs)
    assert calls == []
    with pytest.raises(TypeError, match="must be an explain function"):
        evaluate({"spy": _spy_metric(calls)}, {"Grad-CAM": 3}, model, x, y)


def test_a_failing_metric_is_raised_or_scored_nan(model: nn.Module, batch) -> None:
    x, y = batch
    calls: list[str] = []

    def broken(**kwargs: Any) -> list[float]:
        calls.append(kwargs["explain_func_kwargs"]["method"])
        raise ArithmeticError("no score")

    layer = {"layer": "features.3"}
    suite = {"Grad-CAM": Explainer("Grad-CAM", **layer), "FD-CAM": Explainer("FD-CAM", **layer)}
    first = {"spy": _spy_metric([]), "broken": broken}
    with pytest.raises(RuntimeError, match="broken failed on Grad-CAM: ArithmeticError") as info:
        evaluate(first, suite, model, x, y)
    assert isinstance(info.value.__cause__, ArithmeticError)
    assert calls == ["Grad-CAM"]  # stopped at the first failure

    with pytest.warns(UserWarning, match="broken failed on .*, scored nan") as warned:
        results = evaluate(first, suite, model, x, y, agg_func=np.mean, on_error="nan")
    assert [str(w.message).split(",")[0] for w in warned] == [
        "broken failed on Grad-CAM",
        "broken failed on FD-CAM",
    ]
    for name in suite:
        assert results[name]["spy"] == 0.0 and np.isnan(results[name]["broken"])


def test_explainer_binds_its_method_and_options(model: nn.Module, batch) -> None:
    x, y = batch
    bound = Explainer("Layer-CAM", layer="features.0", relu_attributions=False)
    direct = explain(model, x, y, method="Layer-CAM", layer="features.0", relu_attributions=False)
    # Quantus's method=<key> is ignored; bound options win over the call's, which fill in.
    got = bound(model, x, y, method="FD-CAM", layer="features.3", batch_size=1)
    one_by_one = explain(
        model,
        x,
        y,
        method="Layer-CAM",
        layer="features.0",
        relu_attributions=False,
        batch_size=1,
    )
    np.testing.assert_array_equal(got, one_by_one)
    filled = Explainer("Grad-CAM")(model=model, inputs=x, targets=y, layer="features.0")
    np.testing.assert_array_equal(filled, explain(model, x, y, layer="features.0"))
    assert not np.allclose(filled, explain(model, x, y))  # the default layer is features.3

    for clone in (pickle.loads(pickle.dumps(bound)), copy.deepcopy(bound)):
        assert clone == bound and clone is not bound
        np.testing.assert_array_equal(clone(copy.deepcopy(model), x, y), direct)
    assert bound != Explainer("Layer-CAM", layer="features.3", relu_attributions=False)
    assert repr(bound) == "Explainer('Layer-CAM', layer='features.0', relu_attributions=False)"
    assert bound.with_options(layer="features.3").options["layer"] == "features.3"
    assert repr(Explainer(LayerFDCam)) == "Explainer('LayerFDCam')"


def test_explainer_refuses_what_it_could_not_run(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="Unknown method 'FD-CAMM'"):
        Explainer("FD-CAMM")
    with pytest.raises(ValueError, match="Unknown method"):
        Explainer("FG-NoCAM")
    with pytest.raises(TypeError, match=r"explain does not have: \['group_fraction'\]"):
        Explainer("FD-CAM", group_fraction=0.1)  # belongs in method_kwargs
    with pytest.raises(ValueError, match="by module name"):
        Explainer("Grad-CAM", layer=model.features[3])
    with pytest.raises(TypeError, match="not a Captum Attribution"):
        Explainer(nn.Linear)


@pytest.mark.slow
def test_the_docs_suite_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The code block of docs/evaluation.md's "Suites with quantus.evaluate" runs as
    written, and prints a row per method (3-5 s on one core)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
    section = page.read_text(encoding="utf-8").split("## Suites with quantus.evaluate\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(page), "exec"), namespace)
    results = namespace["results"]
    assert list(results) == list(namespace["xai_methods"])
    for method, scores in results.items():
        assert list(scores) == ["Deletion", "Sparseness", "RandomLogit"], method
        assert all(np.isfinite(v) for v in scores.values()), (method, scores)
    assert results["FD-CAM (5%)"]["Sparseness"] != results["FD-CAM (25%)"]["Sparseness"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in printed] == list(results)
