"""Sphinx configuration of the captum-fdcam documentation.

Build (fails on any warning): ``bash scripts/docs.sh`` or
``.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import captum_fdcam

project = "captum-fdcam"
author = "captum-fdcam contributors"
copyright = "captum-fdcam contributors"
release = captum_fdcam.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ / $$...$$ math, ::: fences, anchors for "page.md#heading" links.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# The docstrings are Google style (Args: / Returns:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"captum-fdcam {release}"
html_static_path: list[str] = []

# Broken references to this library's own objects fail the build; references to other
# libraries' objects (torch, Captum, Quantus, ...) are not resolved (no intersphinx:
# the build runs offline) and are not reported.
# The internal hooks and replay classes appear only in PerturbationEngine's fields.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!captum_fdcam\b).*"),
    # Private helpers named in signatures of public methods (layer_states' pass_store).
    (r"py:class", r"captum_fdcam\._core\.(hooks|replay|perturbation)\..*"),
]
