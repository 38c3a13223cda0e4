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
from typing import Any, NoReturn


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


class DeviceError(CamError, RuntimeError):
    """The model or the inputs are where nothing can be computed: on PyTorch's ``meta``
    device (shapes without values), or the model and the inputs on different devices."""


class UnsupportedModuleError(CamError, TypeError):
    """Relevance cannot propagate through a module of the model (no LRP rule for it,
    attention, or an output that is not one tensor)."""


class DefaultLayerWarning(UserWarning):
    """A call without a layer explains the layer chosen for the model's family (see
    :func:`captum_fdcam.architectures.default_layer`); the warning names it."""


class ConstantMapWarning(UserWarning):
    """An attribution's map is the same value everywhere for some examples: it ranks no
    pixel above another. The warning names the examples."""


class RequestError(Exception):
    """A request the application services cannot carry out as asked: a mistake in the
    commands' arguments or files, an output folder that cannot be written, another run
    holding the folder. The commands print it as one line on stderr and exit with
    :attr:`exit_code`. Not a ``CamError``: it reports a request, not the library's
    methods."""

    #: The commands' exit status for this error.
    exit_code = 2


#: The name these errors had when only the command line raised them.
CliError = RequestError


class OutputError(RequestError):
    """Writing the output failed (a full disk, a read-only folder): what was written
    whole is kept, nothing is left half-written, and the message says how to resume."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a service's work: what was kept and how to resume, in one line.

    A ``KeyboardInterrupt``, so that a Python caller's own handling of Ctrl-C still
    applies; the commands print the message and exit with 130 (128 + SIGINT)."""

    exit_code = 130


def _choices_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """Close matches for an unknown option, among the parser's own options."""
    import difflib
    import re

    match = re.match(r"unrecognized arguments: (.*)", message)
    if not match:
        return ""
    options = [o for action in parser._actions for o in action.option_strings]
    hints = []
    for word in match.group(1).split():
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.7)
            if close:
                hints.append(f"{word}: did you mean {' or '.join(close)}?")
    return "; ".join(hints)


class CliArgumentParser(argparse.ArgumentParser):
    """argparse's errors as one line, like the commands' own :class:`RequestError`
    (argparse would print the whole usage first, a dozen lines for ``explain``), with
    close matches for a misspelt option and the help of the command it was given to."""

    def error(self, message: str) -> NoReturn:
        hint = _choices_hint(self, message)
        if hint:
            message = f"{message} ({hint})"
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        # argparse reports an unknown option after a sub-command from the top-level
        # parser, whose help does not list it: parse with the sub-command's parser.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = getattr(parsed, "_parser", self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


__all__ = [
    "CamError",
    "CliArgumentParser",
    "CliError",
    "ConstantMapWarning",
    "DefaultLayerWarning",
    "DeviceError",
    "FeatureMapError",
    "GradientsDisabledError",
    "InputError",
    "Interrupted",
    "LayerError",
    "ModelOutputError",
    "NonFiniteError",
    "OutputError",
    "RequestError",
    "TargetError",
    "TorchScriptError",
    "UnsupportedModuleError",
]
