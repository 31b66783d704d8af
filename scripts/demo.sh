#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the demo comparison on real FashionMNIST: no client defense
# vs LeadFL under a bursty 9-pixel backdoor, Multi-Krum, on identical selections. Prints the table
# and the path of the plot. Extra arguments go to `leadfl-sim compare` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
"$PYTHON" -m sim compare --preset demo "$@"
