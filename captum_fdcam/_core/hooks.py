"""Forward hooks that capture a layer's activations for the CAM methods.

Written once here so that every method sees the same activations: the layer's
true output (or input), detached from the graph before the layer and made a leaf
that requires grad, so that gradients stop at the layer and are computed even for
frozen models and under ``torch.no_grad()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.utils.hooks import RemovableHandle

from captum_fdcam._core.layout import FeatureLayout
from captum_fdcam.errors import FeatureMapError, LayerError


def _as_tensor_tuple(value: Any, layer_name: str, where: str) -> tuple[tuple[Tensor, ...], bool]:
    """Splits a layer's output (or its positional inputs) into a tuple of tensors.

    Returns the tensors and whether ``value`` was a single tensor.
    """
    if isinstance(value, Tensor):
        return (value,), True
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, Tensor) for v in value):
        return tuple(value), False
    raise TypeError(
        f"The {where} of layer {layer_name} must be a tensor or a tuple of tensors, "
        f"got {type(value).__name__}."
    )


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook``, acting only on the forward passes of the thread that wraps it.

    Module hooks see every thread's calls of the module (process-wide hooks, every
    module's): an attribution's hooks must leave other threads' forward passes alone,
    plain inference on the same model or another attribution alike.
    """
    thread = threading.get_ident()

    def guarded(*args: Any) -> Any:
        return hook(*args) if threading.get_ident() == thread else None

    return guarded


