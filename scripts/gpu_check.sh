#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a CUDA machine (no network needed):
#
#     OUT=/some/dir bash scripts/gpu_check.sh        # on the device tool: run(command="bash scripts/gpu_check.sh")
#
# Stages, in order (issue 14), each under its own time limit and all under one budget
# (GPU_CHECK_BUDGET seconds, default 500, so the script ends inside 9 minutes; a stage that would
# start with less than 15 s left is skipped and reported as such). Each runs even if an earlier one
# failed, and each writes its results as it goes: a run cut short still returns what it did.
#   info      nvidia-smi, torch / CUDA / cuDNN versions, the commit (log only)
#   build     the CUDA extension in place (TORCH_CUDA_ARCH_LIST default 9.0, MAX_JOBS default 16),
#             then a check that the ops have CUDA kernels
#   sync      scripts/cuda_sweep.py sync: per-step cost of the barrier / exchange of each path
#   tests     tests/test_cuda.py (every RNNEXT_CUDA_PATH, the new "tiled" included), then the
#             module behaviour tests on the cuda param of the device fixture (tests/conftest.py):
#             tests/test_ops.py tests/test_rnn.py tests/test_cell.py tests/test_reliability.py
#             tests/test_higher_order.py -k cuda (the float32-cuda grid: never re-run since its TF32 fix
#             of 2026-11-26; higher order: never run on a GPU)
#   sanitize  compute-sanitizer racecheck, then memcheck, on scripts/cuda_smoke.py (every path)
#   sweep     scripts/cuda_sweep.py sweep: RNNEXT_CUDA_TILE over shapes, timed, each checked
#   bench     python -m benchmarks --devices cuda (the one driver; --quick under a short limit)
#   ptxas     scripts/cuda_ptxas_report.sh: registers / spills per kernel for sm_90a (no GPU needed)
# Output in $OUT (else benchmarks/results/gpu-check/), at most 8 files, flat:
#   gpu_check.log (everything printed, as it is printed), gpu_check_summary.md (rewritten after every
#   stage), test_cuda.txt, cuda-sweep.txt (sync + sweep), cuda-ptxas-sm90a.txt, and the benchmark's
#   cuda-<gpu>[-quick].json / .md / .png. Exit status 0 only if every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RESULTS=${OUT:-$ROOT/benchmarks/results/gpu-check}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
SUMMARY="$RESULTS/gpu_check_summary.md"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

BUDGET=${GPU_CHECK_BUDGET:-500}
START=$SECONDS
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
# The lent H100 image sets CXX=/opt/gcc/bin/g++; an extension built with it crashed the process
# whenever an op raised (any TORCH_CHECK), while one built with the system g++ raised cleanly
# (benchmarks/results/h100/README.md). Prefer the system compiler; RNNEXT_CXX overrides.
if [ -n "${RNNEXT_CXX:-}" ]; then
  export CXX=$RNNEXT_CXX
