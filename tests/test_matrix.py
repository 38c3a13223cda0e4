"""One parametrised matrix: every method x model x layer kind x batch size x target form.

Each case runs one attribution on a model with random weights (eval mode, seeded,
batch-norm statistics randomised) and checks that it

* returns a finite float32 map of the right shape, non-negative with
  ``relu_attributions=True``: (N, 1, h, w) at the layer for a CAM and for
  :class:`LayerFGCam`, (N, 1, H, W) for :class:`FGCam`, the input's shape for LRP;
* leaves the model unchanged: ``state_dict`` bit for bit, the same parameter
  objects with ``requires_grad`` as before and no ``.grad``, the ``training``
  flags, no new module attributes;
* leaves the input unchanged: bit for bit, its ``requires_grad``, no ``.grad``;
* leaves no hooks: none on any module (forward, forward-pre, backward,
  backward-pre), none on the parameters or the input, no global module hooks,
  and grad mode as it was.

Methods: the eight CAMs of :data:`captum_fdcam.METHODS` at the layer; FG-CAM at the
input (:class:`FGCam`) over each of them and over Captum's own ``LayerGradCam``
(nine bases); FG-CAM at a shallower layer (:class:`LayerFGCam`) over the same nine
bases, with the base at the last conv and the map at the model's ``fg_layer``
(the ``in_residual`` layer, the inner block where there is none); LRP, CLRP and
SGLRP at the input.

Models: the small CNN of ``conftest.py``, torchvision's VGG11-BN, ResNet-18,
MobileNetV2 and DenseNet-121 (10 classes each), and EfficientNet-Lite0 (1000 classes). VGG11-BN's
classifier is replaced by one of the same layers (Linear, in-place ReLU, Dropout)
but 64 wide instead of 4096, else its 120 M multiply-adds per image would dominate
every perturbation method.

Layer kinds (channels, h x w for the inputs used here):

============  ======================  =====================  ===========================
model         ``last_conv``           ``inner_block``        ``in_residual``
============  ======================  =====================  ===========================
small CNN     features.3 (12, 16x16)  features.0 (8, 32x32)  none: skipped, with reason
VGG11-BN      features.25 (512, 2x2)  features.10 (256, 8x8) none: skipped, with reason
ResNet-18     layer4.1.conv2 (512,    layer2 (128, 4x4)      layer3.1.conv2 (256, 2x2)
              1x1)
MobileNetV2   features.18.0 (1280,    features.10 (64, 2x2)  features.3.conv.2 (24, 8x8),
              1x1)                                           projection of a block with skip
DenseNet-121  denseblock4.denselayer  transition1 (128,      denseblock2.denselayer3.conv2
              16.conv2 (32, 1x2)      4x8)                   (32, 4x8)
EffNet-Lite0  head_activation (1280,  _blocks.4 (40, 4x4)    _blocks.9._project_conv
              1x1)                                           (112, 2x2), block with skip
============  ======================  =====================  ===========================

Inputs are 32 x 32 (32 x 64 for DenseNet); on ResNet-18, MobileNetV2 and
EfficientNet-Lite0 the last conv is then 1 x 1, the degenerate case of one value
per channel (Score-CAM's masks are all constant), non-degenerate everywhere else.
DenseNet's inner block is ``transition1`` rather than ``denseblock2``, whose 512
channels would triple the file's perturbation cost on DenseNet.

Batch size and target form are folded into four combinations: (1, int), (3, int),
(3, list) and (3, tensor), the last one with an input that requires grad.

Reductions, to keep the file's run time in budget (``combos_for``; checked by
``test_every_variant_meets_every_combination``):

* the four gradient CAMs, and LRP/CLRP/SGLRP, run all four combinations in
  every cell;
* FG-CAM over a gradient base runs two of them per cell, alternating between
  {(1, int), (3, tensor)} and {(3, int), (3, list)};
* the perturbation methods (Score-CAM, Ablation-CAM, Group-CAM, FD-CAM), alone or
  as the base of FG-CAM, run one combination per cell, rotating over the four
  across the cells, so each method still meets every combination; at the
  ``heavy`` layers (VGG11-BN's last conv and inner block, DenseNet's inner block:
  hundreds of channels, each a forward pass of most of the network) they run
  (1, int) only. They get ``perturbations_per_eval=256``.

That is 741 cases (34 of them the skipped ``in_residual`` cells): about 130 s
on the 2-core runner under load, about 95 s of CPU time.

The cells of every model but the small CNN are marked ``slow`` (``SLOW_MODELS``):
``pytest -m "not slow"`` keeps the small CNN's, which meet every method and variant.

Also: a batch equals the per-image calls for one cheap setting per model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam as CaptumLayerGradCam
from captum.attr._utils.lrp_rules import IdentityRule
from conftest import SmallCNN
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from captum_fdcam import CLRP, METHODS, SGLRP, FeatureMapError, FGCam, LayerFGCam, PropagationLRP
from captum_fdcam.registry import cam_names

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- models


def _vgg11_bn() -> nn.Module:
    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )
    return model


def _efficientnet_lite0() -> nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch")
    from captum_fdcam.models import efficientnet_lite0

    return efficientnet_lite0(pretrained=False)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model, what to feed it, and which layers to explain.

    ``layers`` maps a layer kind to the layer's path; a kind missing from it is
    explained by ``missing``. ``fg_layer`` is where :class:`LayerFGCam` explains,
    a layer called before the last conv. At the ``heavy`` layer kinds, the
    perturbation methods run one image only.
    """

    build: Callable[[], nn.Module]
    input_size: tuple[int, int]
    num_classes: int
    layers: dict[str, str]
    fg_layer: str
    missing: dict[str, str]
    heavy: frozenset[str] = frozenset()


