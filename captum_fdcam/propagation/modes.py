"""Rules for transformers that change how the forward pass is differentiated.

The engine carries relevance per unit of activation as the gradient (``R = x * g``), so
code without a rule propagates relevance as gradient x input. A :class:`ContextRule` does
not route its module's output through a rule: it changes the autograd graph its module's
forward pass builds, with the same values up to float rounding, and relevance then
follows that graph.
This is how AttnLRP and CP-LRP are written for transformers (LXT's "efficient" mode):

- :class:`NormRule`, for LayerNorm, RMSNorm and GroupNorm (and the subclasses timm and
  Hugging Face use): the standard deviation (RMS) is held constant, so the normalisation
  is a linear map of its input. Gradient x input through it is the epsilon rule
  (epsilon 0): the centring is a linear map, the scaling element-wise; its bias keeps
  ``b * g`` (Achtibat et al., ICML 2024, Proposition 3.4 with the identity rule).
- :class:`AttentionRule`, for attention modules (``softmax(Q K^T / sqrt(d)) V``):
  ``mode="cp"`` (the default) holds the attention weights constant, so all of the output's
  relevance flows through V (CP-LRP: Ali et al., ICML 2022); ``mode="attnlrp"`` keeps the
  softmax's gradient (AttnLRP's softmax rule is its gradient x input, Proposition 3.1) and
  splits each product of two activations uniformly between its factors (Proposition 3.2
  and 3.3: half of the gradient to each factor, so that the relevance of ``A V`` and of
  ``Q K^T`` is conserved).

Both act on the ``torch.nn.functional`` calls inside the module (``layer_norm``,
``group_norm``, ``rms_norm``; ``softmax``, ``scaled_dot_product_attention``, ``matmul`` and
``bmm``) through a ``TorchFunctionMode`` that the engine enters for the module's call only,
in the calling thread: the module's code, weights and other threads are left alone.
Linear layers called as modules inside an attention module (its projections) keep their
own rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import PropagationRule
from torch import Tensor, nn
from torch.nn import Module
from torch.overrides import TorchFunctionMode

AttentionMode = Literal["cp", "attnlrp"]


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose backward pass scales the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x``, with its gradient scaled by ``factor`` in the backward pass."""
    return _ScaleGradient.apply(x, factor)


def _is_activation(value: Any) -> bool:
    """A tensor the relevance flows through: part of the graph, not a parameter."""
    return isinstance(value, Tensor) and value.requires_grad and not isinstance(value, nn.Parameter)


#: Graph nodes walked, at most, to tell a tensor computed from parameters alone.
_PARAMETER_WALK = 16


def _from_parameters(value: Tensor) -> bool:
    """Whether ``value`` is computed from parameters alone (LayerScale's ``gamma.reshape``,
    a group norm's reshaped weight): a short walk of its graph reaches only parameters.
    An activation's graph leads back to the inputs, through many more nodes."""
    stack = [value.grad_fn]
    seen = 0
    while stack:
        node = stack.pop()
        if node is None:
            continue
        seen += 1
        if seen > _PARAMETER_WALK:
            return False
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf
            if not isinstance(variable, nn.Parameter):
                return False
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return True


def _two_activations(args: Sequence[Any]) -> bool:
    """The first two arguments are activations, neither computed from parameters alone."""
    return (
        len(args) >= 2
        and all(_is_activation(a) for a in args[:2])
        and not any(_from_parameters(a) for a in args[:2])
    )


class ContextRule(PropagationRule):
    """A rule that changes how its module's forward pass is differentiated (see the
    module's docstring), instead of routing its output through a rule.

    The engine enters :meth:`context` for each call of the module and leaves it when the
    call returns; modules called inside keep their own rules.
    """

    def context(self, module: Module) -> Any:
        """The context manager the module's call runs in."""
        raise NotImplementedError

    def _manipulate_weights(self, module: Module, inputs: Any, outputs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} changes how the forward pass is differentiated; Captum's "
            "LRP applies rules by rewriting weights, which cannot express it: use this "
            "library's PropagationLRP, FGCam or LayerFGCam."
        )


# ----------------------------------------------------------------------- norms


def _layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps).detach()
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, -1)
    mean = grouped.mean(dim=2, keepdim=True)
    var = grouped.var(dim=2, unbiased=False, keepdim=True)
    y = ((grouped - mean) / torch.sqrt(var + eps).detach()).reshape_as(x)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _rms_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps).detach()
    return y if weight is None else y * weight


_NORMS: dict[Callable[..., Any], Callable[..., Tensor]] = {
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
}
if hasattr(F, "rms_norm"):
    _NORMS[F.rms_norm] = _rms_norm


class _StdConstant(TorchFunctionMode):
    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        replacement = _NORMS.get(func)
        if replacement is not None:
            # The same values up to rounding (the statistic computed by the formula, not
            # the fused kernel), and the graph the rule wants: one pass, not two.
            return replacement(*args, **kwargs)
        return func(*args, **kwargs)


