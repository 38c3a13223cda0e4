#!/usr/bin/env bash
# The tests: sets up .venv, checks style with ruff, runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