NO_RESIDUAL = "{} has no residual block"

MODELS: dict[str, ModelSpec] = {
    # conftest's SmallCNN with 10 classes (the target forms use classes up to 9), at 32 px
    # (Group-CAM's default blur needs 26 px or more).
    "small_cnn": ModelSpec(
        lambda: SmallCNN(num_classes=10, image_size=32),
        (32, 32),
        10,
        {"last_conv": "features.3", "inner_block": "features.0"},
        "features.0",
        {"in_residual": NO_RESIDUAL.format("the small CNN")},
    ),
    "vgg11_bn": ModelSpec(
        _vgg11_bn,
        (32, 32),
        10,
        {"last_conv": "features.25", "inner_block": "features.10"},
        "features.10",
        {"in_residual": NO_RESIDUAL.format("VGG11-BN")},
        # 512 channels at 2 x 2 (256 at 8 x 8): Score-CAM costs 512 (256) forward
        # passes per image, FD-CAM 1024 (512) passes of the rest of the network.
        heavy=frozenset({"last_conv", "inner_block"}),
    ),
    "resnet18": ModelSpec(
        lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        (32, 32),
        10,
        {"last_conv": "layer4.1.conv2", "inner_block": "layer2", "in_residual": "layer3.1.conv2"},
        "layer3.1.conv2",
        {},
    ),
    "mobilenet_v2": ModelSpec(
        lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
        (32, 32),
        10,
        # features[3] is an InvertedResidual with a skip; conv[2] its projection.
        {
            "last_conv": "features.18.0",
            "inner_block": "features.10",
            "in_residual": "features.3.conv.2",
        },
        "features.3.conv.2",
        {},
    ),
    "densenet121": ModelSpec(
        lambda: torchvision.models.densenet121(weights=None, num_classes=10),
        (32, 64),
        10,
        {
            "last_conv": "features.denseblock4.denselayer16.conv2",
            "inner_block": "features.transition1",
            "in_residual": "features.denseblock2.denselayer3.conv2",
        },
        "features.denseblock2.denselayer3.conv2",
        {},
        heavy=frozenset({"inner_block"}),  # 128 channels at 4 x 8, most of DenseNet after
    ),
    "efficientnet_lite0": ModelSpec(
        _efficientnet_lite0,
        (32, 32),
        1000,
        # _blocks.9 (112 -> 112 channels, stride 1) adds its input to its output.
        {
            "last_conv": "head_activation",
            "inner_block": "_blocks.4",
            "in_residual": "_blocks.9._project_conv",
        },
        "_blocks.9._project_conv",
        {},
    ),
}

KINDS = ("last_conv", "inner_block", "in_residual")