elif [ -x /usr/bin/g++ ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc
fi
unset RNNEXT_CUDA_PATH RNNEXT_CUDA_TILE

NAMES=()
STATES=()
TIMES=()

write_summary() {
  {
    echo "# gpu_check summary ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, $((SECONDS - START)) s so far)"
    echo
    echo "| stage | result | seconds |"
    echo "| --- | --- | ---: |"
    for i in "${!NAMES[@]}"; do
      echo "| ${NAMES[$i]} | ${STATES[$i]} | ${TIMES[$i]} |"
    done
    echo
    if [ -f "$RESULTS/test_cuda.txt" ]; then
      echo "tests: $(grep -E '[0-9]+ (passed|failed|error)' "$RESULTS/test_cuda.txt" | tr '\n' ' ')"
    fi
    if [ -f "$RESULTS/cuda-sweep.txt" ]; then
      echo "sweep: $(grep -c MISMATCH "$RESULTS/cuda-sweep.txt") mismatching tiled plans"
    fi
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  } >"$SUMMARY"
}

# run_stage NAME MAX_SECONDS COMMAND...: runs COMMAND under a timeout of at most MAX_SECONDS and
# at most what is left of the budget; records the outcome, rewrites the summary, carries on.
run_stage() {
  local name=$1 max=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((max < left ? max : left))
  NAMES+=("$name")
  if [ "$limit" -lt 15 ]; then
    echo "===== $name: SKIPPED (time budget spent) ====="
    STATES+=("SKIPPED (budget)")
    TIMES+=(0)
    write_summary
    return
  fi
  echo
  echo "===== $name (limit ${limit} s, $(date -u +%H:%M:%S) UTC) ====="
  STATES+=("RUNNING")
  TIMES+=(0)
  write_summary
  local t0=$SECONDS
  # The stage functions are exported: timeout runs them in a child bash.
  STAGE_LIMIT=$limit timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"
  local rc=$?
  local dt=$((SECONDS - t0))
  local state
  if [ $rc -eq 0 ]; then
    state="PASS"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    state="TIMEOUT after ${limit} s"
  else
    state="FAIL (exit $rc)"
  fi
  STATES[-1]=$state
  TIMES[-1]=$dt
  write_summary
  echo "===== $name: $state in ${dt} s ====="
}

info() {
  date -u
  nvidia-smi || true
  "$PY" - <<'PYEOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "smem/block optin", getattr(p, "shared_memory_per_block_optin", "?"))
PYEOF
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS nproc=$(nproc)"
  (git rev-parse HEAD && git status --short | head -20) 2>/dev/null || true
}

build() {
  "$PY" setup.py build_ext --inplace || return $?
  "$PY" - <<'PYEOF'
import torch, rnnext  # noqa: F401
for op in ("rnnext::rnn_forward", "rnnext::rnn_backward"):
    ok = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    print(op, "CUDA kernel:", ok)
    assert ok, f"{op} has no CUDA kernel: was the extension built with CUDA?"
PYEOF
}

sync_bench() {
  set -o pipefail
  CUDA_SWEEP_BUDGET=$((STAGE_LIMIT - 10)) "$PY" scripts/cuda_sweep.py sync | tee "$RESULTS/cuda-sweep.txt"
}

tests() {
  set -o pipefail  # the status of pytest, not of tee
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "CUDA is not available: tests/test_cuda.py would only skip; counted as a failure" | tee "$RESULTS/test_cuda.txt"
    return 4
  fi
  local rc=0
  "$PY" -m pytest -q --maxfail=${GPU_CHECK_MAXFAIL:-10} ${GPU_CHECK_PYTEST_ARGS:-} -rfEs --durations=10 \
    -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$RESULTS/test_cuda.txt" || rc=1
  local on_device="tests/test_ops.py tests/test_rnn.py tests/test_cell.py tests/test_reliability.py tests/test_higher_order.py"
  echo "===== $on_device -k cuda =====" | tee -a "$RESULTS/test_cuda.txt"
  "$PY" -m pytest -q --maxfail=5 -rfE -p no:cacheprovider $on_device -k cuda 2>&1 \
    | tee -a "$RESULTS/test_cuda.txt" || rc=1
  return $rc
}

SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then SANITIZER="$d/bin/compute-sanitizer"; break; fi
  done
fi
sanitize() {
  if [ -z "$SANITIZER" ]; then
    echo "compute-sanitizer not found"
    return 3
  fi
  local rc=0
  "$SANITIZER" --tool racecheck --racecheck-report hazard --error-exitcode 9 "$PY" scripts/cuda_smoke.py || rc=1
  "$SANITIZER" --tool memcheck --error-exitcode 9 "$PY" scripts/cuda_smoke.py || rc=1
  return $rc
}

sweep() {
  set -o pipefail
  CUDA_SWEEP_BUDGET=$((STAGE_LIMIT - 10)) "$PY" scripts/cuda_sweep.py sweep | tee -a "$RESULTS/cuda-sweep.txt"
}

bench() {
  # The default grid takes a few minutes on a GPU; under a short stage limit, the quick grid.
  if [ "${STAGE_LIMIT:-0}" -lt 150 ]; then
    "$PY" -m benchmarks --devices cuda --out "$RESULTS" --quick
  else
    "$PY" -m benchmarks --devices cuda --out "$RESULTS" --budget 0.3 --min-rounds 3
  fi
}

ptxas() {
  PYTHON=$PY scripts/cuda_ptxas_report.sh "$RESULTS/cuda-ptxas-sm90a.txt" && head -n 80 "$RESULTS/cuda-ptxas-sm90a.txt"
}

export PY RESULTS SANITIZER
export -f info build sync_bench tests sanitize sweep bench ptxas

run_stage info 20 info
run_stage build 180 build
run_stage sync 35 sync_bench
run_stage tests 150 tests
run_stage sanitize 70 sanitize
run_stage sweep 50 sweep
run_stage bench 120 bench
run_stage ptxas 45 ptxas
write_summary
cat "$SUMMARY"

status=0
for s in "${STATES[@]}"; do [ "$s" = "PASS" ] || status=1; done
exit $status
