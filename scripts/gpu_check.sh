#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a CUDA machine (no network needed):
#
#     bash scripts/gpu_check.sh
#
# Stages (each runs even if an earlier one failed; all share one time budget, GPU_CHECK_BUDGET
# seconds, default 330, so the whole script ends within about 6 minutes; a stage that would start
# with less than 15 s left is skipped and reported as such):
#   info       nvidia-smi, torch / CUDA / cuDNN versions, nvcc
#   build      the CUDA extension in place (TORCH_CUDA_ARCH_LIST default 9.0, MAX_JOBS default 16)
#   register   the ops have CUDA kernels
#   cuda-tests python -m pytest tests/test_cuda.py (stops after 5 failures)
#   bench      python -m benchmarks --devices cuda: rnnext vs nn.RNN (cuDNN), fp32 and bf16, inference
#              and training, with the path the CUDA planner picked per row
#   racecheck  compute-sanitizer --tool racecheck (shared-memory hazards) on a smoke run of every kernel
#              (scripts/cuda_smoke.py)
#   memcheck   compute-sanitizer --tool memcheck on the same smoke run
#   other-tests the rest of the test suite (its device-parametrized tests also run on CUDA)
# Output goes to $OUT if set, else benchmarks/results/: gpu_check.log (everything printed),
# test_cuda.txt / test_cuda.xml (pytest output, JUnit), cuda-<gpu>[-quick].json / .md / .png (benchmark),
# gpu_check_summary.md (one line per stage). Exit status 0 only if every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RESULTS=${OUT:-$ROOT/benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

BUDGET=${GPU_CHECK_BUDGET:-330}
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
unset RNNEXT_CUDA_PATH

NAMES=()
STATES=()
TIMES=()

# run_stage NAME MAX_SECONDS COMMAND...: runs COMMAND under a timeout of at most MAX_SECONDS and
# at most what is left of the budget; records the outcome and carries on whatever happens.
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
    return
  fi
  echo
  echo "===== $name (limit ${limit} s, $(date -u +%H:%M:%S) UTC) ====="
  local t0=$SECONDS
  # The stage functions are exported: timeout runs them in a child bash.
  STAGE_LIMIT=$limit timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"
  local rc=$?
  local dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    STATES+=("PASS")
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    STATES+=("TIMEOUT after ${limit} s")
  else
    STATES+=("FAIL (exit $rc)")
  fi
  TIMES+=("$dt")
  echo "===== $name: ${STATES[-1]} in ${dt} s ====="
}

info() {
  date -u
  nvidia-smi || true
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "smem/block optin", getattr(p, "shared_memory_per_block_optin", "?"))
EOF
  command -v nvcc && nvcc --version | tail -2
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS nproc=$(nproc)"
  (git rev-parse HEAD && git status --short | head -20) 2>/dev/null || true
}

build() {
  "$PY" setup.py build_ext --inplace
}

register() {
  "$PY" - <<'EOF'
import torch, rnnext  # noqa: F401
for op in ("rnnext::rnn_forward", "rnnext::rnn_backward"):
    ok = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    print(op, "CUDA kernel:", ok)
    assert ok, f"{op} has no CUDA kernel: was the extension built with CUDA?"
EOF
}

cuda_tests() {
  set -o pipefail  # the status of pytest, not of tee
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "CUDA is not available: tests/test_cuda.py would only skip; counted as a failure"
    return 4
  fi
  "$PY" -m pytest -q --maxfail=${GPU_CHECK_MAXFAIL:-5} ${GPU_CHECK_PYTEST_ARGS:-} -rfEs --durations=15 -p no:cacheprovider \
    --junitxml="$RESULTS/test_cuda.xml" tests/test_cuda.py | tee "$RESULTS/test_cuda.txt"
}

bench() {
  # The default grid takes a few minutes on a GPU; under a short stage limit, the quick grid.
  if [ "${STAGE_LIMIT:-0}" -lt 100 ]; then
    "$PY" -m benchmarks --devices cuda --out "$RESULTS" --quick
  else
    "$PY" -m benchmarks --devices cuda --out "$RESULTS" --budget 0.3 --min-rounds 3
  fi
}

SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then SANITIZER="$d/bin/compute-sanitizer"; break; fi
  done
fi
sanitize() {
  local tool=$1
  if [ -z "$SANITIZER" ]; then
    echo "compute-sanitizer not found"
    return 3
  fi
  "$SANITIZER" --tool "$tool" --error-exitcode 9 "$PY" scripts/cuda_smoke.py
}

other_tests() {
  "$PY" -m pytest -q ${GPU_CHECK_OTHER_ARGS:--x} -p no:cacheprovider tests --ignore=tests/test_cuda.py
}

export PY RESULTS SANITIZER
export -f info build register cuda_tests bench sanitize other_tests

run_stage info 30 info
run_stage build 240 build
run_stage register 30 register
run_stage cuda-tests 200 cuda_tests
run_stage bench 120 bench
run_stage racecheck 60 sanitize racecheck
run_stage memcheck 60 sanitize memcheck
run_stage other-tests 90 other_tests

{
  echo "# gpu_check summary ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, $((SECONDS - START)) s in total)"
  echo
  echo "| stage | result | seconds |"
  echo "| --- | --- | ---: |"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATES[$i]} | ${TIMES[$i]} |"
  done
  echo
  if [ -f "$RESULTS/test_cuda.txt" ]; then
    echo "CUDA tests: $(grep -E '(passed|failed|error)' "$RESULTS/test_cuda.txt" | tail -1)"
    echo
  fi
  echo "Files in $RESULTS: gpu_check.log, test_cuda.txt/.xml, cuda-*.json/.md/.png, gpu_check_summary.md"
} | tee "$RESULTS/gpu_check_summary.md"

status=0
for s in "${STATES[@]}"; do [ "$s" = "PASS" ] || status=1; done
exit $status
