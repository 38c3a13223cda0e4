"""The application services: explain image files into a folder, evaluate methods on
them, reproduce the papers' tables. The command line and the demo call these; so can
Python code, with the same requests::

    from pathlib import Path
    from captum_fdcam.app import ExplainRequest, explain_files

    explain_files(ExplainRequest(images=(Path("photo.jpg"),), out=Path("figures")))

Each service checks its whole request before it writes anything, and raises
:class:`~captum_fdcam.errors.RequestError` (one line) for a mistake. Imports are lazy:
``import captum_fdcam.app`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from captum_fdcam.app.requests import (
    BenchmarkRequest,
    EvaluateRequest,
    ExplainRequest,
    ModelRequest,
)

_SERVICES = {
    "explain_files": "captum_fdcam.app.explain",
    "evaluate_files": "captum_fdcam.app.evaluate",
    "run_benchmark": "captum_fdcam.benchmark",
}


def __getattr__(name: str) -> Any:
    if name not in _SERVICES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_SERVICES[name])
    return getattr(module, "run" if name == "run_benchmark" else name)


__all__ = [
    "BenchmarkRequest",
    "EvaluateRequest",
    "ExplainRequest",
    "ModelRequest",
    "evaluate_files",
    "explain_files",
    "run_benchmark",
]
