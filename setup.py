"""Build rnnext._C: a CppExtension, or a CUDAExtension when torch is a CUDA build and nvcc is found.

Build with torch already installed (no isolated build environment, which would fetch another torch):

    pip install --no-build-isolation -e .        # or: python setup.py build_ext --inplace

Environment: RNNEXT_CPU_ONLY=1 forces the CPU-only build; MAX_JOBS caps ninja's parallel jobs;
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0 and 9.0).
"""

import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _use_cuda() -> bool:
    if os.environ.get("RNNEXT_CPU_ONLY", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join("csrc", pattern)))
    return files


def _extension():
    # -fopenmp: at::parallel_for is a header template that runs serially unless the including
    # translation unit is compiled with OpenMP (the CPU kernels split batch rows between threads).
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    if _use_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        return CUDAExtension(
            "rnnext._C",
            _sources(["*.cpp", "cpu/*.cpp", "cuda/*.cpp", "cuda/*.cu"]),
            extra_link_args=["-fopenmp"],
            extra_compile_args={
                "cxx": cxx_flags + ["-DRNNEXT_WITH_CUDA"],
                "nvcc": ["-O3", "-std=c++20", "-DRNNEXT_WITH_CUDA", "--use_fast_math"],
            },
        )
    return CppExtension(
        "rnnext._C",
        _sources(["*.cpp", "cpu/*.cpp"]),
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="rnnext",
    packages=find_packages(include=["rnnext", "rnnext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