def _randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and running statistics, so batch norm is not ~identity."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                k = module.num_features
                module.weight.copy_(0.5 + torch.rand(k, generator=generator))
                module.bias.copy_(0.1 * torch.randn(k, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(k, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(k, generator=generator))


# ------------------------------------------------------------- what must not change


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """The tensor's bits as integers of its width: equal iff bit-for-bit equal."""
    return t.detach().contiguous().reshape(-1).view(_SAME_WIDTH_INT[t.element_size()])


def _hook_leaks(model: nn.Module) -> list[str]:
    """Every hook left on the model's modules and parameters, and every global one."""
    leaks = []
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks_with_kwargs",
        ):
            if getattr(module, attr, None):
                leaks.append(f"{name or 'model'}.{attr}")
    for name, p in model.named_parameters():
        if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
            leaks.append(f"parameter {name}")
    for attr in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
        "_global_forward_hooks_with_kwargs",
        "_global_forward_hooks_always_called",
    ):
        if getattr(module_globals, attr, None):
            leaks.append(f"torch.nn.modules.module.{attr}")
    return leaks


@dataclass
class Prepared:
    """A built model, what it looked like when built, and its layers' output sizes."""

    name: str
    spec: ModelSpec
    model: nn.Module
    state: dict[str, Tensor]
    parameters: dict[str, nn.Parameter]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    attributes: dict[str, frozenset[str]]
    sizes: dict[str, tuple[int, int]]

    def layer(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def assert_unchanged(self) -> None:
        model = self.model
        try:
            state = model.state_dict()
            assert state.keys() == self.state.keys()
            for key, value in state.items():
                before = self.state[key]
                assert value.dtype == before.dtype and value.shape == before.shape, key
                assert torch.equal(_bits(value), _bits(before)), f"state_dict[{key!r}] changed"
            parameters = dict(model.named_parameters())
            assert parameters.keys() == self.parameters.keys()
            for name, p in parameters.items():
                assert p is self.parameters[name], f"parameter {name} replaced"
                assert p.requires_grad == self.requires_grad[name], f"{name}.requires_grad"
                assert p.grad is None, f"{name}.grad set"
            assert {n: m.training for n, m in model.named_modules()} == self.training
            attributes = {n: frozenset(vars(m)) for n, m in model.named_modules()}
            assert attributes == self.attributes, "module attributes added or removed"
            assert _hook_leaks(model) == []
        except AssertionError:
            self.restore()
            raise

    def restore(self) -> None:
        """Puts the model back as built, so one failing case does not fail the next."""
        self.model.load_state_dict(self.state)
        for name, module in self.model.named_modules():
            module.training = self.training[name]
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.requires_grad[name])
            p.grad = None


