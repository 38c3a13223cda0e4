"""One exception class per kind of mistake, raised alike by every entry point.

Each class also derives from the built-in exception(s) this library raised for that
mistake before, so that ``except ValueError`` (or ``IndexError``, ``RuntimeError``,
``TypeError``) written against earlier versions still catches it. ``CamError`` is the
base of all of them. The table of kinds, classes and messages is in docs/errors.md.

Mistakes in a method's options (``group_fraction=2``, ``score='logits'``) stay plain
``ValueError`` / ``TypeError``, as everywhere in Python.

This module imports only the standard library, so that every part of the library can use
it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class CamError(Exception):
    """Base of the exceptions of this library."""


class TargetError(CamError, ValueError, IndexError):
    """The target does not select one score per example: out of range for the model's
    output, missing where the output has several scores, one entry per example of the
    wrong count, or the wrong number of indices."""


class LayerError(CamError, ValueError, RuntimeError):
    """The layer cannot be explained in this forward pass: not a module of the model,
    not called, called more than once, not used for the target's score, several outputs
    where one feature map is needed, or not reached by the propagated relevance."""


class FeatureMapError(CamError, ValueError):
    """The layer's output (input) is not an (N, C, h, w) feature map, and the
    ``reshape_transform`` does not turn it into one by moving values only."""


class InputError(CamError, ValueError):
    """The inputs cannot be explained: empty, a scalar, NaN or infinite values, batch
    sizes that differ, no examples, or a shape the method cannot mask."""


class ModelOutputError(CamError, TypeError, ValueError):
    """The model's output is not what the method explains: not a tensor with a batch
    dimension, or not (N, C) scores where classes are needed."""


class NonFiniteError(CamError, ValueError):
    """The model's target score, or its gradient at the layer, is NaN or infinite."""


class TorchScriptError(CamError, TypeError):
    """The model, the layer or a submodule is a TorchScript module, which forward hooks
    cannot observe: pass the Python module it was scripted (traced) from."""


class GradientsDisabledError(CamError, RuntimeError):
    """The method needs gradients and runs inside ``torch.inference_mode()``."""


class UnsupportedModuleError(CamError, TypeError):
    """Relevance cannot propagate through a module of the model (no LRP rule for it,
    attention, or an output that is not one tensor)."""


class DefaultLayerWarning(UserWarning):
    """A call without a layer explains the layer chosen for the model's family (see
    :func:`captum_fdcam.architectures.default_layer`); the warning names it."""


class ConstantMapWarning(UserWarning):
    """An attribution's map is the same value everywhere for some examples: it ranks no
    pixel above another. The warning names the examples."""


class CliError(Exception):
    """A mistake in a command's arguments or files (``captum-fdcam``, ``python -m
    captum_fdcam.benchmark``): printed as one line on stderr, exit code 2. Not a
    ``CamError``: it is the commands' report of a mistake, not the library's."""


class CliArgumentParser(argparse.ArgumentParser):
    """argparse's errors as one line, like the commands' own :class:`CliError` (argparse
    would print the whole usage first, a dozen lines for ``explain``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


__all__ = [
    "CamError",
    "CliArgumentParser",
    "CliError",
    "ConstantMapWarning",
    "DefaultLayerWarning",
    "FeatureMapError",
    "GradientsDisabledError",
    "InputError",
    "LayerError",
    "ModelOutputError",
    "NonFiniteError",
    "TargetError",
    "TorchScriptError",
    "UnsupportedModuleError",
]
