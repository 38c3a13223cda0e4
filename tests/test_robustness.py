"""Every CAM method and FG-CAM under unusual models, modes and values (issue 7, items 2, 3, 6).

Each case either gives the result it should (the result without the twist, or what the
formula gives by construction) or fails with a message that names the problem.

Already covered elsewhere, so not repeated here:

* in-place ReLU after the layer, gradient CAMs: ``test_gradient_cams.py::
  test_in_place_relu_after_the_layer_does_not_change_the_activations``; FD-CAM:
  ``test_perturbation_cams.py::test_fdcam_matches_naive`` (vgg11.features.18); FG-CAM's
  target layers followed by in-place ReLUs: ``test_fg_cam.py::
  test_fg_grad_cam_matches_layer_by_layer_reference`` (TinyVGG);
* a layer called twice, Grad-CAM: ``test_gradient_cams.py::test_layer_called_twice``;
* ``torch.no_grad()``, XGrad-CAM: ``test_gradient_cams.py::
  test_works_under_no_grad_and_with_frozen_parameters``;
* inputs with ``requires_grad=False`` (the default of every test) stay without gradient:
  ``test_gradient_cams.py::test_model_and_input_unchanged``;
* a train-mode model without BatchNorm or Dropout keeps its mode:
  ``test_gradient_cams.py::test_model_and_input_unchanged``;
* double precision against the papers' formulas: ``test_gradient_cams.py``,
  ``test_perturbation_cams.py`` and ``test_fg_cam.py`` all run in float64;
* a few dead (all-zero) channels, Score-CAM: ``test_perturbation_cams.py::
  test_identical_masks_are_evaluated_once``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from captum.attr import LayerGradCam as CaptumLayerGradCam
from conftest import SmallCNN
from torch import Tensor, nn

from captum_fdcam import (
    CLRP,
    METHODS,
    SGLRP,
    ConstantMapWarning,
    FGCam,
    LayerFGCam,
    LayerGradCam,
    LayerScoreCam,
    PropagationLRP,
)
from captum_fdcam.methods.switching import cosine_similarity_matrix, similarity_groups
from captum_fdcam.registry import cam_names

GRADIENT = list(cam_names("gradient"))
PERTURBATION = list(cam_names("perturbation", "gradient+perturbation"))
#: Every CAM on its own ("cam") and as FG-CAM's base, propagated to the input ("fg").
EVERY = [(kind, name) for kind in ("cam", "fg") for name in METHODS]


def _ids(case: tuple[str, str]) -> str:
    kind, name = case
    return name if kind == "cam" else f"FG-CAM({name})"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cam(name: str, model: nn.Module, layer: nn.Module, **options: object) -> object:
    if name == "Group-CAM":  # the default blur (kernel 51) needs images of 26 px or more
        options = {"blur_kernel_size": 5, "blur_sigma": 2.0, **options}
    return METHODS[name](model, layer, **options)


def explainer(kind: str, name: str, model: nn.Module, layer: nn.Module) -> Callable[..., Tensor]:
    """``attribute`` of the CAM ``name`` at ``layer``, or of FG-CAM on it (at the input)."""
    cam = make_cam(name, model, layer)
    return cam.attribute if kind == "cam" else FGCam(cam).attribute


def small_model(seed: int = 0, **options: object) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(**options).eval()


# =========================================================== item 2: unusual setups


@pytest.mark.parametrize(
    "case", [c for c in EVERY if c[0] == "fg" or c[1] in PERTURBATION], ids=_ids
)
def test_in_place_relu_after_the_layer(case: tuple[str, str]) -> None:
    kind, name = case
    plain = small_model(1)
    inplace = small_model(1, inplace=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (plain.features(x) < 0).any(), "the in-place ReLU must change the activations"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback from the fast path either
        # (Group-CAM's map of the first image is all 0 here, which it says)
        warnings.simplefilter("ignore", ConstantMapWarning)
        expected = explainer(kind, name, plain, plain.features[3])(x, [0, 4])
        got = explainer(kind, name, inplace, inplace.features[3])(x, [0, 4])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_input_of_an_in_place_relu_is_the_output_before_it(case: tuple[str, str]) -> None:
    # The in-place ReLU overwrites its input; the captured input must be the value before.
    kind, name = case
    model = small_model(2, inplace=True)
    x = torch.randn(2, 3, 8, 8)
    cam = make_cam(name, model, model.act)
    if kind == "cam":
        got = cam.attribute(x, [1, 2], attribute_to_layer_input=True)
        expected = make_cam(name, model, model.features[3]).attribute(x, [1, 2])
        assert torch.equal(got, expected)
        if name == "Grad-CAM":  # and Captum agrees
            captum = CaptumLayerGradCam(model, model.act)
            assert torch.equal(captum.attribute(x, [1, 2], attribute_to_layer_input=True), got)
    else:  # FG-CAM from the ReLU's output to its own input: ReLU passes relevance as is
        got = LayerFGCam(cam, model.act).attribute(x, [1, 2], attribute_to_layer_input=True)
        # FG-CAM reruns the base CAM with recording hooks and gradients on, where CPU
        # kernels may round differently (Group-CAM: 1 ulp on torch 2.14.1); a value
        # overwritten by the ReLU would differ by far more than this tolerance.
        torch.testing.assert_close(got, cam.attribute(x, [1, 2]), rtol=1e-6, atol=1e-9)


class _SharedReLU(nn.Module):
    """One ReLU module called before ``conv1``, before ``conv2`` and after ``conv2``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.relu(self.conv0(x)))
        return self.fc(self.relu(self.conv2(self.relu(h))).mean((2, 3)))


