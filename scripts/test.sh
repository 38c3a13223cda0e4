#!/usr/bin/env bash
# The tests: sets up .venv, checks style with ruff, type-checks the public API with
# mypy --strict (a user's code against captum_fdcam's exports, through py.typed), runs
# the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
# ruff is pinned to one minor version in setup.cfg: its layout changes between them.
.venv/bin/ruff format --check . --quiet  # code and the docs' python blocks, one layout
.venv/bin/python -m mypy --strict --follow-imports=silent --no-error-summary \
    captum_fdcam/__init__.py tests/typing/public_api.py
exec .venv/bin/python -m pytest "$@"
