"""Checks on what users pass in, each failing with a message that names the problem."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from captum._utils.typing import TargetType
from torch import Tensor
from torch.nn import Module

from captum_fdcam.errors import (
    DeviceError,
    GradientsDisabledError,
    InputError,
    LayerError,
    ModelOutputError,
    TargetError,
    TorchScriptError,
)


def owning_module(forward_func: Callable[..., Any]) -> Module | None:
    """The ``nn.Module`` behind ``forward_func`` (the module or its bound method), if any."""
    if isinstance(forward_func, Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, Module) else None


def layer_name(forward_func: Callable[..., Any], layer: Module) -> str:
    """A readable name of ``layer``: its qualified name in the model when known."""
    model = owning_module(forward_func)
    if model is not None:
        for name, module in model.named_modules():
            if module is layer:
                return f"'{name or type(model).__name__}' ({type(layer).__name__})"
    return f"{type(layer).__name__}"


def python_scalar(value: Any) -> Any:
    """The Python number a 0-d numpy array or tensor holds; anything else unchanged."""
    if isinstance(value, (np.ndarray, np.generic, Tensor)) and value.ndim == 0:
        return value.item()
    return value


def check_integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``: Python or numpy integers (also 0-d
    arrays and tensors), not ``bool`` (``True`` is 1 to Python, but never meant as a count)
    and not floats (``3.0`` is refused: a float count is usually a computed, rounded value)."""
    number = python_scalar(value)
    if isinstance(number, bool) or not isinstance(number, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r}).")
    if number < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {int(number)}.")
    return int(number)


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite ``float``: Python or numpy numbers (also 0-d arrays and tensors),
    not ``bool``; NaN and infinity are refused here rather than turning the map into NaN."""
    number = python_scalar(value)
    if isinstance(number, bool) or not isinstance(number, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}).")
    number = float(number)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}.")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool``: Python or numpy booleans only (``bool('no')`` is True)."""
    flag = python_scalar(value)
    if not isinstance(flag, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} ({value!r}).")
    return flag


TORCHSCRIPT_HINT = (
    "TorchScript modules do not support forward hooks (register_forward_hook is not "
    "supported on ScriptModules), which CAM methods need to read the layer's activations: "
    "pass the original Python nn.Module (before torch.jit.script or torch.jit.trace)."
)


def check_layer(forward_func: Callable[..., Any], layer: Module) -> None:
    """Fails when ``layer`` is not a module, or not part of a module ``forward_func``."""
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}.")
    model = owning_module(forward_func)
    # Checked first: a scripted model's ``model.features[3]`` is the *Python* module it was
    # scripted from, which "is not a submodule" of the scripted model (true, but it hides
    # the cause), and a ScriptModule layer fails only later, when the hook is registered.
    for module, role in ((layer, "layer"), (model, "model")):
        if isinstance(module, torch.jit.ScriptModule):
            raise TorchScriptError(
                f"The {role} is a TorchScript {type(module).__name__}. {TORCHSCRIPT_HINT}"
            )
    if model is not None and not any(m is layer for m in model.modules()):
        raise LayerError(
            f"The layer {type(layer).__name__} is not a submodule of the model "
            f"{type(model).__name__}: pass a module of this model (e.g. model.layer4)."
        )


def check_no_script_modules(model: Module, method: str) -> None:
    """Fails when a module of ``model`` is TorchScript, for methods that hook every module
    (FG-CAM's and LRP's propagation): the first hook would fail with PyTorch's bare
    "register_forward_hook is not supported on ScriptModules"."""
    scripted = [m for m in model.modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        raise TorchScriptError(
            f"{method} propagates through every module of the model, and "
            f"{layer_name(model, scripted[0])} is a TorchScript module. {TORCHSCRIPT_HINT}"
        )


def check_gradients_possible(method: str) -> None:
    """Fails under ``torch.inference_mode()``, which no inner context can switch off.

    Under ``torch.no_grad()`` the methods switch gradients back on where they need them
    (as Captum does); inside ``inference_mode`` that has no effect, and the backward
    pass would fail with "does not require grad" (or this library's misleading "does not
    depend on layer").
    """
    if torch.is_inference_mode_enabled():
        raise GradientsDisabledError(
            f"{method} needs gradients, which torch.inference_mode() disables for the whole "
            "block: call attribute() outside it (torch.no_grad() is fine, gradients are "
            "switched back on inside)."
        )


def check_model_device(model: Any) -> None:
    """A model whose parameters are on the ``meta`` device cannot compute a map."""
    if not isinstance(model, Module):
        return
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise DeviceError(
                f"The model's {name!r} is on the meta device, which holds shapes but no "
                "values: load the weights (model.to_empty(device=...) then "
                "load_state_dict, or load_state_dict(..., assign=True)) before explaining."
            )


def check_inputs(inputs: tuple[Tensor, ...]) -> None:
    """Inputs must be floating-point tensors with values, sharing the batch dimension."""
    if not inputs:
        raise InputError("inputs is empty: pass at least one input tensor.")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}.")
        if x.is_meta:
            raise DeviceError(
                f"inputs[{i}] is on the meta device, which holds a shape but no values: "
                "pass a tensor on the model's device (cpu, cuda, ...)."
            )
        if not torch.is_floating_point(x):
            raise TypeError(
                f"inputs[{i}] has dtype {x.dtype}; CAM methods need floating-point inputs "
                "(convert with .float())."
            )
        if x.dim() == 0:
            raise InputError(f"inputs[{i}] is a scalar; inputs need a batch dimension.")
        # NaN or Inf propagates through the forward pass into the map (silently, as in
        # Captum); perturbation methods would also spread it over masked copies.
        finite = torch.isfinite(x).flatten(1).all(dim=1) if x.dim() > 1 else torch.isfinite(x)
        if not finite.all():
            bad = torch.nonzero(~finite).flatten().tolist()
            raise InputError(
                f"inputs[{i}] contains NaN or Inf values (examples {bad}); the attributions need "
                "finite inputs."
            )
    sizes = {x.shape[0] for x in inputs}
    if len(sizes) != 1:
        raise InputError(f"All inputs must share the batch size, got {sorted(sizes)}.")
    if sizes == {0}:
        # Caught here, not as an IndexError from the first per-example step of a method.
        raise InputError(
            f"inputs have no examples (batch of 0, shapes {[tuple(x.shape) for x in inputs]}): "
            "attribute needs at least one example."
        )


