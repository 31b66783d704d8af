#!/usr/bin/env bash
# Installs everything this project needs on a fresh machine: the pinned CPU build of torch (never
# an unpinned torch, which would pull multi-GB CUDA wheels), the Python dependencies, the
# FashionMNIST data package where apt is available, and the extension itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "$TORCH_SPEC"
fi
"$PYTHON" -m pip install -q numpy pyyaml tqdm matplotlib pytest expecttest ninja

if [ ! -e /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null || echo "note: apt-get install dataset-fashion-mnist failed; real-data runs need it" >&2
  else
    echo "note: FashionMNIST is missing; run: sudo apt-get install -y dataset-fashion-mnist" >&2
  fi
fi

# --no-build-isolation: build against the torch installed above instead of fetching another one.
"$PYTHON" -m pip install -q --no-build-isolation -e .
"$PYTHON" -c "import leadfl_ext, sim; print('leadfl_ext ready (CUDA kernels: %s)' % leadfl_ext.cuda_available())"
