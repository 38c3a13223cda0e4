"""Score-CAM, Ablation-CAM, Group-CAM and FD-CAM against naive computations.

The naive versions run one perturbed forward pass of the whole model per channel
(the layer's output replaced by a hook written here), build FD-CAM's groups with
an explicit loop over the similarity matrix and their own quantile, and never
call the library's engine.
"""

from __future__ import annotations

import collections
import copy
import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution
from conftest import SmallCNN, assert_same_snapshot, model_snapshot
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam import (
    ConstantMapWarning,
    LayerAblationCam,
    LayerFDCam,
    LayerGroupCam,
    LayerScoreCam,
    PerturbationLayerCam,
)
from captum_fdcam.models import efficientnet_lite0

PERTURBATION_METHODS = [LayerScoreCam, LayerAblationCam, LayerGroupCam, LayerFDCam]

# ------------------------------------------------------------ naive helpers


def activation_and_gradient(
    model: nn.Module, layer: nn.Module, x: Tensor, target: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(K, h, w) activations and gradients of one example, and its logits."""
    store: dict[str, Tensor] = {}

    def hook(_: nn.Module, __: object, out: Tensor) -> Tensor:
        store["a"] = out.detach().requires_grad_(True)
        return store["a"].clone()

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out[0, target], store["a"])
    return store["a"].detach()[0], grad[0], out.detach()[0]


def logits_with_layer_output(
    model: nn.Module, layer: nn.Module, x: Tensor, copies: list[Tensor], chunk: int = 64
) -> Tensor:
    """Full forward passes, one per copy, with the layer's output replaced by the copy
    (run as batches of whole-model passes on the repeated input, for speed)."""
    out = []
    for start in range(0, len(copies), chunk):
        batch = torch.stack(copies[start : start + chunk])
        handle = layer.register_forward_hook(lambda *_, b=batch: b.clone())
        try:
            with torch.no_grad():
                out.append(model(x.repeat(len(batch), *[1] * (x.dim() - 1))))
        finally:
            handle.remove()
    return torch.cat(out)


def naive_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def naive_groups(a: Tensor, fraction: float | None) -> list[list[int]]:
    k_channels = a.shape[0]
    if fraction is None:
        return [[k] for k in range(k_channels)]
    flat = a.reshape(k_channels, -1)
    norms = flat.norm(dim=1)
    groups = []
    for k in range(k_channels):
        # row k of the cosine similarity matrix; 0 where a norm is 0
        denominator = norms[k] * norms
        dots = flat @ flat[k]
        row = [
            d / n if n else 0.0 for d, n in zip(dots.tolist(), denominator.tolist(), strict=True)
        ]
        threshold = naive_quantile(row, 1 - fraction)
        groups.append(sorted({k} | {m for m in range(k_channels) if row[m] > threshold}))
    return groups


def naive_min_max(v: Tensor) -> Tensor:
    return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else torch.zeros_like(v)


def naive_fdcam_scores(
    model: nn.Module, layer: nn.Module, x: Tensor, target: int, fraction: float | None, switch: str
) -> Tensor:
    a, _, logits = activation_and_gradient(model, layer, x, target)
    y = logits[target]
    groups = naive_groups(a, fraction)
    off_copies, on_copies = [], []
    for group in groups:
        off, on = a.clone(), torch.zeros_like(a)
        off[group] = 0
        on[group] = a[group]
        off_copies.append(off)
        on_copies.append(on)
    s_off = y - logits_with_layer_output(model, layer, x, off_copies)[:, target]
    if switch == "off":
        return s_off
    s_on = logits_with_layer_output(model, layer, x, on_copies)[:, target]
    return (s_off + s_on) / 2


def naive_fdcam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    target: int,
    fraction: float | None = 0.05,
    switch: str = "both",
    combination: str = "exp",
    bias: float = 0.5,
) -> Tensor:
    a, g, _ = activation_and_gradient(model, layer, x, target)
    s_hat = naive_min_max(naive_fdcam_scores(model, layer, x, target, fraction, switch))
    a_hat = naive_min_max(g.mean(dim=(1, 2)))
    weights = a_hat * (torch.exp(s_hat) if combination == "exp" else s_hat) - bias
    return sum(weights[k] * a[k] for k in range(a.shape[0]))


def naive_ablation(model: nn.Module, layer: nn.Module, x: Tensor, target: int) -> Tensor:
    a, _, logits = activation_and_gradient(model, layer, x, target)
    y = logits[target]
    copies = []
    for k in range(a.shape[0]):
        off = a.clone()
        off[k] = 0
        copies.append(off)
    y_off = logits_with_layer_output(model, layer, x, copies)[:, target]
    return sum((y - y_off[k]) / y * a[k] for k in range(a.shape[0]))


def naive_mask(channel: Tensor, size: tuple[int, int]) -> Tensor:
    up = F.interpolate(channel[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return naive_min_max(up)


def naive_scorecam(
    model: nn.Module, layer: nn.Module, x: Tensor, target: int, baseline: float | None
) -> Tensor:
    a, _, _ = activation_and_gradient(model, layer, x, target)
    with torch.no_grad():
        base = 0.0
        if baseline is not None:
            base = model(torch.full_like(x, baseline)).softmax(-1)[0, target]
        masked = torch.cat([x * naive_mask(a[k], x.shape[-2:]) for k in range(a.shape[0])])
        # one forward pass per masked input (batched 64 at a time for speed)
        probs = torch.cat([model(chunk).softmax(-1)[:, target] for chunk in masked.split(64)])
        return sum((probs[k] - base) * a[k] for k in range(a.shape[0]))


def naive_groupcam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    target: int,
    groups: int,
    kernel: int,
    sigma: float,
) -> Tensor:
    """Group-CAM's map at the input's resolution, as the paper defines it."""
    a, g, _ = activation_and_gradient(model, layer, x, target)
    alpha = g.mean(dim=(1, 2))
    blurred = gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    with torch.no_grad():
        p_blur = model(blurred).softmax(-1)[0, target]
        saliency = torch.zeros(x.shape[-2:], dtype=x.dtype)
        size = a.shape[0] // groups
        for start in range(0, a.shape[0], size):
            r = F.relu(sum(alpha[k] * a[k] for k in range(start, start + size)))
            mask = naive_mask(r, x.shape[-2:])
            x_g = x * mask + blurred * (1 - mask)
            score = F.relu(model(x_g).softmax(-1)[0, target] - p_blur)
            saliency += score * mask
    return F.relu(saliency)


# ------------------------------------------------------------------ models


def _double(model: nn.Module) -> nn.Module:
    return model.double().eval()


@pytest.fixture(scope="module")
def small() -> SmallCNN:
    torch.manual_seed(0)
    return _double(SmallCNN())


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _double(torchvision.models.resnet18(num_classes=10))


@pytest.fixture(scope="module")
def vgg11() -> nn.Module:
    torch.manual_seed(0)
    return _double(torchvision.models.vgg11(num_classes=10))


def _cases(request: pytest.FixtureRequest, names: list[str]) -> list[tuple]:
    layers: dict[str, Callable[[], tuple[nn.Module, nn.Module, Tensor]]] = {
        "small": lambda: (m := request.getfixturevalue("small"), m.features[3], (3, 8, 8)),
        "resnet18.layer4": lambda: (
            m := request.getfixturevalue("resnet18"),
            m.layer4,
            (3, 64, 64),
        ),
        "resnet18.layer3.0.conv1 (in a residual block)": lambda: (
            m := request.getfixturevalue("resnet18"),
            m.layer3[0].conv1,
            (3, 32, 32),
        ),
        "vgg11.features.18 (in-place ReLU after)": lambda: (
            m := request.getfixturevalue("vgg11"),
            m.features[18],
            (3, 32, 32),
        ),
    }
    return [layers[name]() for name in names]


SWITCH_CASES = [
    "small",
    "resnet18.layer4",
    "resnet18.layer3.0.conv1 (in a residual block)",
    "vgg11.features.18 (in-place ReLU after)",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SWITCH_CASES)
def test_fdcam_matches_naive(request: pytest.FixtureRequest, case: str) -> None:
    ((model, layer, shape),) = _cases(request, [case])
    torch.manual_seed(1)
    x = torch.randn(1, *shape, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path must work on all of these
        ours = LayerFDCam(model, layer).attribute(x, target=3)
    torch.testing.assert_close(ours[0, 0], naive_fdcam(model, layer, x, 3), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"group_fraction": None},
        {"switch": "off"},
        {"group_fraction": None, "switch": "off"},
        {"combination": "linear"},
        {"bias": 0.0},
        {"combination": "linear", "bias": 0.0, "group_fraction": 0.2},
    ],
    ids=str,
)
def test_fdcam_ablation_variants_match_naive(small: SmallCNN, options: dict) -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ours = LayerFDCam(small, small.features[3], **options).attribute(x, target=1)
    naive_options = {
        "fraction": options.get("group_fraction", 0.05),
        "switch": options.get("switch", "both"),
        "combination": options.get("combination", "exp"),
        "bias": options.get("bias", 0.5),
    }
    expected = naive_fdcam(small, small.features[3], x, 1, **naive_options)
    torch.testing.assert_close(ours[0, 0], expected, rtol=1e-7, atol=1e-9)


def test_fdcam_probability_scores(small: SmallCNN) -> None:
    torch.manual_seed(3)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    logits = LayerFDCam(small, small.features[3], switch="off").channel_scores(x, 2)

    class Softmax(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x).softmax(-1)

    probability = LayerFDCam(small, small.features[3], switch="off", score="probability")
    expected = LayerFDCam(Softmax(small), small.features[3], switch="off").channel_scores(x, 2)
    torch.testing.assert_close(probability.channel_scores(x, 2), expected)
    assert not torch.allclose(logits, expected)


@pytest.mark.parametrize("group_fraction", [0.25, None])
def test_switch_on_adds_only_the_bias_before_a_pooled_linear_head(
    small: SmallCNN, group_fraction: float | None
) -> None:
    """What the benchmark's ablation at ``head_activation`` rests on: when global pooling
    and one linear layer follow the layer, y_c(only G on) = b_c + (y_c - y_c(G off)), so
    s_k (both switches) = s_k (switch-off) + b_c / 2, and after the min-max of the scores
    FD-CAM and its switch-off-only variant give the same map (to float rounding). Behind
    a non-linear head (SmallCNN's Tanh) they differ."""
    torch.manual_seed(5)
    features = copy.deepcopy(small.features)
    pooled = (
        nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
        .double()
        .eval()
    )
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = [1, 3]
    bias = pooled[-1].bias.detach()[target]

    def both_and_off(model: nn.Module, layer: nn.Module) -> tuple[Tensor, ...]:
        cams = [
            LayerFDCam(model, layer, group_fraction=group_fraction, switch=s)
            for s in ("both", "off")
        ]
        scores = [cam.channel_scores(x, target) for cam in cams]
        maps = [cam.attribute(x, target) for cam in cams]
        return (*scores, *maps)

    both, off, map_both, map_off = both_and_off(pooled, pooled[1])
    torch.testing.assert_close(both, off + bias[:, None] / 2, rtol=1e-12, atol=1e-12)
    assert map_both.abs().amax() > 0
    torch.testing.assert_close(map_both, map_off, rtol=1e-10, atol=1e-12)

    nonlinear = copy.deepcopy(small).double().eval()
    both, off, map_both, map_off = both_and_off(nonlinear, nonlinear.act)
    assert not torch.allclose(map_both, map_off, rtol=1e-3, atol=1e-6)


def test_groups_of_one_and_switch_off_rank_channels_like_ablation_cam(
    resnet18: nn.Module,
) -> None:
    torch.manual_seed(4)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        target = int(resnet18(x).argmax())  # the ranking matches only for a positive score
    fd = LayerFDCam(resnet18, resnet18.layer4, group_fraction=None, switch="off")
    scores = fd.channel_scores(x, target=target)[0]
    per_channel = LayerAblationCam(resnet18, resnet18.layer4).attribute(
        x, target=target, attr_dim_summation=False
    )[0]
    a, _, logits = activation_and_gradient(resnet18, resnet18.layer4, x, target)
    live = a.flatten(1).abs().sum(1) > 0
    ablation_weights = per_channel.flatten(1).sum(1)[live] / a.flatten(1).sum(1)[live]
    assert logits[target] > 0
    assert torch.equal(torch.argsort(scores[live]), torch.argsort(ablation_weights))


@pytest.mark.slow
@pytest.mark.parametrize("case", SWITCH_CASES[:3])
def test_ablation_cam_matches_naive(request: pytest.FixtureRequest, case: str) -> None:
    ((model, layer, shape),) = _cases(request, [case])
    torch.manual_seed(5)
    x = torch.randn(1, *shape, dtype=torch.float64)
    ours = LayerAblationCam(model, layer).attribute(x, target=2)
    torch.testing.assert_close(ours[0, 0], naive_ablation(model, layer, x, 2), rtol=1e-7, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, baseline",
    [("small", 0.0), ("small", None), ("small", -1.0), ("resnet18.layer4", 0.0)],
)
def test_score_cam_matches_naive(
    request: pytest.FixtureRequest, case: str, baseline: float | None
) -> None:
    ((model, layer, shape),) = _cases(request, [case])
    torch.manual_seed(6)
    x = torch.randn(1, *shape, dtype=torch.float64)
    ours = LayerScoreCam(model, layer, baseline=baseline).attribute(x, target=4)
    expected = naive_scorecam(model, layer, x, 4, baseline)
    torch.testing.assert_close(ours[0, 0], expected, rtol=1e-7, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, groups, kernel, sigma",
    [("small", 4, 5, 2.0), ("resnet18.layer4", 32, 51, 50.0)],
)
def test_group_cam_matches_naive_at_input_resolution(
    request: pytest.FixtureRequest, case: str, groups: int, kernel: int, sigma: float
) -> None:
    ((model, layer, shape),) = _cases(request, [case])
    torch.manual_seed(7)
    x = torch.randn(1, *shape, dtype=torch.float64)
    cam = LayerGroupCam(model, layer, groups=groups, blur_kernel_size=kernel, blur_sigma=sigma)
    ours = LayerAttribution.interpolate(cam.attribute(x, target=1), shape[1:], "bilinear")
    expected = naive_groupcam(model, layer, x, 1, groups, kernel, sigma)
    assert expected.max() > 0, "the test needs a non-trivial map"
    torch.testing.assert_close(ours[0, 0], expected, rtol=1e-7, atol=1e-9)


# --------------------------------------------------- batches and the engine


def _methods_for_small() -> list[PerturbationLayerCam]:
    torch.manual_seed(8)
    model = SmallCNN().double().eval()
    layer = model.features[3]
    return [
        LayerScoreCam(model, layer),
        LayerAblationCam(model, layer),
        LayerGroupCam(model, layer, groups=4, blur_kernel_size=5, blur_sigma=2.0),
        LayerFDCam(model, layer, group_fraction=0.2),
    ]


@pytest.mark.parametrize("cam", _methods_for_small(), ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("per_eval", [1, 5, 64])
def test_batch_equals_single_calls(cam: PerturbationLayerCam, per_eval: int) -> None:
    torch.manual_seed(9)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([4, 0, 2])
    batched = cam.attribute(x, target=targets, perturbations_per_eval=per_eval)
    singles = torch.cat([cam.attribute(x[i : i + 1], target=int(t)) for i, t in enumerate(targets)])
    torch.testing.assert_close(batched, singles, rtol=1e-9, atol=1e-12)


class _CountImages:
    """Counts the images a module processes (the batch sizes it sees)."""

    def __init__(self, module: nn.Module) -> None:
        self.images = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, _: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.images += args[0].shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", [LayerAblationCam, LayerFDCam], ids=lambda m: m.__name__)
def test_the_network_before_the_layer_runs_once_per_input(method: type) -> None:
    torch.manual_seed(10)
    resnet = torchvision.models.resnet18().eval()
    effnet = efficientnet_lite0(pretrained=False)
    cases = [
        (resnet, resnet.layer4, resnet.conv1, resnet.layer3),
        (resnet, resnet.layer3[0].conv1, resnet.conv1, resnet.layer2),
        # reads its batch size from the input: x.view(bs, -1)
        (effnet, effnet.head_activation, effnet._conv_stem, effnet._blocks[-1]),
    ]
    x = torch.randn(2, 3, 32, 32)
    for model, layer, first, last_before in cases:
        counters = [_CountImages(first), _CountImages(last_before)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # layer4 and the head are 1 x 1 at 32 px: constant maps, which they say
            warnings.simplefilter("ignore", ConstantMapWarning)
            method(model, layer).attribute(x, target=[1, 2], perturbations_per_eval=16)
        for counter in counters:
            counter.handle.remove()
            assert counter.images == 2


class _Features:
    """A container replay cannot look into (neither tuple, list nor mapping)."""

    def __init__(self, skip: Tensor) -> None:
        self.skip = skip


class _EncoderSkip(nn.Module):
    """A module before the layer returns its features in a container (a dict, as
    torchvision's IntermediateLayerGetter does; a named tuple; or an opaque object),
    and a tensor from it is used again after the layer."""

    def __init__(self, wrap: Callable[[Tensor], object], unwrap: Callable[[object], Tensor]):
        super().__init__()
        self.wrap, self.unwrap = wrap, unwrap
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.encoder = nn.Sequential(self.conv, nn.ReLU())
        self.encode = _Wrap(self.encoder, wrap)
        self.layer = nn.Conv2d(3, 3, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

    def forward(self, x: Tensor) -> Tensor:
        skip = self.unwrap(self.encode(x))
        return self.head(torch.relu(self.layer(skip)) + skip)


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module, wrap: Callable[[Tensor], object]) -> None:
        super().__init__()
        self.inner, self.wrap = inner, wrap

    def forward(self, x: Tensor) -> object:
        return self.wrap(self.inner(x))


_Skip = collections.namedtuple("_Skip", ["skip", "extra"])
CONTAINERS = {
    "dict": (lambda t: {"skip": t}, lambda f: f["skip"]),
    "ordered dict": (lambda t: collections.OrderedDict(skip=t), lambda f: f["skip"]),
    "named tuple": (lambda t: _Skip(t, None), lambda f: f.skip),
    "opaque object": (_Features, lambda f: f.skip),
}


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("method", [LayerAblationCam, LayerFDCam], ids=lambda m: m.__name__)
def test_containers_before_the_layer_replay_per_example(container: str, method: type) -> None:
    """Every example's map is right, not only the first's: a container's tensor must be
    expanded to the copies of *its* example (4 examples = K + 1 rows: the batch's own rows
    would fit the copies' shape)."""
    wrap, unwrap = CONTAINERS[container]
    torch.manual_seed(13)
    model = _EncoderSkip(wrap, unwrap).double().eval()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    targets = [2, 0, 4, 1]
    counter = _CountImages(model.conv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = method(model, model.layer).attribute(x, target=targets, perturbations_per_eval=4)
    counter.handle.remove()
    for i, t in enumerate(targets):
        naive = naive_ablation if method is LayerAblationCam else naive_fdcam
        expected = naive(model, model.layer, x[i : i + 1], t)
        torch.testing.assert_close(ours[i, 0], expected, rtol=1e-7, atol=1e-9)
    # The convolution before the layer sees each image once: the opaque container's
    # module runs again for the copies, on its children's recorded outputs.
    assert counter.images == 4


class _InPlaceSkip(nn.Module):
    """Writes in place into a tensor computed before the layer and used after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        a = self.layer(h)
        return self.fc((a + h.mul_(2.0)).mean((2, 3)))


def test_falls_back_to_full_forward_passes_with_one_warning() -> None:
    torch.manual_seed(11)
    model = _InPlaceSkip().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falling back to full forward passes") as record:
        ours = LayerAblationCam(model, model.layer).attribute(x, target=[0, 2])
    assert len([w for w in record if "falling back" in str(w.message)]) == 1
    for i, t in enumerate([0, 2]):
        expected = naive_ablation(model, model.layer, x[i : i + 1], t)
        torch.testing.assert_close(ours[i, 0], expected, rtol=1e-7, atol=1e-9)


def test_identical_masks_are_evaluated_once() -> None:
    torch.manual_seed(12)
    model = SmallCNN().eval()
    with torch.no_grad():  # four dead channels: all-zero activations, all-zero masks
        model.features[3].weight[:4] = 0
        model.features[3].bias[:4] = -1
    layer = nn.Sequential(model.features[3], nn.ReLU())
    model.features[3] = layer
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        a = layer(model.features[:3](x))[0]
    constant = [k for k in range(len(a)) if a[k].max() == a[k].min()]
    assert len(constant) >= 4
    distinct = {tuple(a[k].flatten().tolist()) for k in range(len(a)) if k not in constant}
    counter = _CountImages(model.head)
    LayerScoreCam(model, layer).attribute(x, target=0)
    counter.handle.remove()
    # reference pass + baseline + one masked input per distinct mask (all zero: one)
    assert counter.images == 1 + 1 + len(distinct) + 1


def test_perturbations_per_eval_bounds_each_forward_call() -> None:
    torch.manual_seed(13)
    model = SmallCNN().eval()
    sizes: list[int] = []
    handle = model.head.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    LayerScoreCam(model, model.features[3], baseline=None).attribute(
        torch.randn(1, 3, 8, 8), 0, perturbations_per_eval=5
    )
    handle.remove()
    assert sizes == [1, 5, 5, 2]


def test_show_progress(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(14)
    model = SmallCNN().eval()
    LayerFDCam(model, model.features[3]).attribute(
        torch.randn(2, 3, 8, 8), [0, 1], show_progress=True
    )
    err = capsys.readouterr().err
    assert "FD-CAM" in err and "48/48" in err


@pytest.mark.parametrize("cam", _methods_for_small(), ids=lambda c: type(c).__name__)
def test_model_and_input_unchanged(cam: PerturbationLayerCam) -> None:
    model = cam.forward_func
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x_before = x.clone()
    before = model_snapshot(model)
    cam.attribute(x, target=[1, 2], perturbations_per_eval=7)
    assert_same_snapshot(before, model_snapshot(model))
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("method", PERTURBATION_METHODS, ids=lambda m: m.__name__)
def test_model_unchanged_when_a_perturbed_pass_raises(method: type) -> None:
    torch.manual_seed(15)
    model = SmallCNN().eval()
    calls = {"n": 0}

    def explode_after_first_call(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("boom")

    model.head[1].register_forward_hook(explode_after_first_call)
    before = model_snapshot(model)
    kwargs = {"blur_kernel_size": 5} if method is LayerGroupCam else {}
    with pytest.raises(RuntimeError, match="boom"):
        method(model, model.features[3], **kwargs).attribute(torch.randn(1, 3, 8, 8), 0)
    assert_same_snapshot(before, model_snapshot(model))
    assert len(torch.nn.modules.module._global_forward_hooks) == 0
    assert len(torch.nn.modules.module._global_forward_pre_hooks) == 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: LayerFDCam(m, m.features[3], group_fraction=0.0), "group_fraction"),
        (lambda m: LayerFDCam(m, m.features[3], switch="on"), "switch"),
        (lambda m: LayerFDCam(m, m.features[3], combination="sum"), "combination"),
        (lambda m: LayerAblationCam(m, m.features[3], score="prob"), "score"),
        (lambda m: LayerGroupCam(m, m.features[3], groups=0), "groups"),
        (lambda m: LayerGroupCam(m, m.features[3], blur_kernel_size=4), "odd"),
    ],
)
def test_bad_options(make: Callable[[nn.Module], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(SmallCNN())


def test_bad_perturbations_per_eval_and_inputs() -> None:
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        LayerAblationCam(model, model.features[3]).attribute(
            torch.randn(1, 3, 8, 8), 0, perturbations_per_eval=0
        )

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN()

        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return self.net(x + y)

    two = TwoInputs().eval()
    with pytest.raises(ValueError, match="single image input"):
        LayerScoreCam(two, two.net.features[3]).attribute(
            (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)), 0
        )
