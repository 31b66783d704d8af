#!/usr/bin/env bash
# Installs everything this project needs on a fresh machine: the pinned CPU build of torch (never
# an unpinned torch, which would pull multi-GB CUDA wheels), the Python dependencies, the
# FashionMNIST data package where apt is available, and the extension itself.
#
# Prints one line per step. A finished setup is not redone: the extension is rebuilt only when
# its build inputs changed (setup.py, csrc/, the Python and torch versions, the CUDA toolkit:
# their hash is kept in build/setup-stamp) or when `import leadfl_ext` does not load this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_PACKAGES=(numpy pyyaml tqdm matplotlib scikit-learn pytest expecttest ninja)
PIP_MODULES=(numpy yaml tqdm matplotlib sklearn pytest expecttest ninja)  # their import names
DATASET_DIR=${LEADFL_DATASET_DIR:-/usr/share/datasets/fashion-mnist}  # settable for the tests
DATASET_PACKAGE=dataset-fashion-mnist
STAMP=build/setup-stamp

step() { echo "setup: $*"; }
note() { echo "setup: note: $*" >&2; }

# -- torch -----------------------------------------------------------------------------------
# Versions and module lookups below read package metadata instead of importing (torch takes
# seconds to import); the one import happens at the end, where it checks the installed extension.
if torch_version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null); then
  step "torch $torch_version is installed"
else
  step "installing $TORCH_SPEC with pip (a few minutes on a first run)"
  "$PYTHON" -m pip install -q "$TORCH_SPEC"
fi

# -- Python dependencies -------------------------------------------------------------------------
if "$PYTHON" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(n) is None for n in sys.argv[1:]))" \
  "${PIP_MODULES[@]}" 2>/dev/null; then
  step "Python dependencies are installed (${PIP_PACKAGES[*]})"
else
  step "installing Python dependencies with pip: ${PIP_PACKAGES[*]}"
  "$PYTHON" -m pip install -q "${PIP_PACKAGES[@]}"
fi

# -- FashionMNIST --------------------------------------------------------------------------------
apt_lists_empty() { ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; }

install_dataset() {
  local log
  log=$(mktemp)
  if apt_lists_empty; then
    step "apt-get update (the package lists are empty)"
    apt-get update -q >"$log" 2>&1 || true
  fi
  step "installing $DATASET_PACKAGE with apt-get"
  if ! apt-get install -y -q "$DATASET_PACKAGE" >"$log" 2>&1; then
    step "apt-get update, then installing $DATASET_PACKAGE again"
    if ! { apt-get update -q && apt-get install -y -q "$DATASET_PACKAGE"; } >"$log" 2>&1; then
      note "apt-get install $DATASET_PACKAGE failed ($(grep -E '^E:' "$log" | tail -n 1 || tail -n 1 "$log"));" \
        "real-data runs need it (synthetic data works without it); fix apt, then rerun this script"
    fi
  fi
  rm -f "$log"
}

if [ -e "$DATASET_DIR" ]; then
  step "FashionMNIST is at $DATASET_DIR"
elif ! command -v apt-get >/dev/null 2>&1; then
  note "FashionMNIST is missing and there is no apt-get; real-data runs need $DATASET_DIR" \
    "(the Debian package $DATASET_PACKAGE); synthetic data works without it"
elif [ "$(id -u)" != 0 ]; then
  note "FashionMNIST is missing; run: sudo apt-get update && sudo apt-get install -y $DATASET_PACKAGE"
else
  install_dataset
fi

# -- the extension -------------------------------------------------------------------------------
build_key() {
  "$PYTHON" - "$TORCH_SPEC" "${PIP_PACKAGES[@]}" <<'EOF'
import glob, hashlib, importlib.metadata, os, shutil, sys
h = hashlib.sha256()
# the environment and the interpreter's real path: `python` and `python3` are one interpreter
for part in (sys.prefix, os.path.realpath(sys.executable), sys.version, importlib.metadata.version("torch"), os.environ.get("LEADFL_FORCE_CPU", ""),
             os.environ.get("CUDA_HOME", ""), shutil.which("nvcc") or "", *sys.argv[1:]):
    h.update(part.encode() + b"\0")
for path in ["setup.py"] + sorted(p for p in glob.glob("csrc/**", recursive=True) if os.path.isfile(p)):
    h.update(path.encode() + b"\0")
    with open(path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
print(h.hexdigest())
EOF
}

# Imports leadfl_ext and sim outside this folder (so the current directory does not decide) and
# prints the folder they load from and whether the CUDA kernels are built, or nothing when the
# import fails or the two come from different folders.
installed() {
  (cd / && "$PYTHON" -c "
import os, leadfl_ext, sim
roots = {os.path.dirname(os.path.dirname(os.path.realpath(m.__file__))) for m in (leadfl_ext, sim)}
if len(roots) == 1:
    print(roots.pop(), leadfl_ext.cuda_available())" 2>/dev/null) || true
}

key=$(build_key)
state=
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
  state=$(installed)
fi
if [ "${state% *}" = "$ROOT" ]; then
  step "leadfl_ext is built and installed from this folder and its sources did not change" \
    "(delete $STAMP to force a rebuild)"
else
  step "building and installing leadfl_ext with pip install -e . (1-2 minutes, more with CUDA)"
  rm -f "$STAMP"
  # --no-build-isolation: build against the torch installed above instead of fetching another one.
  "$PYTHON" -m pip install -q --no-build-isolation -e .
  state=$(installed)
  if [ "${state% *}" != "$ROOT" ]; then
    echo "setup: error: after the install, 'import leadfl_ext, sim' does not load them from $ROOT" \
      "(is another copy first on PYTHONPATH?); run: cd / && $PYTHON -c 'import leadfl_ext, sim'" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$STAMP")"
  echo "$key" >"$STAMP"
fi
step "leadfl_ext ready (CUDA kernels: ${state##* })"
