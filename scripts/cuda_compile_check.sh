#!/usr/bin/env bash
# Compile-only check of the CUDA sources (csrc/cuda/*.cu and the CUDA glue csrc/cuda/*.cpp) with
# nvcc, so that a CUDA syntax or type error fails CI on a machine without a GPU; also the shared
# csrc/*.cpp (op schemas, the stack, autograd, the Python bindings), which the CUDA build compiles
# against the CUDA torch's headers, a different torch version from the CPU wheel's.
#
# The CPU torch wheel lacks some CUDA headers (c10/cuda/impl/cuda_cmake_macros.h, ...), so the
# headers come from the CUDA build of torch (torch/include of the torch==2.14.1 wheel) plus the
# cuBLAS / cuSPARSE / cuSOLVER headers of the nvidia-* wheels (ATen/cuda/CUDAContext.h includes
# them). They are unpacked once into .cuda-headers/ (git-ignored). Wheels are taken from
# $RNNEXT_WHEEL_DIRS (default /opt/pypi-more/files) or fetched with `pip download --no-deps`.
#
# `scripts/cuda_compile_check.sh --headers-only` only prepares .cuda-headers/ (scripts/cuda_ptxas_report.sh
# uses it on a machine whose torch has no CUDA headers).
#
# Environment: NVCC (default: nvcc on PATH), RNNEXT_CUDA_ARCHS (default "80 90"),
# CUDA_CHECK_JOBS (parallel compiles, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE="$ROOT/.cuda-headers"
WHEEL_DIRS=${RNNEXT_WHEEL_DIRS:-/opt/pypi-more/files}
TORCH_VERSION=2.14.1
NVCC=${NVCC:-nvcc}
ARCHS=${RNNEXT_CUDA_ARCHS:-"80 90"}
JOBS=${CUDA_CHECK_JOBS:-2}
PYTHON=${PYTHON:-python3}

HEADERS_ONLY=0
[ "${1:-}" = "--headers-only" ] && HEADERS_ONLY=1
[ $HEADERS_ONLY = 1 ] || command -v "$NVCC" >/dev/null || { echo "cuda_compile_check: nvcc not found" >&2; exit 1; }

# find_wheel PATTERN PIP_SPEC: a wheel file matching PATTERN, downloading PIP_SPEC if none is found.
find_wheel() {
  local pattern=$1 spec=$2 dir f
  for dir in $WHEEL_DIRS "$CACHE/wheels"; do
    for f in "$dir"/$pattern; do
      if [ -f "$f" ]; then echo "$f"; return 0; fi
    done
  done
  mkdir -p "$CACHE/wheels"
  echo "cuda_compile_check: downloading $spec" >&2
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --dest "$CACHE/wheels" "$spec" >&2
  for f in "$CACHE/wheels"/$pattern; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  echo "cuda_compile_check: no wheel for $spec" >&2
  return 1
}

if [ ! -f "$CACHE/.complete" ]; then
  rm -rf "$CACHE/torch" "$CACHE/nvidia"
  mkdir -p "$CACHE"
  whl=$(find_wheel "torch-${TORCH_VERSION}-*manylinux*x86_64.whl" "torch==${TORCH_VERSION}")
  unzip -q -o "$whl" 'torch/include/*' -d "$CACHE"
  for lib in cublas cusparse cusolver; do
    whl=$(find_wheel "nvidia_${lib}-*.whl" "nvidia-${lib}")
    unzip -q -o "$whl" 'nvidia/*/include/*' -d "$CACHE"
  done
  touch "$CACHE/.complete"
fi

[ $HEADERS_ONLY = 0 ] || exit 0

INCLUDES=(-I"$ROOT/csrc" -I"$CACHE/torch/include" -I"$CACHE/torch/include/torch/csrc/api/include")
for d in "$CACHE"/nvidia/*/include; do INCLUDES+=(-I"$d"); done
PY_INC=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
INCLUDES+=(-I"$PY_INC")

GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}"); done

# The same defines and flags as setup.py's CUDAExtension (torch.utils.cpp_extension adds the
# __CUDA_NO_HALF_* defines; we keep them so that code relying on them fails here too).
COMMON=(-std=c++20 -O1 -DRNNEXT_WITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
        -D_GLIBCXX_USE_CXX11_ABI=1 -Xcompiler -fPIC -Xcompiler -Wall)
CU_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
          -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr
          -Werror all-warnings "${GENCODE[@]}")

OUTDIR="$CACHE/obj"
mkdir -p "$OUTDIR"
shopt -s nullglob
sources=(csrc/cuda/*.cu csrc/cuda/*.cpp csrc/*.cpp)
[ ${#sources[@]} -gt 0 ] || { echo "cuda_compile_check: no CUDA sources" >&2; exit 1; }

compile() {
  local src=$1 obj
  obj="$OUTDIR/$(basename "$src").o"
  local start=$SECONDS
  if [[ $src == *.cu ]]; then
    "$NVCC" "${COMMON[@]}" "${CU_FLAGS[@]}" "${INCLUDES[@]}" -c "$src" -o "$obj"
  else
    "$NVCC" -x c++ "${COMMON[@]}" "${INCLUDES[@]}" -c "$src" -o "$obj"
  fi
  echo "cuda_compile_check: ok $src ($((SECONDS - start)) s)"
}
status=0
pids=()
for src in "${sources[@]}"; do
  compile "$src" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ $status -ne 0 ]; then
  echo "cuda_compile_check: FAILED" >&2
  exit 1
fi
echo "cuda_compile_check: all ${#sources[@]} CUDA sources compile (archs: $ARCHS)"
