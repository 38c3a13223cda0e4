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
   their batch size from the input see M). Each recorded pre-layer call is
   *skipped*: its module's ``forward`` does not run (nor any module inside it), and
   the call returns its recorded output expanded to M rows; the layer's call returns
   the switched copies. Everything after the layer, skip connections included, then
   runs on a batch of M.

Skipping a call needs the module's ``forward`` itself to stand aside (a hook cannot
stop it): while a replay runs, each of those modules has a stand-in ``forward`` that
answers for this thread's replay only and calls the module's own ``forward`` for
every other caller, so other threads' passes run unchanged; the stand-ins are removed
when the last replay using them ends. Hooks of the skipped modules still see their
calls, with empty (0-row) inputs: the module computes nothing. (Feeding empty batches
to the modules instead, as earlier versions did, fails where a model folds the batch
into another dimension, ``x.view(-1, window, window, C)`` in Swin's window attention.)

Where the model does something that replay cannot follow (a different call
sequence, a recorded output it cannot rebuild), :class:`ReplayError` or the model's
own error is raised and the caller falls back to full forward passes.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
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
    #: Index of the first call after this one's last nested call (its subtree's end).
    end: int = 0


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
        self.calls[index].end = len(self.calls)
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


# ------------------------------------------------------------- skipped forwards

#: What a stand-in ``forward`` gets from the replay when the call must really run.
_RUN = object()
_MISSING = object()


class _Local(threading.local):
    replay: _Replay | None = None


_ACTIVE = _Local()
_STANDINS_LOCK = threading.Lock()


@dataclass
class _StandIn:
    """A module's stand-in ``forward``: what its ``__dict__`` held before, and how many
    replays (of any thread) use it."""

    previous: Any
    users: int = 0


#: id(module) -> (module, its stand-in); shared by the threads (guarded by the lock).
_STANDINS: dict[int, tuple[Module, _StandIn]] = {}


class _StandInForward:
    """``module``'s ``forward`` during replays: the recorded output for a call the
    current thread's replay skips, the module's own ``forward`` otherwise.

    Copies of the module made while it is installed must not call the original
    module: :func:`without_stand_in` takes it out of a shallow copy (this library's
    rules compute on those), and a deep copy or a pickle gets the copy's own ``forward``.
    """

    def __init__(self, module: Module, own: Callable[..., Any], previous: Any) -> None:
        self.module = module
        self.own = own
        self.previous = previous
        self.__wrapped__ = own  # inspect.signature(module.forward) stays the module's

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.replay
        if active is not None:
            output = active.skipped_output(self.module)
            if output is not _RUN:
                return output
        return self.own(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # The module being copied is already in the memo (copy reconstructs the object
        # before its state): its copy gets what its __dict__ held before, or its own
        # forward, never a stand-in that answers for the original.
        if self.previous is not _MISSING:
            return copy.deepcopy(self.previous, memo)
        return _own_forward(memo.get(id(self.module), self.module))

    def __reduce__(self) -> tuple[Any, ...]:
        if self.previous is not _MISSING:
            return (_identity, (self.previous,))
        return (_own_forward, (self.module,))


def _identity(value: Any) -> Any:
    return value


def _own_forward(module: Module) -> Any:
    """``module``'s class ``forward`` bound to it: what ``module.forward`` is without a
    stand-in."""
    return type(module).forward.__get__(module)


def without_stand_in(clone: Module) -> Module:
    """A shallow copy of a module (``copy.copy``) without the stand-in ``forward`` it
    may have copied from its original: calling it must compute with the copy's own
    parameters."""
    forward = clone.__dict__.get("forward")
    if isinstance(forward, _StandInForward):
        if forward.previous is _MISSING:
            del clone.__dict__["forward"]
        else:
            clone.__dict__["forward"] = forward.previous
    return clone


def _can_stand_in(module: Module) -> bool:
    # TorchScript modules keep ``forward`` in C++ (and run no Python hooks inside): they
    # are fed empty batches instead.
    return not isinstance(module, torch.jit.ScriptModule)


@contextmanager
def _stand_ins(modules: Sequence[Module]) -> Iterator[set[int]]:
    """Installs the stand-in ``forward`` of each module (once, however many threads
    replay), yields the ids of the modules that have one, and removes them when the last
    user is done: nothing is left on the model."""
    unique = {id(m): m for m in modules if _can_stand_in(m)}
    with _STANDINS_LOCK:
        for key, module in unique.items():
            entry = _STANDINS.get(key)
            if entry is None:
                previous = module.__dict__.get("forward", _MISSING)
                # Written into the instance's __dict__ (what nn.Module.__setattr__ does
                # for a plain callable): Module.__call__ reads ``self.forward``.
                module.__dict__["forward"] = _StandInForward(module, module.forward, previous)
                _STANDINS[key] = entry = (module, _StandIn(previous))
            entry[1].users += 1
    try:
        yield set(unique)
    finally:
        with _STANDINS_LOCK:
            for key, module in unique.items():
                stand_in = _STANDINS[key][1]
                stand_in.users -= 1
                if stand_in.users == 0:
                    del _STANDINS[key]
                    if stand_in.previous is _MISSING:
                        module.__dict__.pop("forward", None)
                    else:
                        module.__dict__["forward"] = stand_in.previous


class _Replay(_GlobalHooks):
    def __init__(
        self,
        recorder: PreLayerRecorder,
        sample: int,
        copies: Tensor,
        attribute_to_layer_input: bool,
        skippable: set[int],
    ) -> None:
        self.recorder = recorder
        self.sample = sample
        self.copies = copies
        self.rows = copies.shape[0]
        self.to_input = attribute_to_layer_input
        self.skippable = skippable
        self._count = 0
        self._stack: list[int] = []

    def _expand(self, t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != self.recorder.batch_size:
            return t
        return t[self.sample : self.sample + 1].expand(self.rows, *t.shape[1:])

    def _empty(self, t: Tensor) -> Tensor:
        return t[:0] if t.dim() > 0 and t.shape[0] == self.rows else t

    def _replaced(self, index: int) -> Any:
        """What call ``index`` returns instead of running, or :data:`_RUN`."""
        if index == self.recorder.layer_call and not self.to_input:
            return self.copies
        if index in self.recorder.outputs:
            return _map_tensors(self.recorder.outputs[index], self._expand)
        return _RUN

    def _pre(self, module: Module, args: tuple[Any, ...]) -> Any:
        index = self._count
        calls = self.recorder.calls
        if index >= len(calls) or calls[index].module is not module:
            raise ReplayError("the forward pass did not repeat the recorded module calls")
        self._stack.append(index)
        self._count = index + 1
        if index == self.recorder.layer_call and self.to_input:
            return (self.copies, *args[1:])
        if self._replaced(index) is _RUN:
            return None
        if id(module) in self.skippable:
            # Its forward will not run: neither will the calls nested in it.
            self._count = calls[index].end
        # Empty inputs: what the module's own hooks see (and what a module that cannot
        # be skipped computes on).
        return _map_tensors(args, self._empty)

    def skipped_output(self, module: Module) -> Any:
        """The output of the current call of ``module`` if this replay skips it."""
        if not self._stack:
            return _RUN
        index = self._stack[-1]
        if self.recorder.calls[index].module is not module:
            return _RUN  # a direct ``module.forward(...)`` call, which no hook saw
        return self._replaced(index)

    def _post(self, module: Module, args: tuple[Any, ...], output: Any) -> Any:
        index = self._stack.pop()
        replaced = self._replaced(index)
        return None if replaced is _RUN else replaced


@contextmanager
def _active(state: _Replay) -> Iterator[None]:
    previous = _ACTIVE.replay
    _ACTIVE.replay = state
    try:
        yield
    finally:
        _ACTIVE.replay = previous


def replay(
    forward: Callable[[], Any],
    recorder: PreLayerRecorder,
    sample: int,
    copies: Tensor,
    attribute_to_layer_input: bool = False,
) -> Any:
    """Runs ``forward()`` with the pre-layer calls skipped and the layer's output
    (or input) replaced by ``copies`` (M, C, H, W) of example ``sample``.

    ``forward`` must call the model on the inputs of example ``sample`` expanded to
    M rows. Raises :class:`ReplayError` when the call sequence differs from the
    recorded one; other exceptions of the model propagate.
    """
    skipped = [recorder.calls[i].module for i in recorder.outputs]
    if not attribute_to_layer_input and recorder.layer_call is not None:
        skipped.append(recorder.calls[recorder.layer_call].module)
    with _stand_ins(skipped) as skippable:
        state = _Replay(recorder, sample, copies, attribute_to_layer_input, skippable)
        with state, _active(state):
            return forward()