def _prepare(name: str) -> Prepared:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    _randomise_batch_norm(model, torch.Generator().manual_seed(1))
    sizes: dict[str, tuple[int, int]] = {}

    def record(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
            sizes[path] = tuple(out.shape[2:])

        return hook

    paths = set(spec.layers.values()) | {spec.fg_layer}
    handles = [model.get_submodule(path).register_forward_hook(record(path)) for path in paths]
    try:
        with torch.no_grad():
            logits = model(torch.randn(2, 3, *spec.input_size))
    finally:
        for handle in handles:
            handle.remove()
    assert logits.shape == (2, spec.num_classes)
    assert torch.isfinite(logits).all()
    return Prepared(
        name=name,
        spec=spec,
        model=model,
        state={k: v.clone() for k, v in model.state_dict().items()},
        parameters=dict(model.named_parameters()),
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        training={n: m.training for n, m in model.named_modules()},
        attributes={n: frozenset(vars(m)) for n, m in model.named_modules()},
        sizes=sizes,
    )


@pytest.fixture(scope="module")
def zoo() -> Iterator[Callable[[str], Prepared]]:
    """Builds each model once for the module, on first use."""
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            cache[name] = _prepare(name)
        return cache[name]

    yield get
    cache.clear()


# ------------------------------------------------------------ batches and targets


@dataclass(frozen=True)
class Combo:
    """A batch size, a target form and whether the input requires grad."""

    batch: int
    form: str
    input_requires_grad: bool = False

    @property
    def id(self) -> str:
        return f"b{self.batch}-{self.form}" + ("-rg" if self.input_requires_grad else "")

    def target(self, num_classes: int) -> int | list[int] | Tensor:
        last = num_classes - 1
        if self.form == "int":
            return 3 if self.batch == 1 else last
        if self.form == "list":
            return [0, last, 5][: self.batch]
        return torch.tensor([last, 2, 2][: self.batch])

    def classes(self, num_classes: int) -> list[int]:
        target = self.target(num_classes)
        if isinstance(target, int):
            return [target] * self.batch
        return [int(t) for t in target]


COMBOS = (
    Combo(1, "int"),
    Combo(3, "int"),
    Combo(3, "list"),
    Combo(3, "tensor", input_requires_grad=True),
)


def make_input(spec: ModelSpec, combo: Combo, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(combo.batch, 3, *spec.input_size, generator=generator)
    return x.requires_grad_(combo.input_requires_grad)


# -------------------------------------------------------------------------- methods

CAPTUM_GRAD_CAM = "captum.LayerGradCam"
BASES = [*METHODS, CAPTUM_GRAD_CAM]


def _base_class(base: str) -> type:
    return CaptumLayerGradCam if base == CAPTUM_GRAD_CAM else METHODS[base]


def _perturbs(base: str) -> bool:
    return bool(getattr(_base_class(base), "uses_perturbations", False))


@dataclass(frozen=True)
class Variant:
    """A base CAM used at its layer (``where='layer'``) or under FG-CAM."""

    base: str
    where: str  # "layer", "input" (FGCam) or "fg_layer" (LayerFGCam)

    @property
    def id(self) -> str:
        if self.where == "layer":
            return self.base
        return f"{'FGCam' if self.where == 'input' else 'LayerFGCam'}.{self.base}"

    def kinds(self) -> tuple[str, ...]:
        # LayerFGCam starts at the last conv and explains the spec's fg_layer.
        return ("last_conv",) if self.where == "fg_layer" else KINDS


VARIANTS = [
    *(Variant(base, "layer") for base in METHODS),
    *(Variant(base, "input") for base in BASES),
    *(Variant(base, "fg_layer") for base in BASES),
]


def combos_for(variant: Variant, cell: int, heavy: bool) -> tuple[Combo, ...]:
    """The batch/target combinations a cell runs (the reductions of the docstring)."""
    if _perturbs(variant.base):
        return (COMBOS[0],) if heavy else (COMBOS[cell % len(COMBOS)],)
    if variant.where == "layer":
        return COMBOS
    return (COMBOS[0], COMBOS[3]) if cell % 2 == 0 else (COMBOS[1], COMBOS[2])


#: Models whose matrix cells are ``slow``: the fast subset keeps the small CNN's cells,
#: every method and variant once, in about 3 % of the matrix's time.
SLOW_MODELS = frozenset(MODELS) - {"small_cnn"}


def _models() -> list[Any]:
    """Every model name, the ones of ``SLOW_MODELS`` marked slow."""
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_MODELS else name
        for name in MODELS
    ]


def _case(model_name: str, kind: str, variant: Variant, combo: Combo, *marks: Any) -> Any:
    ident = f"{model_name}-{kind}-{variant.id}-{combo.id}"
    if model_name in SLOW_MODELS:
        marks = (*marks, pytest.mark.slow)
    return pytest.param(model_name, kind, variant, combo, id=ident, marks=marks)


def _matrix() -> list[Any]:
    cases = []
    for m, (model_name, spec) in enumerate(MODELS.items()):
        for v, variant in enumerate(VARIANTS):
            for k, kind in enumerate(variant.kinds()):
                if kind in spec.missing:
                    skip = pytest.mark.skip(reason=spec.missing[kind])
                    cases.append(_case(model_name, kind, variant, COMBOS[0], skip))
                    continue
                for combo in combos_for(variant, m + v + k, kind in spec.heavy):
                    cases.append(_case(model_name, kind, variant, combo))
    return cases


def build_attribution(
    variant: Variant, prepared: Prepared, kind: str
) -> tuple[Any, tuple[int, ...]]:
    """The attribution object of ``variant`` and the (h, w) of the map it returns."""
    spec = prepared.spec
    path = spec.layers[kind]
    base = _base_class(variant.base)(prepared.model, prepared.layer(path))
    if variant.where == "layer":
        return base, prepared.sizes[path]
    if variant.where == "input":
        return FGCam(base), spec.input_size
    return LayerFGCam(base, prepared.layer(spec.fg_layer)), prepared.sizes[spec.fg_layer]


def run_and_check(
    prepared: Prepared,
    attribute: Callable[..., Any],
    combo: Combo,
    expected_shape: tuple[int, ...],
    seed: int,
    **kwargs: Any,
) -> Tensor:
    """Runs ``attribute`` and checks everything the module docstring lists."""
    spec = prepared.spec
    x = make_input(spec, combo, seed)
    x_bits = _bits(x).clone()
    grad_mode = torch.is_grad_enabled()

    attr = attribute(x, target=combo.target(spec.num_classes), **kwargs)

    assert torch.is_grad_enabled() == grad_mode
    assert isinstance(attr, Tensor), type(attr)
    assert attr.shape == expected_shape
    assert attr.dtype == torch.float32
    assert torch.isfinite(attr).all(), "non-finite attributions"
    assert torch.equal(_bits(x), x_bits), "the input was modified"
    assert x.requires_grad == combo.input_requires_grad
    assert x.grad is None and not x._backward_hooks
    prepared.assert_unchanged()
    return attr


MATRIX = _matrix()


def test_every_variant_meets_every_combination() -> None:
    """The reductions keep every method x model x layer cell and every combination."""
    cells: dict[tuple[str, str, str], set[str]] = {}
    combos: dict[str, set[str]] = {}
    for case in MATRIX:
        model_name, kind, variant, combo = case.values
        cells.setdefault((model_name, kind, variant.id), set()).add(combo.id)
        if not any(mark.name == "skip" for mark in case.marks):
            combos.setdefault(variant.id, set()).add(combo.id)
    assert len(cells) == sum(len(MODELS) * len(v.kinds()) for v in VARIANTS)
    assert all(found == {c.id for c in COMBOS} for found in combos.values()), combos


@pytest.mark.parametrize(("model_name", "kind", "variant", "combo"), MATRIX)
def test_matrix(
    zoo: Callable[[str], Prepared], model_name: str, kind: str, variant: Variant, combo: Combo
) -> None:
    prepared = zoo(model_name)
    attribution, size = build_attribution(variant, prepared, kind)
    kwargs: dict[str, Any] = {"relu_attributions": True}
    if _perturbs(variant.base):
        kwargs["perturbations_per_eval"] = 256
    if variant.base in MASKING and prepared.sizes[prepared.spec.layers[kind]] == (1, 1):
        # Every mask of a 1 x 1 map is empty, every weight 0: a clear error rather than
        # the all-zero map these cells gave before.
        x = make_input(prepared.spec, combo, combo.batch)
        with pytest.raises(FeatureMapError, match="1 x 1"):
            attribution.attribute(x, target=combo.target(prepared.spec.num_classes), **kwargs)
        prepared.assert_unchanged()
        return
    attr = run_and_check(
        prepared, attribution.attribute, combo, (combo.batch, 1, *size), seed=combo.batch, **kwargs
    )
    assert (attr >= 0).all()


#: The CAMs that mask the input with the layer's channel maps.
MASKING = frozenset({"Score-CAM", "Group-CAM"})
LRP_METHODS = {"LRP": PropagationLRP, "CLRP": CLRP, "SGLRP": SGLRP}
#: The small CNN's Tanh has no default LRP rule: relevance passes it unchanged, the way
#: Captum's LRP is given a rule for such a module. No other model has a Tanh.
LRP_RULES = {nn.Tanh: IdentityRule}


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: c.id)
@pytest.mark.parametrize("method", list(LRP_METHODS))
@pytest.mark.parametrize("model_name", _models())
def test_lrp_matrix(
    zoo: Callable[[str], Prepared], model_name: str, method: str, combo: Combo
) -> None:
    prepared = zoo(model_name)
    lrp = LRP_METHODS[method](prepared.model, rules=LRP_RULES)
    run_and_check(
        prepared,
        lrp.attribute,
        combo,
        (combo.batch, 3, *prepared.spec.input_size),
        seed=combo.batch,
    )


# ------------------------------------------------------------- batch = per image

BATCH_METHODS = list(cam_names("gradient"))


@pytest.mark.parametrize("model_name", _models())
def test_batch_equals_per_image_calls(zoo: Callable[[str], Prepared], model_name: str) -> None:
    """The gradient CAMs and FG-CAM over Grad-CAM, at the inner block, batch vs one by one."""
    prepared = zoo(model_name)
    spec = prepared.spec
    combo = COMBOS[3]
    layer = prepared.layer(spec.layers["inner_block"])
    attributions = [METHODS[name](prepared.model, layer) for name in BATCH_METHODS]
    attributions.append(FGCam(METHODS["Grad-CAM"](prepared.model, layer)))
    x = make_input(spec, combo, seed=7).detach()
    classes = combo.classes(spec.num_classes)
    for attribution in attributions:
        batched = attribution.attribute(x, target=torch.tensor(classes))
        singles = torch.cat(
            [attribution.attribute(x[i : i + 1], target=c) for i, c in enumerate(classes)]
        )
        scale = singles.abs().max().item()
        torch.testing.assert_close(
            batched, singles, rtol=1e-3, atol=1e-4 * scale, msg=type(attribution).__name__
        )
    prepared.assert_unchanged()
