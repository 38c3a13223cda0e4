"""Property-based tests (hypothesis) of the shared CAM base and the perturbation engine.

Over random input shapes, batch sizes, layer widths, strides, class counts and
per-example targets, every CAM method:

* returns (N, 1, h, w) at the layer's resolution, finite, whose per-channel terms
  (``attr_dim_summation=False``) sum to it;
* gives for a batch what it gives for each example alone, whatever form the targets
  take (list, tensor, one int for all);
* permutes its output when the batch is permuted;
* (perturbation methods) gives the same map for every ``perturbations_per_eval``.

The engine's channel-switching and input-perturbation scores equal plain full forward
passes computed here with a hook of this file, for random switch masks and chunk sizes.

The examples are derandomised (the same on every run) and few, to keep the file fast.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_fdcam import METHODS, LayerAblationCam, LayerScoreCam
from captum_fdcam._core.perturbation import unique_rows
from captum_fdcam._core.validation import select_target_scores, target_rows
from captum_fdcam.registry import cam_names

PERTURBATION = list(cam_names("perturbation", "gradient+perturbation"))

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """conv (stride 1 or 2), ReLU, ``layer`` (conv, signed output), pooled MLP head."""

    def __init__(self, in_channels: int, channels: int, classes: int, stride: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 5, 3, stride=stride, padding=1)
        self.relu = nn.ReLU()
        self.layer = nn.Conv2d(5, channels, 3, padding=1)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * channels, 8),
            nn.Tanh(),
            nn.Linear(8, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(self.relu(self.stem(x))))


class Case:
    """A model, a batch and per-example targets drawn by hypothesis."""

    def __init__(self, draw: st.DrawFn, max_batch: int = 4) -> None:
        self.n = draw(st.integers(1, max_batch), label="batch")
        self.in_channels = draw(st.integers(1, 3), label="input channels")
        self.height = draw(st.integers(3, 14), label="H")
        self.width = draw(st.integers(3, 14), label="W")
        self.stride = draw(st.sampled_from([1, 2]), label="stride")
        self.channels = draw(st.integers(1, 8), label="layer channels")
        self.classes = draw(st.integers(2, 5), label="classes")
        self.targets = draw(
            st.lists(st.integers(0, self.classes - 1), min_size=self.n, max_size=self.n),
            label="targets",
        )
        seed = draw(st.integers(0, 2**16), label="seed")
        torch.manual_seed(seed)
        self.model = Net(self.in_channels, self.channels, self.classes, self.stride)
        self.model = self.model.double().eval()
        self.x = torch.randn(self.n, self.in_channels, self.height, self.width).double()

    @property
    def layer_size(self) -> tuple[int, int]:
        def out(size: int) -> int:
            return (size - 1) // self.stride + 1  # kernel 3, padding 1

        return out(self.height), out(self.width)

    def cam(self, name: str, **options: object) -> object:
        if name == "Group-CAM":  # a 3 x 3 blur fits the smallest images (3 px)
            options = {"blur_kernel_size": 3, "blur_sigma": 1.0, **options}
        return METHODS[name](self.model, self.model.layer, **options)


@st.composite
def cases(draw: st.DrawFn, max_batch: int = 4) -> Case:
    return Case(draw, max_batch)


def fd_options(draw: st.DrawFn, name: str) -> dict[str, object]:
    if name != "FD-CAM":
        return {}
    fraction = draw(st.sampled_from([None, 0.05, 0.5, 1.0]), label="group_fraction")
    return {"group_fraction": fraction, "switch": draw(st.sampled_from(["both", "off"]))}


def assert_close(got: Tensor, expected: Tensor) -> None:
    """Equal up to float64 rounding, relative to the map's largest value."""
    scale = max(expected.abs().max().item(), 1e-300)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9 * scale)


# ---------------------------------------------------------------- the shared base


@SETTINGS
@given(case=cases(), name=st.sampled_from(list(METHODS)), data=st.data())
def test_shape_finite_and_terms(case: Case, name: str, data: st.DataObject) -> None:
    cam = case.cam(name, **fd_options(data.draw, name))
    attr = cam.attribute(case.x, target=case.targets)
    assert attr.shape == (case.n, 1, *case.layer_size)
    assert attr.dtype == torch.float64
    assert torch.isfinite(attr).all()
    terms = cam.attribute(case.x, target=case.targets, attr_dim_summation=False)
    assert terms.shape == (case.n, case.channels, *case.layer_size)  # Group-CAM: K groups
    assert_close(terms.sum(dim=1, keepdim=True), attr)
    relu = cam.attribute(case.x, target=case.targets, relu_attributions=True)
    assert torch.equal(relu, attr.clamp(min=0))


@SETTINGS
@given(case=cases(), name=st.sampled_from(list(METHODS)), data=st.data())
def test_batch_equals_single_examples_for_any_target_form(
    case: Case, name: str, data: st.DataObject
) -> None:
    cam = case.cam(name, **fd_options(data.draw, name))
    batched = cam.attribute(case.x, target=case.targets)
    singles = torch.cat(
        [cam.attribute(case.x[i : i + 1], target=t) for i, t in enumerate(case.targets)]
    )
    assert_close(batched, singles)
    assert_close(cam.attribute(case.x, target=torch.tensor(case.targets)), batched)
    shared = case.targets[0]  # one target for all examples, as an int or a 0-d tensor
    expected = cam.attribute(case.x, target=[shared] * case.n)
    assert_close(cam.attribute(case.x, target=shared), expected)
    assert_close(cam.attribute(case.x, target=torch.tensor(shared)), expected)