@pytest.mark.parametrize("case", [c for c in EVERY if c != ("cam", "Grad-CAM")], ids=_ids)
def test_layer_called_twice(case: tuple[str, str]) -> None:
    kind, name = case
    torch.manual_seed(3)
    model = _SharedReLU().eval()
    with pytest.raises(ValueError, match=r"Layer 'relu' \(ReLU\) is called more than once"):
        explainer(kind, name, model, model.relu)(torch.randn(1, 3, 8, 8), 0)


def test_fg_cam_target_layer_called_twice() -> None:
    torch.manual_seed(4)
    model = _SharedReLU().eval()
    x = torch.randn(2, 3, 8, 8)
    # Two calls before the base layer: which one to explain is ambiguous.
    at_conv2 = LayerGradCam(model, model.conv2)
    with pytest.raises(RuntimeError, match=r"'relu' \(ReLU\) is called more than once"):
        LayerFGCam(at_conv2, model.relu).attribute(x, 0)
    # One call before the base layer (the other after it): that one is explained. A
    # ReLU passes relevance unchanged, so its output has the relevance of conv0's output.
    at_conv1 = LayerGradCam(model, model.conv1)
    got = LayerFGCam(at_conv1, model.relu).attribute(x, [0, 2])
    expected = LayerFGCam(at_conv1, model.conv0).attribute(x, [0, 2])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", [c for c in EVERY if c != ("cam", "XGrad-CAM")], ids=_ids)