class NormRule(ContextRule):
    """LayerNorm, RMSNorm and GroupNorm with the standard deviation (RMS) held constant:
    relevance is gradient x input of the linear map that remains (centring, scaling, the
    affine weight); the bias keeps its share ``b * g``.

    The module's ``F.layer_norm`` / ``F.group_norm`` / ``F.rms_norm`` calls are computed
    with the statistic detached, so it covers subclasses that permute around them (timm's
    ``LayerNorm2d``, Hugging Face's ``ConvNextLayerNorm``).
    """

    def context(self, module: Module) -> Any:
        return _StdConstant()


# ------------------------------------------------------------------- attention


def _spellings(functions: tuple[Callable[..., Any], ...], methods: tuple[str, ...]) -> set[Any]:
    """What ``__torch_function__`` receives for each spelling of one operation.

    ``x.softmax`` and ``a @ b`` arrive as ``TensorBase``'s methods, not ``Tensor``'s.
    """
    classes = (Tensor, torch._C.TensorBase)
    return set(functions) | {getattr(cls, name) for cls in classes for name in methods}


_SOFTMAX = _spellings((F.softmax, torch.softmax), ("softmax",))
_PRODUCTS = _spellings((torch.matmul, torch.bmm), ("matmul", "__matmul__", "bmm"))


class _AttentionGraph(TorchFunctionMode):
    def __init__(self, mode: AttentionMode) -> None:
        super().__init__()
        self.mode = mode

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            q, k, v, *rest = args
            if self.mode == "cp":
                q, k = q.detach(), k.detach()
            else:
                # softmax(Q K^T) V: A and V halve the product's relevance, Q and K halve A's.
                q, k, v = scale_gradient(q, 0.25), scale_gradient(k, 0.25), scale_gradient(v, 0.5)
            return func(q, k, v, *rest, **kwargs)
        if func in _SOFTMAX:
            out = func(*args, **kwargs)
            return out.detach() if self.mode == "cp" else out
        if func is F.multi_head_attention_forward:
            # Composite: its own softmax runs where this mode cannot see it, so the same
            # attention is written out here (the same values up to rounding).
            return _multi_head_attention(self.mode, *args, **kwargs)
        if self.mode == "attnlrp" and func in _PRODUCTS and len(args) >= 2:
            a, b, *rest = args
            if _is_activation(a) and _is_activation(b):
                a, b = scale_gradient(a, 0.5), scale_gradient(b, 0.5)
            return func(a, b, *rest, **kwargs)
        return func(*args, **kwargs)


