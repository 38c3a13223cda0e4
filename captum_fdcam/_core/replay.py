"""Running only the part of a network after the target layer, for any ``forward_func``.

Channel-switching methods (Ablation-CAM, FD-CAM) evaluate the network on many
copies of one example's layer activations, each with some channels switched off.
Nothing before the layer depends on the switch, so it should run once per
example, whatever the number of copies. A model cannot be split in general, so
this is done with global module hooks:

1. During the reference forward pass (the one that also yields the gradients),
   :class:`PreLayerRecorder` notes every module call in order, which of them
   complete before the layer starts, and keeps the outputs of the outermost of
   these (detached; autograd keeps them alive during that pass anyway).
2. For a batch of M switched copies, :func:`replay` calls ``forward_func`` on the
   example's inputs expanded to M rows (``expand``: no copy; models that read
   their batch size from the input see M). Each recorded pre-layer call gets an
   empty batch as input, so it computes nothing, and returns its recorded output
   expanded to M rows; the layer returns the switched copies. Everything after the
   layer, skip connections included, then runs on a batch of M.

Where the model does something that replay cannot follow (a different call
sequence, ops that fail on empty batches), :class:`ReplayError` is raised and the
caller falls back to full forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from torch import Tensor
from torch.nn import Module
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from captum_fdcam._core.hooks import this_thread_only


class ReplayError(RuntimeError):
    """The forward pass did not follow the recorded call sequence."""


@dataclass
class _RecordedCall:
    module: Module
    parent: int | None
    before_layer: bool = False


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, containers rebuilt in kind
    (tuples, named tuples, lists, dicts such as ``IntermediateLayerGetter``'s)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple):
        mapped = [_map_tensors(v, fn) for v in value]
        return type(value)(*mapped) if hasattr(value, "_fields") else tuple(mapped)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, Mapping):
        return type(value)((k, _map_tensors(v, fn)) for k, v in value.items())
    return value


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _replayable(value: Any) -> bool:
    """Whether :func:`_map_tensors` reaches every tensor in ``value``: a recorded output
    holding a tensor it cannot reach would be handed back unexpanded, with the rows of
    the whole batch instead of the copies of one example."""
    if isinstance(value, (Tensor, *_PLAIN)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_replayable(v) for v in value)
    if isinstance(value, Mapping):
        return all(_replayable(v) for v in value.values())
    return False


class _GlobalHooks:
    """Registers global forward pre-/post-hooks for the duration of a ``with`` block.

    Global hooks see every module call in the process: they act only on the calls of
    the thread that entered the block (the attribution's own forward pass), so that other
    threads' forward passes, on this model or any other, run as if they were not there.
    """

    def __enter__(self) -> _GlobalHooks:
        self._handles: list[RemovableHandle] = [
            register_module_forward_pre_hook(this_thread_only(self._pre)),
            register_module_forward_hook(this_thread_only(self._post)),
        ]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: Module, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def _post(self, module: Module, args: tuple[Any, ...], output: Any) -> Any:
        raise NotImplementedError


@dataclass
class PreLayerRecorder(_GlobalHooks):
    """Records the module calls of one forward pass relative to ``layer``.

    Attributes:
        calls: every module call, in the order the calls started.
        layer_call: index of the layer's call in :attr:`calls`.
        outputs: call index -> output, for the outermost calls that completed
            before the layer started (the ones :func:`replay` short-cuts).
    """

    layer: Module
    batch_size: int
    calls: list[_RecordedCall] = field(default_factory=list)
    layer_call: int | None = None
    outputs: dict[int, Any] = field(default_factory=dict)
    _stack: list[int] = field(default_factory=list)

    def _pre(self, module: Module, args: tuple[Any, ...]) -> None:
        index = len(self.calls)
        self.calls.append(_RecordedCall(module, self._stack[-1] if self._stack else None))
        self._stack.append(index)
        if module is self.layer and self.layer_call is None:
            self.layer_call = index

    def _post(self, module: Module, args: tuple[Any, ...], output: Any) -> None:
        index = self._stack.pop()
        # A call whose output replay cannot rebuild runs again for the copies (on the
        # example's expanded inputs); its children are short-cut instead.
        if self.layer_call is None and _replayable(output):
            self.calls[index].before_layer = True
            self.outputs[index] = _map_tensors(output, Tensor.detach)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        # Keep only the outermost pre-layer calls: their children need not be replayed.
        for index in list(self.outputs):
            parent = self.calls[index].parent
            if parent is not None and self.calls[parent].before_layer:
                del self.outputs[index]

    @property
    def usable(self) -> bool:
        return self.layer_call is not None


class _Replay(_GlobalHooks):
    def __init__(
        self,
        recorder: PreLayerRecorder,
        sample: int,
        copies: Tensor,
        attribute_to_layer_input: bool,
    ) -> None:
        self.recorder = recorder
        self.sample = sample
        self.copies = copies
        self.rows = copies.shape[0]
        self.to_input = attribute_to_layer_input
        self._count = 0
        self._stack: list[int] = []

    def _expand(self, t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != self.recorder.batch_size:
            return t
        return t[self.sample : self.sample + 1].expand(self.rows, *t.shape[1:])

    def _empty(self, t: Tensor) -> Tensor:
        return t[:0] if t.dim() > 0 and t.shape[0] == self.rows else t

    def _pre(self, module: Module, args: tuple[Any, ...]) -> Any:
        index = self._count
        self._count += 1
        calls = self.recorder.calls
        if index >= len(calls) or calls[index].module is not module:
            raise ReplayError("the forward pass did not repeat the recorded module calls")
        self._stack.append(index)
        if index == self.recorder.layer_call:
            if self.to_input:
                return (self.copies, *args[1:])
            return _map_tensors(args, self._empty)
        if index in self.recorder.outputs:
            return _map_tensors(args, self._empty)
        return None

    def _post(self, module: Module, args: tuple[Any, ...], output: Any) -> Any:
        index = self._stack.pop()
        if index == self.recorder.layer_call and not self.to_input:
            return self.copies
        if index in self.recorder.outputs:
            return _map_tensors(self.recorder.outputs[index], self._expand)
        return None


def replay(
    forward: Callable[[], Any],
    recorder: PreLayerRecorder,
    sample: int,
    copies: Tensor,
    attribute_to_layer_input: bool = False,
) -> Any:
    """Runs ``forward()`` with the pre-layer calls short-cut and the layer's output
    (or input) replaced by ``copies`` (M, C, H, W) of example ``sample``.

    ``forward`` must call the model on the inputs of example ``sample`` expanded to
    M rows. Raises :class:`ReplayError` when the call sequence differs from the
    recorded one; other exceptions of the model propagate.
    """
    with _Replay(recorder, sample, copies, attribute_to_layer_input):
        return forward()