@SETTINGS
@given(case=cases(), name=st.sampled_from(list(METHODS)), data=st.data())
def test_permuting_the_batch_permutes_the_output(
    case: Case, name: str, data: st.DataObject
) -> None:
    perm = data.draw(st.permutations(range(case.n)), label="permutation")
    cam = case.cam(name, **fd_options(data.draw, name))
    attr = cam.attribute(case.x, target=case.targets)
    permuted = cam.attribute(case.x[perm], target=[case.targets[i] for i in perm])
    assert_close(permuted, attr[perm])


@SETTINGS
@given(
    case=cases(max_batch=3),
    name=st.sampled_from(PERTURBATION),
    per_eval=st.integers(1, 40),
    data=st.data(),
)
def test_chunking_does_not_change_the_map(
    case: Case, name: str, per_eval: int, data: st.DataObject
) -> None:
    cam = case.cam(name, **fd_options(data.draw, name))
    expected = cam.attribute(case.x, target=case.targets, perturbations_per_eval=10_000)
    got = cam.attribute(case.x, target=case.targets, perturbations_per_eval=per_eval)
    assert_close(got, expected)


# ------------------------------------------------------------ the perturbation engine


def full_forward_scores(case: Case, sample: int, copies: Tensor, probability: bool) -> Tensor:
    """Target scores of whole-model passes with the layer's output replaced by ``copies``."""
    handle = case.model.layer.register_forward_hook(lambda *_: copies.clone())
    try:
        with torch.no_grad():
            out = case.model(case.x[sample : sample + 1].expand(len(copies), -1, -1, -1))
    finally:
        handle.remove()
    if probability:
        out = out.softmax(dim=1)
    return out[:, case.targets[sample]]


@SETTINGS
@given(
    case=cases(max_batch=3),
    per_eval=st.integers(1, 12),
    probability=st.booleans(),
    data=st.data(),
)
def test_switch_scores_equal_full_forward_passes(
    case: Case, per_eval: int, probability: bool, data: st.DataObject
) -> None:
    sample = data.draw(st.integers(0, case.n - 1), label="sample")
    rows = data.draw(
        st.lists(
            st.lists(st.booleans(), min_size=case.channels, max_size=case.channels),
            min_size=1,
            max_size=10,
        ),
        label="keep",
    )
    keep = torch.tensor(rows, dtype=torch.bool)
    score = "probability" if probability else "logit"
    cam = LayerAblationCam(case.model, case.model.layer, score=score)
    (state,) = cam.layer_state(case.x, target=case.targets, perturbations_per_eval=per_eval)
    activation = state.activation[sample]
    reference = state.engine.reference(sample, score)
    got = state.engine.switch_scores(sample, activation, keep, reference, score)
    copies = activation[None] * keep[:, :, None, None].to(activation.dtype)
    expected = full_forward_scores(case, sample, copies, probability)
    assert got.shape == (len(keep),)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(
    case=cases(max_batch=3),
    count=st.integers(0, 15),
    per_eval=st.integers(1, 20),
    data=st.data(),
)
def test_input_scores_equal_full_forward_passes(
    case: Case, count: int, per_eval: int, data: st.DataObject
) -> None:
    sample = data.draw(st.integers(0, case.n - 1), label="sample")
    scales = torch.linspace(-1.0, 2.0, count, dtype=torch.float64)
    image = case.x[sample : sample + 1]
    calls: list[int] = []

    def make_inputs(start: int, stop: int) -> tuple[Tensor, ...]:
        calls.append(stop - start)
        return (image * scales[start:stop, None, None, None],)

    cam = LayerScoreCam(case.model, case.model.layer)
    (state,) = cam.layer_state(case.x, target=case.targets, perturbations_per_eval=per_eval)
    got = state.engine.input_scores(sample, count, make_inputs, "probability")
    with torch.no_grad():
        out = case.model(image * scales[:, None, None, None]).softmax(dim=1)
    torch.testing.assert_close(got, out[:, case.targets[sample]], rtol=1e-9, atol=1e-12)
    assert sum(calls) == count and all(c <= per_eval for c in calls)
    assert len(calls) == -(-count // per_eval)


@SETTINGS
@given(
    shape=st.tuples(st.integers(0, 12), st.integers(1, 4), st.integers(1, 3)),
    values=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_unique_rows_reconstruct_the_rows(
    shape: tuple[int, int, int], values: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, values, shape, generator=generator).double()
    unique, inverse = unique_rows(rows)
    assert torch.equal(unique[inverse], rows)
    assert len(unique) == len({tuple(r.flatten().tolist()) for r in rows})


@SETTINGS
@given(
    n=st.integers(1, 5),
    dims=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    data=st.data(),
)
def test_target_selection_equals_indexing(n: int, dims: list[int], data: st.DataObject) -> None:
    output = torch.randn(n, *dims)
    index = st.tuples(*[st.integers(0, d - 1) for d in dims])
    rows = data.draw(st.lists(index, min_size=n, max_size=n), label="targets")
    expected = torch.stack([output[(i, *row)] for i, row in enumerate(rows)])
    forms: list[object] = [rows]
    if len(dims) == 1:
        forms += [[r[0] for r in rows], torch.tensor([r[0] for r in rows])]
    for target in forms:
        assert target_rows(target, n) == rows
        assert torch.equal(select_target_scores(output, target), expected)
    shared = rows[0] if len(dims) > 1 else rows[0][0]
    assert target_rows(shared, n) == [rows[0]] * n
    assert torch.equal(select_target_scores(output, shared), output[(slice(None), *rows[0])])
