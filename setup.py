"""Build of the `leadfl_ext` extension (CPU always; CUDA when torch has CUDA and a toolkit is found).

Install torch first (the CPU build here: ``pip install torch==2.13.0``), then
``pip install --no-build-isolation -e .``: build isolation would make pip fetch an unpinned torch.
Set ``LEADFL_FORCE_CPU=1`` to skip the CUDA part on a CUDA machine.
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    if os.environ.get("LEADFL_FORCE_CPU", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    cpu_sources = ["csrc/leadfl_ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # at::parallel_for runs on one thread unless OpenMP is on at compile and at link time.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if build_cuda():
        sources = cpu_sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        return CUDAExtension(
            "leadfl_ext._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "leadfl_ext._C",
        cpu_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    name="leadfl",
    version="0.1.0",
    description="LeadFL client update as a fused PyTorch op, and a federated poisoning simulator",
    packages=find_packages(include=["leadfl_ext", "leadfl_ext.*", "sim", "sim.*"]),
    python_requires=">=3.10",
    # torch is deliberately not listed: pip would resolve it to a multi-GB CUDA build.
    install_requires=["numpy", "pyyaml", "tqdm", "matplotlib", "scikit-learn"],
    # `leadfl-sim sweep --ray`: trials as tasks on a Ray cluster (pip install -e .[ray]).
    extras_require={"ray": ["ray[default]>=2.9"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["leadfl-sim = sim.cli:main"]},
)
