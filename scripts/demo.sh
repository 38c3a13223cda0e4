#!/usr/bin/env bash
# The main job: sets up .venv, runs `captum-fdcam explain` on the bundled photo with the
# offline pretrained EfficientNet-Lite0, every CAM and FG-Grad-CAM; writes figures/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m captum_fdcam.demo "$@"