def test_no_grad_around_the_call(case: tuple[str, str]) -> None:
    kind, name = case
    model = small_model(5)
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.features[3])
    expected = attribute(x, [2, 3])
    with torch.no_grad():
        got = attribute(x, [2, 3])
    assert torch.equal(got, expected)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_inference_mode_around_the_call(case: tuple[str, str]) -> None:
    # inference_mode cannot be switched off inside: methods that need gradients say so
    # (they said "the target score does not depend on layer ..."; Captum's Grad-CAM
    # fails with "element 0 of tensors does not require grad").
    kind, name = case
    model = small_model(6)
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.features[3])
    if kind == "cam" and name in ("Score-CAM", "Ablation-CAM"):  # no gradients needed
        expected = attribute(x, [0, 1])
        with torch.inference_mode():
            assert torch.equal(attribute(x, [0, 1]), expected)
        return
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch\.inference_mode"):
        attribute(x, [0, 1])


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_inputs_that_require_grad(case: tuple[str, str]) -> None:
    kind, name = case
    model = small_model(7)
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.features[3])
    expected = attribute(x, [1, 4])
    leaf = x.clone().requires_grad_()
    source = x.clone().requires_grad_()
    non_leaf = source * 1.0
    for inputs in (leaf, non_leaf):
        got = attribute(inputs, [1, 4])
        assert torch.equal(got, expected)
        assert not got.requires_grad
    # Nothing flows back into the caller's graph.
    assert leaf.grad is None and source.grad is None


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_double_precision_equals_float(case: tuple[str, str]) -> None:
    kind, name = case
    model = small_model(8)
    x = torch.randn(2, 3, 8, 8)
    single = explainer(kind, name, model, model.features[3])(x, [0, 3])
    double_model = copy.deepcopy(model).double()
    double = explainer(kind, name, double_model, double_model.features[3])(x.double(), [0, 3])
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    scale = double.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(single.double(), double, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_channels_last_equals_contiguous(case: tuple[str, str]) -> None:
    kind, name = case
    model = small_model(9).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = explainer(kind, name, model, model.features[3])(x, [2, 0])
    x_last = x.contiguous(memory_format=torch.channels_last)
    last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert last_model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for m in (model, last_model):  # channels-last input, model in either layout
        got = explainer(kind, name, m, m.features[3])(x_last, [2, 0])
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------- train mode


class _BatchNormDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def test_train_mode_grad_cam_is_captums_and_leaves_the_model_as_it_was() -> None:
    # Captum runs a train-mode model as it is: batch statistics, a random dropout mask,
    # running statistics updated once. Grad-CAM here gives the same map, bit for bit,
    # and then puts the running statistics back: the model is left as it was.
    torch.manual_seed(10)
    model = _BatchNormDropout().train()
    x = torch.randn(3, 3, 8, 8)
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(11)
    theirs = CaptumLayerGradCam(model, model.features[3]).attribute(x, [0, 1, 2])
    assert model.features[1].num_batches_tracked == 1  # Captum's pass updated them
    model.load_state_dict(state)
    torch.manual_seed(11)
    ours = LayerGradCam(model, model.features[3]).attribute(x, [0, 1, 2])
    assert torch.equal(ours, theirs)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.training and model.features[1].num_batches_tracked == 0
    # What train mode changes: batch statistics and dropout make another map.
    model.eval()
    assert not torch.allclose(LayerGradCam(model, model.features[3]).attribute(x, [0, 1, 2]), ours)


@pytest.mark.parametrize("case", [c for c in EVERY if c[1] in GRADIENT], ids=_ids)
def test_train_mode_gradient_cams_run_without_warning(
    case: tuple[str, str],
) -> None:
    kind, name = case
    torch.manual_seed(12)
    model = _BatchNormDropout().train()
    x = torch.randn(3, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attr = explainer(kind, name, model, model.features[3])(x, [0, 1, 2])
    assert torch.isfinite(attr).all()
    assert model.features[1].num_batches_tracked == 0  # running statistics put back
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("case", [c for c in EVERY if c[1] in PERTURBATION], ids=_ids)
def test_train_mode_perturbation_cams_warn(case: tuple[str, str]) -> None:
    # Their scores would come from BatchNorm statistics over a chunk of perturbed copies
    # (changing with perturbations_per_eval) and random dropout masks: they warn.
    kind, name = case
    torch.manual_seed(13)
    model = _BatchNormDropout().train()
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.features[3])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attr = attribute(x, [0, 1])
    assert torch.isfinite(attr).all()
    # Ablation-CAM and FD-CAM also fall back to full forward passes (with a warning of
    # their own): with batch statistics, the unswitched copy does not give the score.
    messages = [str(w.message) for w in record if "training mode" in str(w.message)]
    assert len(messages) == 1 and record[0].category is RuntimeWarning
    assert "'features.1', 'features.4', 'head.1'" in messages[0]
    assert "perturbations_per_eval" in messages[0] and "model.eval()" in messages[0]
    # Hundreds of perturbed passes in training mode: the running statistics are restored.
    assert model.features[1].num_batches_tracked == 0
    assert torch.equal(model.features[4].running_var, torch.ones(8))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribute(x, [0, 1])


class _FunctionalDropout(nn.Module):
    """Training mode without a Dropout or BatchNorm module: F.dropout in forward, and
    (unless ``norm=False``: FG-CAM has no LRP rule for it) an InstanceNorm that tracks
    running statistics."""

    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.InstanceNorm2d(6, track_running_stats=True) if norm else nn.Identity()
        self.layer = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.layer(torch.relu(self.norm(self.conv(x)))))
        return self.fc(nn.functional.dropout(a.mean((2, 3)), 0.3, self.training))


