#!/usr/bin/env bash
# Diagnoses the segfault seen on the GPU machine (torch 2.11) when an rnnext op raises, then runs
# scripts/gpu_check.sh with pytest-xdist, so that a crashing test costs one worker, not the run.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
echo "CXX=${CXX:-unset}"; file /opt/gcc/bin/g++ | cut -c1-200; head -c 600 /opt/gcc/bin/g++ | strings | head -15
cat > /tmp/throw.py <<'PY'
import sys, torch, rnnext
mode = sys.argv[1]
x = torch.randn(3, 4)
args = (x, None, None, torch.randn(5, 4), torch.randn(5, 5), None, None, False, False)
try:
    if mode == "below_autograd":
        with torch._C._AutoDispatchBelowAutograd():
            torch.ops.rnnext.rnn_forward(*args)
    elif mode == "backward_op":
        torch.ops.rnnext.rnn_backward(x, None, x, None, None, x, x, x, False, False, [True] * 5)
    elif mode == "mm":
        torch.mm(torch.randn(2, 3), torch.randn(4, 5))
    else:
        torch.ops.rnnext.rnn_forward(*args)
    print(mode, "no error?!")
except RuntimeError as e:
    print(mode, "caught:", str(e).splitlines()[0][:90])
PY
try() { timeout 60 python3 /tmp/throw.py "$1" 2>&1 | tail -1; echo "  -> rc=${PIPESTATUS[0]}"; }
python3 setup.py -q build_ext --inplace > /tmp/build_default.log 2>&1 || tail -20 /tmp/build_default.log
for m in plain below_autograd backward_op mm; do try $m; done
cuda-gdb -q -batch -ex run -ex bt --args python3 /tmp/throw.py plain 2>&1 | grep "^#" | head -22 | cut -c1-300
readelf -SW rnnext/_C*.so | grep -E "eh_frame|gcc_except" ; readelf -d rnnext/_C*.so | grep NEEDED
echo "--- build with CXX=/usr/bin/g++ (no wrapper)"
rm -rf build rnnext/_C*.so
CXX=/usr/bin/g++ CC=/usr/bin/gcc python3 setup.py -q build_ext --inplace > /tmp/build_sys.log 2>&1 || tail -20 /tmp/build_sys.log
for m in plain backward_op; do try $m; done
if timeout 60 python3 /tmp/throw.py plain >/dev/null 2>&1; then
  echo "system g++ build raises cleanly: gpu_check uses it"; export CXX=/usr/bin/g++ CC=/usr/bin/gcc
else
  echo "system g++ build crashes too: gpu_check uses the default compiler"; rm -rf build rnnext/_C*.so
fi
echo "=== gpu_check (xdist: a crashing test fails alone)"
GPU_CHECK_BUDGET=${GPU_CHECK_BUDGET:-200} GPU_CHECK_MAXFAIL=400 GPU_CHECK_PYTEST_ARGS="-n 8" \
  GPU_CHECK_OTHER_ARGS="-n 8 --maxfail=50" bash scripts/gpu_check.sh
