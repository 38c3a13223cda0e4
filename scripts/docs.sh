#!/usr/bin/env bash
# The documentation: sets up .venv, builds the Sphinx site into docs/_build/html.
# Any warning fails the build (-W; --keep-going reports all of them first).
# Extra arguments go to sphinx-build, e.g. `bash scripts/docs.sh -E` for a clean build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
