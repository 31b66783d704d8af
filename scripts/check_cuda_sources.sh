#!/usr/bin/env bash
# Compile-checks the CUDA sources on a machine without a GPU:
#  - csrc/cuda/leadfl_kernel.cu (device code, no torch headers) with plain nvcc for sm_90;
#  - csrc/cuda/leadfl_cuda.cpp (the torch-side glue) with g++ -fsyntax-only against the installed
#    torch headers, which a CPU build of torch cannot compile into an extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! command -v nvcc >/dev/null 2>&1; then
  echo "nvcc not found: skipping the CUDA compile checks"
  exit 0
fi
nvcc -arch=sm_90 -std=c++17 -O3 -c csrc/cuda/leadfl_kernel.cu -o /tmp/leadfl_kernel_check.o
echo "ok: nvcc -arch=sm_90 compiled csrc/cuda/leadfl_kernel.cu"

torch_include=$("$PYTHON" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
py_include=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cuda_include=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include
# CPU wheels ship the c10/cuda headers but not the header CMake generates for CUDA builds.
stub=$(mktemp -d)
mkdir -p "$stub/c10/cuda/impl"
echo "#pragma once" > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
g++ -std=c++20 -fsyntax-only -w -I"$stub" $torch_include -I"$py_include" -I"$cuda_include" -I/usr/local/cuda/include \
  -Icsrc csrc/cuda/leadfl_cuda.cpp
rm -rf "$stub"
echo "ok: csrc/cuda/leadfl_cuda.cpp passes a syntax check against the torch headers"
