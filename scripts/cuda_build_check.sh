#!/usr/bin/env bash
# Builds leadfl_ext for real against the CUDA build of torch, on a machine without a GPU:
#  1. a virtual environment of its own (default /tmp/leadfl-cuda-build/venv, reused when it already
#     holds the wanted torch) with torch==2.14.1 (2.14.1+cu130 from the machine's local wheels);
#  2. a copy of the source in a separate tree (the editable build writes _C*.so into the source
#     folder, which must not clobber the CPU build of the checkout);
#  3. `pip install --no-build-isolation --use-pep517 -e .` there (without --use-pep517 the
#     setuptools develop path runs pip again with build isolation, where torch is missing), with
#     CUDA_HOME=/usr/local/cuda (the nvcc on PATH may be a wrapper script) and
#     TORCH_CUDA_ARCH_LIST=9.0 (with no GPU torch's list is empty);
#  4. the import (a link error shows only here), then the dispatcher: CPU, CUDA and Meta kernels for
#     both ops;
#  5. tests/leadfl_ext in that tree (the tests that need a GPU skip).
# Measured on the 2-core CI machine while other jobs loaded it (load average about 7): creating the
# environment 442 s the first time (torch 2.14.1+cu130 unpacked from the local wheels, about
# 70 MB downloaded; 18 s when the environment is already there), build 453 s, import and
# dispatcher check 18 s, tests/leadfl_ext 124 s (179 passed, 11 CUDA-only skipped): about 17
# minutes on a fresh machine, 5.6 GB of disk (the environment; the source copy is 13 MB).
# It compiles csrc/cuda/leadfl_kernel.cu for sm_90 with nvcc and csrc/cuda/leadfl_cuda.cpp against
# the CUDA torch headers, so scripts/check_cuda_sources.sh (a quicker check of the same two files,
# the second against CPU headers) is not run by CI any more; it stays for a quick local check.
#
# Skipped, with a note, where there is no nvcc or the CUDA toolkit. Settings:
#   LEADFL_CUDA_CHECK_DIR  work folder (default /tmp/leadfl-cuda-build)
#   CUDA_TORCH_SPEC        the CUDA torch to build against (default torch==2.14.1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WORK=${LEADFL_CUDA_CHECK_DIR:-/tmp/leadfl-cuda-build}
TORCH_SPEC=${CUDA_TORCH_SPEC:-torch==2.14.1}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

if ! command -v nvcc >/dev/null 2>&1 || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "nvcc or $CUDA_HOME/bin/nvcc not found: skipping the real CUDA build"
  exit 0
fi

stamp() { date +%s; }
report() { echo "cuda build check: $1 took $(( $(stamp) - $2 )) s"; }

mkdir -p "$WORK"
VENV="$WORK/venv"
started=$(stamp)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "$TORCH_SPEC"
fi
"$VPY" -m pip install -q numpy pyyaml tqdm matplotlib pytest expecttest ninja setuptools wheel
"$VPY" -c "import torch; print('cuda build check: torch', torch.__version__, 'CUDA', torch.version.cuda)"
report "environment" "$started"

# A fresh copy of the tracked and untracked-but-not-ignored files: no build outputs come along.
SRC="$WORK/src"
rm -rf "$SRC"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | tar -C "$ROOT" --null -T - --ignore-failed-read -cf - | tar -xf - -C "$SRC"
else
  tar -cf - --exclude=build --exclude='*.so' --exclude='*.egg-info' . | tar -xf - -C "$SRC"
fi

started=$(stamp)
(cd "$SRC" && MAX_JOBS=${MAX_JOBS:-2} "$VPY" -m pip install -q --no-build-isolation --use-pep517 -e .)
report "build (pip install -e . with nvcc)" "$started"

started=$(stamp)
(cd "$SRC" && "$VPY" - <<'EOF'
import glob
import torch
import leadfl_ext

built = glob.glob("leadfl_ext/_C*.so")
assert built, "the editable build wrote no leadfl_ext/_C*.so"
missing = []
for op in ("leadfl::fused_step_", "leadfl::paper_step_"):
    for key in ("CPU", "CUDA", "Meta"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
            missing.append(f"{op} has no {key} kernel")
if missing:
    print(torch._C._dispatch_dump("leadfl::fused_step_"))
    raise SystemExit("cuda build check: " + "; ".join(missing))
assert leadfl_ext.cuda_available()
print(f"cuda build check: {built[0]} imports with torch {torch.__version__}; "
      "fused_step_ and paper_step_ have CPU, CUDA and Meta kernels")
EOF
)
report "import and dispatcher check" "$started"

started=$(stamp)
(cd "$SRC" && "$VPY" -m pytest -q tests/leadfl_ext)
report "tests/leadfl_ext against the CUDA build" "$started"
