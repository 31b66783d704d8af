#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
# Ray is optional for users (pip install -e .[ray]); the suite runs a sweep on a local Ray instance.
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('ray') is None)"; then
  echo "setup: installing ray==2.60.0 for the sweep tests"
  "$PYTHON" -m pip install -q ray==2.60.0
fi
"$PYTHON" -m pytest -q tests "$@"