def target_rows(target: TargetType, n: int) -> list[tuple[int, ...]]:
    """Turns any of Captum's ``TargetType`` forms into one index tuple per example.

    numpy integers and integer arrays are read as the Python ints and tensors they hold.
    """

    def as_tuple(t: Any) -> tuple[int, ...]:
        items = t if isinstance(t, tuple) else (t,)
        out = []
        for item in items:
            if isinstance(item, Tensor) and item.numel() == 1 and not item.is_floating_point():
                item = item.item()
            elif isinstance(item, np.ndarray) and item.size == 1 and item.dtype.kind in "iu":
                item = item.item()
            if isinstance(item, bool) or not isinstance(item, Integral):
                raise TypeError(
                    f"target entries must be integers, got {type(item).__name__} ({item!r})."
                )
            out.append(int(item))
        return tuple(out)

    if isinstance(target, np.ndarray):
        # Read as the tensor it converts to (a 0-d array is one target for all examples).
        if target.dtype.kind not in "iu":
            raise TypeError(f"target array must hold integers, got dtype {target.dtype}.")
        target = torch.from_numpy(target.astype(np.int64))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integers, got dtype {target.dtype}.")
        if target.numel() == 1:
            return [(int(target.item()),)] * n
        if target.dim() != 1:
            raise TargetError(
                f"target tensor must be a scalar or 1-D with one entry per example, "
                f"got shape {tuple(target.shape)}."
            )
        rows = [(int(v),) for v in target.tolist()]
    elif isinstance(target, list):
        rows = [as_tuple(t) for t in target]
    else:
        return [as_tuple(target)] * n
    if len(rows) != n:
        raise TargetError(
            f"target has {len(rows)} entries but the batch has {n} examples: give one "
            "target per example, or a single target for all."
        )
    return rows


def _fields(output: Any) -> list[str]:
    """The names of what an output object holds, for messages."""
    if isinstance(output, Mapping):
        return [str(k) for k in output]
    if dataclasses.is_dataclass(output):
        return [f.name for f in dataclasses.fields(output)]
    return [k for k in vars(output) if not k.startswith("_")] if hasattr(output, "__dict__") else []


def model_scores(output: Any) -> Tensor:
    """The model's scores as a tensor: the output itself, or the ``logits`` an output
    object holds (Hugging Face's ``ModelOutput``: ``ImageClassifierOutput`` and the like;
    any mapping or object with a ``logits`` tensor).

    Raises:
        ModelOutputError: anything else, with what to pass instead.
    """
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else None
    if logits is None:
        logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    fields = _fields(output)
    held = f" (it holds {', '.join(fields)})" if fields else ""
    raise ModelOutputError(
        f"The model returned {type(output).__name__}{held}, not a tensor of scores or an "
        "output with `logits`. Pass a model (an nn.Module, which FG-CAM needs) whose forward "
        "returns the (N, ...) scores to explain, e.g. one that returns "
        "`inner(x).pooler_output`; for embeddings see captum_fdcam.targets.SimilarityTarget."
    )


def select_target_scores(output: Any, target: TargetType) -> Tensor:
    """Picks each example's target score from the model output, checking the indices.

    Args:
        output: model output of shape (N, ...), or an output object holding ``logits``
            (see :func:`model_scores`).
        target: anything Captum's ``TargetType`` allows.

    Returns:
        Tensor of shape (N,): the score of each example's target.
    """
    output = model_scores(output)
    if output.dim() == 0:
        raise ModelOutputError(
            "The model must return a tensor with a batch dimension, got a scalar."
        )
    n = output.shape[0]
    if target is None:
        if output[0].numel() != 1:
            raise TargetError(
                f"The model returns {tuple(output.shape[1:])} scores per example: pass target "
                "(e.g. the class index) to say which one to explain."
            )
        return output.reshape(n)
    rows = target_rows(target, n)
    score_dims = tuple(output.shape[1:])
    for row in rows:
        if len(row) != len(score_dims):
            raise TargetError(
                f"target {row if len(row) > 1 else row[0]} has {len(row)} index(es) but the "
                f"model output has shape {tuple(output.shape)}: give {len(score_dims)} "
                "index(es) per example."
            )
        for idx, size in zip(row, score_dims, strict=True):
            if not 0 <= idx < size:
                raise TargetError(
                    f"target {row if len(row) > 1 else row[0]} is out of range for the model "
                    f"output of shape {tuple(output.shape)} (valid: 0 to {size - 1})."
                )
    index = torch.tensor(rows, device=output.device, dtype=torch.long)
    batch = torch.arange(n, device=output.device)
    return output[(batch, *index.unbind(dim=1))]