def _multi_head_attention(
    mode: AttentionMode,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` written out, with the attention weights as the
    rule wants them: the output (L, N, E) (inputs sequence-first, as the module passes
    them) and, with ``need_weights``, the weights (N, L, S), averaged over the heads
    unless ``average_attn_weights=False`` (N, heads, L, S)."""
    from captum_fdcam.errors import UnsupportedModuleError

    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None:
        raise UnsupportedModuleError(
            "AttentionRule supports nn.MultiheadAttention without bias_k/bias_v, "
            "add_zero_attn or static keys; give this module a rule of your own."
        )
    if (training and dropout_p > 0) or is_causal:
        raise UnsupportedModuleError(
            "AttentionRule supports nn.MultiheadAttention in eval mode without is_causal."
        )
    length, batch, embed = query.shape
    source = key.shape[0]
    head = embed // num_heads
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        assert in_proj_weight is not None
        weights = in_proj_weight.chunk(3)
    biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    q, k, v = (
        F.linear(x, w, b).reshape(x.shape[0], batch * num_heads, head).transpose(0, 1)
        for x, w, b in zip((query, key, value), weights, biases, strict=True)
    )
    scores = (
        torch.bmm(q, k.transpose(1, 2)) / head**0.5
        if mode == "cp"
        else torch.bmm(scale_gradient(q, 0.5), scale_gradient(k, 0.5).transpose(1, 2)) / head**0.5
    )
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dim() == 3 else attn_mask[None]
        scores = (
            scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    if key_padding_mask is not None:
        padding = key_padding_mask.reshape(batch, 1, 1, source)
        padding = padding.expand(batch, num_heads, 1, source).reshape(batch * num_heads, 1, source)
        scores = (
            scores.masked_fill(padding, float("-inf"))
            if padding.dtype == torch.bool
            else scores + padding
        )
    attention = torch.softmax(scores, dim=-1)
    if mode == "cp":
        out = torch.bmm(attention.detach(), v)
    else:
        out = torch.bmm(scale_gradient(attention, 0.5), scale_gradient(v, 0.5))
    out = out.transpose(0, 1).reshape(length, batch, embed)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    if not need_weights:
        return out, None
    weights = attention.detach().reshape(batch, num_heads, length, source)
    return out, weights.mean(dim=1) if average_attn_weights else weights


class AttentionRule(ContextRule):
    """Attention ``softmax(Q K^T / sqrt(d)) V``: how relevance crosses it.

    Args:
        mode: ``"cp"`` (default): the attention weights held constant, all of the
            output's relevance through V (CP-LRP, which LXT recommends inside a ViT's
            attention); ``"attnlrp"``: AttnLRP's softmax rule (its gradient x input) and
            the uniform split of ``A V`` and ``Q K^T`` between their factors.

    It acts on the softmax, ``F.scaled_dot_product_attention`` and the products of two
    activations computed inside the module; its projections (linear layers called as
    modules) keep their own rules, and ``nn.MultiheadAttention``, which computes them in
    ``F.multi_head_attention_forward``, has them as gradient x input (the epsilon rule
    with epsilon 0).
    """

    def __init__(self, mode: AttentionMode = "cp") -> None:
        if mode not in ("cp", "attnlrp"):
            raise ValueError(f"mode must be 'cp' or 'attnlrp', got {mode!r}.")
        self.mode = mode

    def context(self, module: Module) -> Any:
        return _attention_context(self.mode)

    def __repr__(self) -> str:
        return f"AttentionRule(mode={self.mode!r})"


@contextmanager
def _attention_context(mode: AttentionMode) -> Iterator[None]:
    _ATTENTION_DEPTH.value += 1
    try:
        with _AttentionGraph(mode):
            yield
    finally:
        _ATTENTION_DEPTH.value -= 1


class _Depth(threading.local):
    """How many attention (product) contexts the current thread is in."""

    value = 0


_ATTENTION_DEPTH = _Depth()
_PRODUCT_DEPTH = _Depth()


# ------------------------------------------------------------ element-wise products

_ELEMENTWISE_PRODUCTS = _spellings((torch.mul, torch.multiply), ("mul", "__mul__", "__rmul__"))


class _UniformProducts(TorchFunctionMode):
    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ELEMENTWISE_PRODUCTS and _two_activations(args):
            a, b, *rest = args
            return func(scale_gradient(a, 0.5), scale_gradient(b, 0.5), *rest, **kwargs)
        return func(*args, **kwargs)


class ProductRule(ContextRule):
    """Element-wise products of two activations inside the module (a gated MLP's
    ``act(gate) * up``): the uniform rule, half of the product's relevance to each factor
    (AttnLRP, Achtibat et al., ICML 2024, Proposition 3.2; LXT's gated MLP). Products
    with a parameter (LayerScale) are linear and pass as they are.

    The default for timm's ``GluMlp``, ``SwiGLU`` and ``SwiGLUPacked``. A gate block
    (squeeze-and-excitation) is held constant instead, by ``IdentityRule`` on the block.
    """

    def context(self, module: Module) -> Any:
        return _product_context()


@contextmanager
def _product_context() -> Iterator[None]:
    _PRODUCT_DEPTH.value += 1
    try:
        with _UniformProducts():
            yield
    finally:
        _PRODUCT_DEPTH.value -= 1


class OperationGuard(TorchFunctionMode):
    """Refuses a softmax computed outside every attention module's context during a
    propagation's forward pass: a custom attention the engine cannot see, through whose
    softmax relevance would otherwise flow by its plain gradient, silently. Also an
    element-wise product of two activations outside a module with a rule: by its plain
    gradient each factor would receive the whole product's relevance (twice the total).

    Args:
        active: whether the forward pass is being recorded (the propagation's part).
        where: the name of the module being run, for the message.
    """

    def __init__(self, active: Callable[[], bool], where: Callable[[], str]) -> None:
        super().__init__()
        self.active = active
        self.where = where
        #: The first product of two activations met, as the error's message.
        self.problem: str | None = None

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if (
            (func in _SOFTMAX or func is F.scaled_dot_product_attention)
            and _ATTENTION_DEPTH.value == 0
            and self.active()
            and any(_is_activation(a) for a in args)
        ):
            from captum_fdcam.errors import UnsupportedModuleError

            where = self.where()
            raise UnsupportedModuleError(
                f"{where} computes a softmax (attention) outside any module this library "
                "knows as attention: relevance would cross it by its plain gradient. Give "
                "the module that computes the attention the attention rule, "
                "rules={ThatModuleClass: captum_fdcam.propagation.AttentionRule()} (or "
                "module.rule = AttentionRule()), or explain with a CAM."
            )
        if (
            self.problem is None
            and func in _ELEMENTWISE_PRODUCTS
            and _ATTENTION_DEPTH.value == 0
            and _PRODUCT_DEPTH.value == 0
            and self.active()
            and _two_activations(args)
        ):
            # Not raised here: torch turns a TypeError inside ``a * b`` into
            # NotImplemented, and Python into its own bare TypeError. The engine raises
            # it when the module that computed the product returns.
            self.problem = (
                f"{self.where()} multiplies two activations element-wise (a gate or a gated "
                "MLP) outside any module with a rule: by its plain gradient each factor "
                "would receive the whole product's relevance. Give the module that computes "
                "the product a rule: rules={ThatModuleClass: "
                "captum_fdcam.propagation.ProductRule()} to split it evenly between the "
                "factors, or IdentityRule() to hold the gate constant (as for "
                "squeeze-and-excitation)."
            )
        return func(*args, **kwargs)


__all__ = [
    "AttentionRule",
    "ContextRule",
    "NormRule",
    "OperationGuard",
    "ProductRule",
    "scale_gradient",
]