class LayerCapture:
    """Context manager recording the activations of ``layer`` during one forward pass.

    Args:
        layer: the module whose output (or input) is captured.
        layer_name: name used in error messages.
        attribute_to_layer_input: capture the layer's positional inputs instead of
            its output.
        requires_grad: make the captured activations leaves that require grad, so
            that ``torch.autograd.grad(score, capture.activations)`` works.
        replace: optional function mapping the captured activations to the tensors
            handed to the rest of the network (used by perturbation methods). By
            default the rest of the network gets a copy of the activations.
        layout: how the captured tensors become (N, C, H, W) feature maps (the
            ``reshape_transform``); by default they must be 4-D already.

    After the ``with`` block, :attr:`activations` holds the captured tensors in
    the layer's own layout, each checked by ``layout`` to give a feature map. The
    hook is removed when the block exits, also on error.
    """

    def __init__(
        self,
        layer: Module,
        layer_name: str,
        attribute_to_layer_input: bool = False,
        requires_grad: bool = True,
        replace: Callable[[tuple[Tensor, ...]], Sequence[Tensor]] | None = None,
        layout: FeatureLayout | None = None,
    ) -> None:
        self.layer = layer
        self.layer_name = layer_name
        self.attribute_to_layer_input = attribute_to_layer_input
        self.requires_grad = requires_grad
        self.replace = replace
        self.layout = layout or FeatureLayout(None, layer_name)
        self.calls = 0
        self._activations: tuple[Tensor, ...] | None = None
        self._handle: RemovableHandle | None = None

    @property
    def activations(self) -> tuple[Tensor, ...]:
        if self._activations is None:
            raise LayerError(
                f"Layer {self.layer_name} was not called during the forward pass: "
                "choose a module that the model actually runs."
            )
        return self._activations

    def _capture(self, value: Any, where: str) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise LayerError(
                f"Layer {self.layer_name} is called more than once in one forward pass; "
                "a CAM needs a layer that runs once (modules shared by several parts of "
                "the network, e.g. one activation module reused, cannot be explained): "
                "choose another layer or give that call its own module."
            )
        tensors, single = _as_tensor_tuple(value, self.layer_name, where)
        if self.layout.transform is not None and len(tensors) != 1:
            raise FeatureMapError(
                f"The {where} of layer {self.layer_name} is {len(tensors)} tensors; "
                "reshape_transform applies to a layer with a single output (input)."
            )
        for t in tensors:
            self.layout.check(t, where)
        # Detaching stops gradients at the layer; the leaf shares storage with the
        # layer's true output, which nothing else holds: the network downstream gets
        # a separate tensor, so an in-place op after the layer cannot overwrite it.
        if self.requires_grad:
            # The caller runs the layers before this one without a graph; the rest of
            # the forward pass needs one. The caller's grad-mode context restores it.
            torch.set_grad_enabled(True)
        leaves = tuple(t.detach().requires_grad_(self.requires_grad) for t in tensors)
        self._activations = leaves
        if self.replace is not None:
            passed = tuple(self.replace(leaves))
        else:
            passed = tuple(leaf.clone() for leaf in leaves)
        if single:
            return passed[0]
        return type(value)(passed) if isinstance(value, list) else passed

    def _forward_hook(self, module: Module, args: Any, output: Any) -> Any:
        return self._capture(output, "output")

    def _forward_pre_hook(self, module: Module, args: tuple[Any, ...]) -> Any:
        replaced = self._capture(args, "input")
        return replaced if isinstance(replaced, tuple) else (replaced,)

    def __enter__(self) -> LayerCapture:
        if self.attribute_to_layer_input:
            hook = this_thread_only(self._forward_pre_hook)
            self._handle = self.layer.register_forward_pre_hook(hook)
        else:
            self._handle = self.layer.register_forward_hook(this_thread_only(self._forward_hook))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _nothing_compiled() -> bool:
    """Whether Dynamo has compiled nothing in this process (then nothing can skip hooks)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - Dynamo ships with every supported torch
        return True
    return not counters["frames"].get("total", 0)


def _has_compiled_parts(forward_func: Callable[..., Any]) -> bool:
    """Whether ``forward_func`` may run code compiled by ``torch.compile``.

    Compiled functions, compiled submodules (``torch.compile(module)`` inside a model,
    ``module.compile()``, a compiled ``forward``) are seen; what a plain function calls is
    not, so a function that is not a module's counts as compiled once anything is.
    """
    if getattr(forward_func, "_torchdynamo_orig_callable", None) is not None:
        return True
    model = uncompiled(forward_func)
    owner = getattr(model, "__self__", None)
    model = model if isinstance(model, Module) else owner
    if not isinstance(model, Module):
        return True
    for module in model.modules():
        if isinstance(module, torch.jit.ScriptModule):
            # Not compiled by Dynamo, and its class's ``forward`` raises AttributeError.
            continue
        if getattr(module, "_orig_mod", None) is not None:  # an OptimizedModule inside
            return True
        if getattr(module, "_compiled_call_impl", None) is not None:  # module.compile()
            return True
        if getattr(type(module).forward, "_torchdynamo_orig_callable", None) is not None:
            return True
    return False


_EAGER_LOCK = threading.Lock()
_eager_calls = 0
_eager_stance: Any = None


@contextmanager
def _process_eager() -> Iterator[None]:
    """``torch.compiler.set_stance("force_eager")`` while any call of this library needs
    it: the stance is process-wide, so concurrent calls share one setting, restored by
    the last to leave (each restoring its own would switch it back under another)."""
    global _eager_calls, _eager_stance
    with _EAGER_LOCK:
        if _eager_calls == 0:
            _eager_stance = torch.compiler.set_stance("force_eager")
        _eager_calls += 1
    try:
        yield
    finally:
        with _EAGER_LOCK:
            _eager_calls -= 1
            if _eager_calls == 0:
                _eager_stance.__exit__(None, None, None)
                _eager_stance = None


def run_eagerly(forward_func: Callable[..., Any]) -> AbstractContextManager[Any]:
    """Runs ``torch.compile``'d parts of ``forward_func`` uncompiled inside the ``with`` block.

    Dynamo does not guard on the hooks of submodules
    (``torch._dynamo.config.skip_nnmodule_hook_guards``): a graph compiled during one
    attribution inlines that call's hooks and is reused by the next call whose inputs
    match its guards, so the next call's hooks never run. With a compiled model, Score-CAM
    followed by Ablation-CAM failed with "layer was not called" (the reference pass reused
    Score-CAM's graph, built with gradients off, as Ablation-CAM's is). Eager execution runs
    every hook; the maps are those of the uncompiled model, as CAMs of it should be.

    Dynamo's stance is process-wide: it is set only where something compiled may run
    (never for a plain model; a compiled model itself is called through its original
    module, see :func:`uncompiled`), and other threads' compiled code runs eagerly while
    it is.
    """
    if getattr(torch.compiler, "set_stance", None) is None or torch.compiler.is_compiling():
        return nullcontext()  # PyTorch < 2.6, or already inside a compiled region
    if _nothing_compiled() or not _has_compiled_parts(forward_func):
        return nullcontext()
    return _process_eager()


def uncompiled(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The module inside a ``torch.compile(module)`` wrapper, else ``forward_func``.

    Under :func:`run_eagerly` both compute the same; calling the wrapper while global
    module hooks are registered (the channel-switching methods' replay) makes PyTorch warn
    that the hooks "fire an extra time for the OptimizedModule".
    """
    original = getattr(forward_func, "_orig_mod", None)
    if isinstance(forward_func, Module) and isinstance(original, Module):
        return original
    return forward_func


__all__ = ["LayerCapture", "run_eagerly", "uncompiled"]
