#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs the package with
# the extras the main job and the tests need. Idempotent: it reinstalls only when
# setup.cfg or pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CAPTUM_FDCAM_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.captum-fdcam-$(cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "[bootstrap] installing captum-fdcam[dev,demo,docs] into $VENV (first run: several GB, a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev,demo,docs]" 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import captum_fdcam, torchvision, efficientnet_lite_pytorch" \
        || { echo "[bootstrap] installation failed" >&2; exit 1; }
    rm -f "$VENV"/.captum-fdcam-*
    touch "$stamp"
fi
