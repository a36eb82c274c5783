#!/usr/bin/env bash
# Register / spill report of the CUDA kernels (issue 14): compiles csrc/cuda/rnn_kernels.cu with
# `nvcc -Xptxas -v` for each architecture in RNNEXT_PTXAS_ARCHS (default "90a") and writes, per
# kernel, registers per thread, stack frame, spill stores / loads, shared memory (static) and
# barriers, then the raw ptxas lines, to the file given (default
# benchmarks/results/cuda-ptxas-sm90a.txt). No GPU needed: runs here and in scripts/gpu_check.sh.
#
#     scripts/cuda_ptxas_report.sh [OUTPUT]
#
# Headers: torch's own when it is a CUDA build (c10/cuda/impl/cuda_cmake_macros.h present), else the
# CUDA torch headers that scripts/cuda_compile_check.sh unpacks into .cuda-headers/.
# The flags are setup.py's nvcc flags (-O3 -std=c++20 -lineinfo) plus the defines torch adds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUTFILE=${1:-$ROOT/benchmarks/results/cuda-ptxas-sm90a.txt}
NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
ARCHS=${RNNEXT_PTXAS_ARCHS:-90a}
command -v "$NVCC" >/dev/null || { echo "cuda_ptxas_report: nvcc not found" >&2; exit 1; }

TORCH_INC=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)
if [ -n "$TORCH_INC" ] && [ -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  HEADERS="torch's own ($TORCH_INC)"
else
  PYTHON=$PYTHON scripts/cuda_compile_check.sh --headers-only
  TORCH_INC="$ROOT/.cuda-headers/torch/include"
  HEADERS="the torch 2.14.1 CUDA wheel's (.cuda-headers)"
fi
GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}"); done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
start=$SECONDS
"$NVCC" -O3 -std=c++20 -lineinfo -DRNNEXT_WITH_CUDA -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
  -Xcompiler -fPIC "${GENCODE[@]}" -Xptxas -v -I"$ROOT/csrc" -I"$TORCH_INC" \
  -c csrc/cuda/rnn_kernels.cu -o "$TMP/k.o" 2>"$TMP/ptxas.txt"
mkdir -p "$(dirname "$OUTFILE")"
"$PYTHON" - "$TMP/ptxas.txt" "$OUTFILE" "$ARCHS" "$HEADERS" "$("$NVCC" --version | tail -1)" "$((SECONDS - start))" <<'PY'
import re, shutil, subprocess, sys
src, dst, archs, headers, nvcc, secs = sys.argv[1:]
lines = open(src).read().splitlines()
rows, cur = [], None
for ln in lines:
    m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", ln)
    if m:
        cur = {"mangled": m.group(1), "arch": m.group(2), "regs": "?", "stack": "?", "st": "?", "ld": "?",
               "smem": "0", "bar": "0"}
        rows.append(cur)
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ln)
    if m:
        cur["stack"], cur["st"], cur["ld"] = m.groups()
    m = re.search(r"Used (\d+) registers", ln)
    if m:
        cur["regs"] = m.group(1)
        b = re.search(r"used (\d+) barriers", ln)
        cur["bar"] = b.group(1) if b else "0"
        s = re.search(r"(\d+) bytes smem", ln)
        cur["smem"] = s.group(1) if s else "0"
names = [r["mangled"] for r in rows]
if names and shutil.which("c++filt"):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    for r, n in zip(rows, out):
        r["name"] = re.sub(r"rnnext::cuda::\(anonymous namespace\)::", "", n)
        r["name"] = re.sub(r"^void ", "", r["name"]).split("(")[0]
for r in rows:
    r.setdefault("name", r["mangled"])
rows.sort(key=lambda r: (r["arch"], r["name"]))
spills = [r for r in rows if r["st"] not in ("0", "?") or r["ld"] not in ("0", "?")]
with open(dst, "w") as f:
    f.write(f"# ptxas register / spill report of csrc/cuda/rnn_kernels.cu (scripts/cuda_ptxas_report.sh)\n")
    f.write(f"# archs: {archs}; {nvcc}; headers: {headers}; flags: -O3 -lineinfo; {secs} s\n")
    f.write(f"# {len(rows)} kernels; {len(spills)} with spills"
            + (": " + ", ".join(r["name"] for r in spills) if spills else "") + "\n\n")
    w = max([len(r["name"]) for r in rows] + [6])
    f.write(f"{'kernel':<{w}}  arch     regs  stack  spill-st  spill-ld  smem  bars\n")
    for r in rows:
        f.write(f"{r['name']:<{w}}  {r['arch']:<7} {r['regs']:>5}  {r['stack']:>5}  {r['st']:>8}  {r['ld']:>8}"
                f"  {r['smem']:>4}  {r['bar']:>4}\n")
    f.write("\n# raw ptxas output\n")
    f.write("\n".join(lines) + "\n")
print(f"cuda_ptxas_report: {len(rows)} kernels, {len(spills)} with spills -> {dst}")
PY
