#!/usr/bin/env bash
# The main job: sets up .venv, explains the bundled photo with the offline
# pretrained EfficientNet-Lite0 with every method, writes figures/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m captum_fdcam.demo "$@"