@pytest.mark.parametrize("case", [c for c in EVERY if c[1] in PERTURBATION], ids=_ids)
def test_any_train_mode_model_warns_and_keeps_its_buffers(case: tuple[str, str]) -> None:
    kind, name = case
    torch.manual_seed(14)
    model = _FunctionalDropout(norm=kind == "cam").train()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        explainer(kind, name, model, model.layer)(torch.randn(2, 3, 8, 8), [0, 1])
    messages = [str(w.message) for w in record if "training mode" in str(w.message)]
    assert len(messages) == 1, messages
    assert record[0].filename == __file__  # points at the caller's line
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ------------------------------------------------------------------- TorchScript


def _script(model: nn.Module, how: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent PyTorch
        if how == "script":
            return torch.jit.script(model)
        return torch.jit.trace(model, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_torchscript_models_fail_clearly(case: tuple[str, str], how: str) -> None:
    kind, name = case
    scripted = _script(small_model(14), how)
    layers = [scripted.features._modules["3"], scripted.act]
    assert all(isinstance(layer, torch.jit.ScriptModule) for layer in layers)
    if how == "script":
        # Indexing a scripted Sequential gives the Python module it was compiled from,
        # which the scripted model never calls (it used to be "not a submodule").
        layers.append(scripted.features[3])
        assert not isinstance(layers[-1], torch.jit.ScriptModule)
    for layer in layers:
        with pytest.raises(TypeError, match=r"TorchScript.*register_forward_hook is not supp"):
            explainer(kind, name, scripted, layer)


def test_torchscript_message_is_at_least_captums() -> None:
    scripted = _script(small_model(15), "script")
    layer = scripted.features._modules["3"]
    with pytest.raises(RuntimeError, match="register_forward_hook is not supported on Script"):
        CaptumLayerGradCam(scripted, layer).attribute(torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(TypeError, match=r"pass the original Python nn\.Module"):
        LayerGradCam(scripted, layer)
    # A Python forward function around a scripted model: the layer is checked alone.
    with pytest.raises(TypeError, match=r"The layer is a TorchScript"):
        LayerGradCam(lambda x: scripted(x), layer)


def test_fg_cam_with_a_scripted_submodule_fails_clearly() -> None:
    # The CAM works (its layer is outside the scripted part); FG-CAM hooks every module.
    model = small_model(16)
    model.head = _script(model.head, "script")
    x = torch.randn(2, 3, 8, 8)
    base = LayerGradCam(model, model.features[3])
    assert torch.isfinite(base.attribute(x, [0, 1])).all()
    with pytest.raises(TypeError, match=r"'head' .* is a TorchScript module"):
        FGCam(base)


# ------------------------------------------------------------------ torch.compile


def _counting_backend(graphs: list[object]) -> Callable[..., Callable[..., object]]:
    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., object]:
        graphs.append(gm)
        return gm.forward

    return backend


def test_compiled_model_every_method_in_a_row() -> None:
    # Dynamo does not guard on submodule hooks: a graph compiled during one call used to
    # be reused by the next, without its hooks (Score-CAM, then Ablation-CAM: "Layer
    # 'features.3' was not called"). The methods now run compiled models uncompiled.
    model = small_model(17)
    compiled = torch.compile(model, backend="eager")
    in_place = small_model(17)
    in_place.compile(backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for kind, name in EVERY:
            expected = explainer(kind, name, model, model.features[3])(x, [0, 1])
            for m in (compiled, in_place):
                got = explainer(kind, name, m, m.features[3])(x, [0, 1])
                assert torch.equal(got, expected), (kind, name)
        fd = METHODS["FD-CAM"]
        scores = fd(compiled, compiled.features[3]).channel_scores(x, [0, 1])
        assert torch.equal(scores, fd(model, model.features[3]).channel_scores(x, [0, 1]))
    # PyTorch warns when the torch.compile wrapper runs under global module hooks (the
    # replay's): the methods run the module inside the wrapper.
    assert not [w for w in record if "OptimizedModule" in str(w.message)]


def test_compiled_model_is_not_compiled_by_the_methods() -> None:
    graphs: list[object] = []
    model = small_model(18)
    compiled = torch.compile(model, backend=_counting_backend(graphs))
    x = torch.randn(1, 3, 8, 8)
    got = METHODS["Ablation-CAM"](compiled, compiled.features[3]).attribute(x, 2)
    expected = METHODS["Ablation-CAM"](model, model.features[3]).attribute(x, 2)
    assert torch.equal(got, expected)
    assert graphs == []
    # ... and leave torch.compile working afterwards.
    compiled(x)
    assert len(graphs) >= 1


# ======================================================== item 3: numerical edges


class _Tiny(nn.Module):
    """stem conv, ReLU, conv, ``act`` (ReLU: the explained layer), linear head."""

    def __init__(self, channels: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(5, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels * 8 * 8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.activations(x).flatten(1))

    def activations(self, x: Tensor) -> Tensor:
        return self.act(self.conv(self.relu(self.stem(x))))


def _tiny(edit: Callable[[_Tiny], None]) -> _Tiny:
    torch.manual_seed(19)
    model = _Tiny().eval()
    with torch.no_grad():
        edit(model)
    return model


def _all_zero(m: _Tiny) -> None:
    m.conv.weight.zero_()
    m.conv.bias.fill_(-1.0)  # ReLU(-1) = 0 everywhere


def _constant(m: _Tiny) -> None:
    m.conv.weight.zero_()
    m.conv.bias.uniform_(0.5, 1.0)  # channel k is bias_k everywhere


def _half_dead(m: _Tiny) -> None:
    m.conv.weight[:3].zero_()
    m.conv.bias[:3] = -1.0


def _zero_score(m: _Tiny) -> None:
    m.fc.weight[2].zero_()  # class 2 scores 0 for every input
    m.fc.bias[2] = 0.0


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_all_zero_activations_give_a_zero_map(case: tuple[str, str]) -> None:
    kind, name = case
    model = _tiny(_all_zero)
    x = torch.randn(2, 3, 8, 8)
    assert not model.activations(x).any()
    attr = explainer(kind, name, model, model.act)(x, [2, 1])
    assert torch.equal(attr, torch.zeros_like(attr))


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_constant_maps(case: tuple[str, str]) -> None:
    kind, name = case
    model = _tiny(_constant)
    x = torch.randn(2, 3, 8, 8)
    attr = explainer(kind, name, model, model.act)(x, [2, 1])
    assert torch.isfinite(attr).all()
    if kind == "fg":  # the conv's weights are 0: no relevance passes it (bias is ignored)
        assert torch.equal(attr, torch.zeros_like(attr))
    elif name in ("Score-CAM", "Group-CAM"):
        # A constant map gives an all-zero mask: no evidence, weight 0.
        assert torch.equal(attr, torch.zeros_like(attr))
    elif name != "Layer-CAM":  # channel weights times constant channels: constant
        assert torch.equal(attr, attr[..., :1, :1].expand_as(attr))
        assert attr.abs().max() > 0


def test_fd_cam_zero_norm_channels() -> None:
    model = _tiny(_half_dead)
    x = torch.randn(1, 3, 8, 8)
    a = model.activations(x)[0]
    dead = ~a.flatten(1).any(dim=1)
    assert dead.tolist() == [True] * 3 + [False] * 3
    similarity = cosine_similarity_matrix(a)
    assert torch.isfinite(similarity).all()
    assert not similarity[dead].any() and not similarity[:, dead].any()
    torch.testing.assert_close(similarity.diagonal()[~dead], torch.ones(3))
    # A dead channel is similar to nothing: its group is itself (also with every channel
    # in reach: cos 0 is not above the threshold 0).
    for fraction in (0.05, 0.5, 1.0):
        groups = similarity_groups(a, fraction)
        assert torch.equal(groups[dead], torch.eye(6, dtype=torch.bool)[dead])
    # Switching a dead channel off changes nothing; switching only it on leaves an
    # all-zero activation: s_k = (0 + y(0)) / 2.
    off = METHODS["FD-CAM"](model, model.act, switch="off").channel_scores(x, 1)[0]
    assert torch.equal(off[:3], torch.zeros(3))
    cam = METHODS["FD-CAM"](model, model.act)
    scores = cam.channel_scores(x, 1)[0]
    assert torch.isfinite(scores).all()
    with torch.no_grad():
        y_of_zero = model.fc(torch.zeros(1, 6 * 8 * 8))[0, 1]
    torch.testing.assert_close(scores[:3], (y_of_zero / 2).expand(3))
    per_channel = cam.attribute(x, 1, attr_dim_summation=False)
    assert torch.isfinite(per_channel).all()
    assert not per_channel[0, :3].any() and per_channel[0, 3:].any()


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_target_with_zero_score(case: tuple[str, str]) -> None:
    kind, name = case
    model = _tiny(_zero_score)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not model(x)[:, 2].any()
    attr = explainer(kind, name, model, model.act)(x, 2)
    assert torch.isfinite(attr).all()
    if name in GRADIENT or name == "Ablation-CAM":
        # The gradient is 0 (weights 0); Ablation-CAM's relative drop 0 / 0 is 0.
        assert torch.equal(attr, torch.zeros_like(attr))
    elif name == "FD-CAM" and kind == "cam":
        # All alpha_k are 0, normalised to 0: w_k = 0 * exp(s_k) - b = -b.
        expected = -0.5 * model.activations(x).sum(dim=1, keepdim=True)
        torch.testing.assert_close(attr, expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_non_finite_input_is_an_error(case: tuple[str, str], value: float) -> None:
    # Captum's Grad-CAM returns a NaN map for that example; here it is an error.
    kind, name = case
    model = small_model(20)
    x = torch.randn(3, 3, 8, 8)
    x[1, 2, 3, 4] = value
    with pytest.raises(
        ValueError, match=r"inputs\[0\] contains NaN or Inf values \(examples \[1\]\)"
    ):
        explainer(kind, name, model, model.features[3])(x, [0, 1, 2])


class _InfiniteClass(nn.Module):
    """Class 1's score is -inf for every input; with ``log_branch`` it is log(0), whose
    backward pass gives NaN gradients (0 / 0) even when another class is explained."""

    def __init__(self, log_branch: bool) -> None:
        super().__init__()
        self.net = SmallCNN(num_classes=3)
        self.log_branch = log_branch

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if self.log_branch:
            return torch.cat([out[:, :1], torch.log(out[:, 1:2] * 0.0), out[:, 2:]], dim=1)
        out = out.clone()
        out[:, 1] = -float("inf")
        return out


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_non_finite_target_score_is_an_error(case: tuple[str, str]) -> None:
    # Captum's Grad-CAM returns a NaN map here.
    torch.manual_seed(21)
    kind, name = case
    model = _InfiniteClass(log_branch=False).eval()
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.net.features[3])
    with pytest.raises(ValueError, match=r"target score is NaN or infinite for examples \[1\]"):
        attribute(x, [0, 1])
    assert torch.isfinite(attribute(x, [0, 2])).all()  # the other classes are fine


@pytest.mark.parametrize("case", EVERY, ids=_ids)
def test_non_finite_gradient_is_an_error(case: tuple[str, str]) -> None:
    torch.manual_seed(22)
    kind, name = case
    model = _InfiniteClass(log_branch=True).eval()
    x = torch.randn(2, 3, 8, 8)
    attribute = explainer(kind, name, model, model.net.features[3])
    if name in ("Score-CAM", "Ablation-CAM"):
        # No gradient of the score (FG-CAM propagates only the part before the layer).
        assert torch.isfinite(attribute(x, [0, 2])).all()
        return
    with pytest.raises(ValueError, match=r"gradient of the target score .* \[0, 1\]"):
        attribute(x, [0, 2])


@pytest.mark.parametrize("kind", ["cam", "fg"])
def test_group_cam_default_blur_on_small_images(kind: str) -> None:
    # Kernel 51 pads 25 px per side by reflection: images under 26 px used to fail with
    # torchvision's "Padding size should be less than the corresponding input dimension".
    torch.manual_seed(22)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).eval()
    cam = METHODS["Group-CAM"](model, model[1])
    attribute = cam.attribute if kind == "cam" else FGCam(cam).attribute
    message = (
        r"blur kernel of size 51 .* at least 26 x 26 pixels; got 16 x 16\. Pass blur_kernel_size=31"
    )
    with pytest.raises(ValueError, match=message):
        attribute(torch.randn(1, 3, 16, 16), 0)
    assert torch.isfinite(attribute(torch.randn(1, 3, 26, 26), 0)).all()  # the smallest
    smaller = METHODS["Group-CAM"](model, model[1], blur_kernel_size=31)
    assert torch.isfinite(smaller.attribute(torch.randn(1, 3, 16, 20), 0)).all()


# ============================================================ item 6: determinism


class _ResidualNet(nn.Module):
    """Stem with BatchNorm and in-place ReLU, a residual block, a strided head conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head_act = nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.stem(x))
        out = self.conv_b(torch.relu(self.bn_a(self.conv_a(h))))
        out = self.relu(out + h)
        return self.fc(self.head_act(self.head(out)).mean((2, 3)))


@pytest.fixture(scope="module")
def residual_net() -> _ResidualNet:
    torch.manual_seed(23)
    model = _ResidualNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", list(METHODS))
def test_two_calls_give_identical_maps(residual_net: _ResidualNet, name: str) -> None:
    torch.manual_seed(24)
    x = torch.randn(3, 3, 32, 32)  # Group-CAM with its default blur needs 26 px
    targets = [0, 4, 2]
    model = residual_net
    base = METHODS[name](model, model.head_act)
    attributions: list[Callable[[], Tensor]] = [
        lambda: base.attribute(x, targets),
        lambda: base.attribute(x, targets, attr_dim_summation=False),
        lambda: FGCam(base).attribute(x, targets),
        lambda: FGCam(base, denoise=True).attribute(x, targets),
        lambda: LayerFGCam(base, model.conv_a).attribute(x, targets),
    ]
    for attribution in attributions:
        first, second = attribution(), attribution()
        assert torch.isfinite(first).all() and first.abs().max() > 0
        assert torch.equal(first, second)


class _Normalised(nn.Module):
    """Divides the input by its norm: 0/0 = NaN on Score-CAM's all-zero baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / x.flatten(1).norm(dim=1)[:, None, None, None]
        return self.fc(self.conv(x).mean((2, 3)))


def test_non_finite_perturbed_score_is_an_error() -> None:
    torch.manual_seed(0)
    model = _Normalised().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="NaN or infinite on a perturbed copy of example 0"):
        LayerScoreCam(model, model.conv).attribute(x, 0)
    # Without the zero baseline every perturbed copy is finite.
    assert torch.isfinite(LayerScoreCam(model, model.conv, baseline=None).attribute(x, 0)).all()


class _ByFirstChannel(nn.Module):
    """Divides the layer's output by its first channel's total: switching that channel off
    (Ablation-CAM) makes the score infinite, in the network *after* the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv(x))
        return self.fc(a.mean((2, 3)) / a[:, :1].sum((2, 3)))


def test_non_finite_score_of_a_switched_copy_is_an_error_not_a_fallback() -> None:
    torch.manual_seed(0)
    model = _ByFirstChannel().eval()
    x = torch.rand(1, 3, 8, 8) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falling back to full forward passes" warning
        with pytest.raises(ValueError, match="NaN or infinite on a perturbed copy"):
            METHODS["Ablation-CAM"](model, model.relu).attribute(x, 0)


@pytest.mark.parametrize("method", [PropagationLRP, CLRP, SGLRP], ids=lambda m: m.__name__)
def test_train_mode_lrp_leaves_the_buffers(method: type) -> None:
    torch.manual_seed(15)
    model = _BatchNormDropout().train()
    before = copy.deepcopy(model.state_dict())
    relevance = method(model).attribute(torch.randn(2, 3, 8, 8), target=[0, 3])
    assert torch.isfinite(relevance).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training


def test_a_wrapper_around_an_eval_model_does_not_warn() -> None:
    """A wrapper module made after model.eval() is in training mode by default but has
    nothing of its own that training mode changes: no warning."""

    class Probabilities(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x).softmax(-1)

    net = _BatchNormDropout().eval()
    wrapped = Probabilities(net)
    assert wrapped.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerScoreCam(wrapped, net.features[3]).attribute(torch.randn(2, 3, 8, 8), target=[0, 1])
