"""Build rnnext._C: a CppExtension, or a CUDAExtension when torch is a CUDA build and nvcc is found.

Build with torch already installed (no isolated build environment, which would fetch another torch):

    pip install --no-build-isolation -e .        # or: python setup.py build_ext --inplace

Environment: RNNEXT_CPU_ONLY=1 forces the CPU-only build; MAX_JOBS caps ninja's parallel jobs;
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0 and 9.0).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
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


def _cuda_library_includes():
    """cuBLAS/cuSPARSE/cuSOLVER headers (ATen/cuda/CUDAContext.h includes them) from the nvidia-*
    pip wheels, for those the toolkit at CUDA_HOME does not carry itself."""
    headers = ["cublas_v2.h", "cusparse.h", "cusolverDn.h"]
    missing = [h for h in headers if not os.path.exists(os.path.join(CUDA_HOME, "include", h))]
    if not missing:
        return []
    try:
        import nvidia  # namespace package of the nvidia-* wheels that torch depends on
    except ImportError:
        return []
    dirs = []
    for root in list(nvidia.__path__):
        for d in sorted(glob.glob(os.path.join(root, "*", "include"))):
            if d not in dirs and any(os.path.exists(os.path.join(d, h)) for h in missing):
                dirs.append(d)
    return dirs


def _extension():
    # -fopenmp: at::parallel_for is a header template that runs serially unless the including
    # translation unit is compiled with OpenMP (the CPU kernels split batch rows between threads).
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    if _use_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # No --use_fast_math: the kernels must match ATen's tanh and IEEE division.
        return CUDAExtension(
            "rnnext._C",
            _sources(["*.cpp", "cpu/*.cpp", "cuda/*.cpp", "cuda/*.cu"]),
            # cublasGemmEx (the per-step fallback). Without the toolkit's libcublas.so the symbol
            # still resolves at import: libtorch_cuda, a dependency, loads libcublas.
            libraries=["cublas"] if os.path.exists(os.path.join(CUDA_HOME, "lib64", "libcublas.so")) else [],
            extra_link_args=["-fopenmp"],
            extra_compile_args={
                # -idirafter: searched after the toolkit's own headers, so nothing is shadowed.
                "cxx": cxx_flags + ["-DRNNEXT_WITH_CUDA"]
                + [f for d in _cuda_library_includes() for f in ("-idirafter", d)],
                "nvcc": ["-O3", "-std=c++20", "-DRNNEXT_WITH_CUDA", "-lineinfo"],
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
