#!/usr/bin/env bash
# A virtual environment holding ByzFL (LPD-EPFL/byzfl, PyPI `byzfl`), the peer library the
# aggregator cross-checks use as an oracle, kept apart from the project's environment.
#
#   bash bench/byzfl_venv.sh            # prints the environment's python on its last line
#
# Created once under $BYZFL_VENV (default /tmp/leadfl-byzfl-venv) and reused while it can load
# ByzFL's aggregators. torch is installed first and pinned (torch==2.13.0, this machine's local
# CPU wheel), so pip never resolves an unpinned torch; then ByzFL with --no-deps (its requirements
# would pull another torch, and torchvision) and the two packages its aggregator modules import,
# numpy and scipy. `import byzfl` itself also loads ByzFL's training framework, which needs
# torchvision (the only torchvision 0.28.0 wheel here is built for CUDA torch and does not load
# on the CPU one); bench/byzfl_oracle.py therefore loads byzfl.aggregators without the package's
# top-level __init__ (the aggregator files run unchanged). Exits non-zero, saying why, when
# something cannot be installed (e.g. offline without the packages on disk). Built from nothing
# on the 2-core CI machine in 126 s (torch from the local wheel); reused after that in about 4 s.
set -euo pipefail
trap 'echo "byzfl_venv.sh: failed (exit $?) at: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BYZFL_VENV:-/tmp/leadfl-byzfl-venv}
BYZFL_SPEC=${BYZFL_SPEC:-byzfl==0.0.11}
VPY="$VENV/bin/python"
check() { "$VPY" bench/byzfl_oracle.py --check >/dev/null 2>&1; }

if [ -x "$VPY" ] && check; then
  echo "$VPY"
  exit 0
fi
if [ ! -x "$VPY" ]; then
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q --no-deps "$BYZFL_SPEC"
"$VPY" -m pip install -q numpy scipy
"$VPY" bench/byzfl_oracle.py --check >&2
echo "$VPY"
