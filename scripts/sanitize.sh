#!/usr/bin/env bash
# Builds rnnext._C with AddressSanitizer + UndefinedBehaviorSanitizer and runs the CPU test suite
# against that build. Not part of CI (a sanitized run is slow); `make sanitize` calls it.
#
# The sanitized extension is built OUT of place, into build/sanitize/, next to a copy of the Python
# package (build/sanitize/pkg/rnnext: symlinks to rnnext/*.py plus the sanitized _C), so the normal
# in-place build (rnnext/_C*.so) is never touched and the worktree stays usable during and after.
# pytest runs with `python -P` (the working directory is not put on sys.path) and
# `-o pythonpath=build/sanitize/pkg`, and the script checks that the sanitized _C is the one loaded.
#
# Python and torch are not instrumented, so libasan is LD_PRELOADed; leak detection is off because
# CPython (and torch) keep allocations alive until exit by design. Any ASan or UBSan report aborts
# the process, which fails the run.
#
# Usage: scripts/sanitize.sh [pytest args...]   (default: the whole tests/ directory, CUDA tests
# are skipped: CUDA_VISIBLE_DEVICES is emptied). Environment: PYTHON (default: scripts/python_env.sh), MAX_JOBS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$(scripts/python_env.sh)}
export MAX_JOBS=${MAX_JOBS:-1}
OUT=build/sanitize
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"

CXX_BIN=${CXX:-c++}
LIBASAN=$("$CXX_BIN" -print-file-name=libasan.so)
LIBSTDCXX=$("$CXX_BIN" -print-file-name=libstdc++.so.6)
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  [ -e "$lib" ] || { echo "sanitize: $lib not found" >&2; exit 2; }
done

echo "sanitize: building rnnext._C with $SAN into $OUT" >&2
mkdir -p "$OUT/lib" "$OUT/tmp" "$OUT/pkg/rnnext"
# distutils appends CFLAGS to the compile line (torch's ninja build reads it from there) and
# LDFLAGS to the link line. RNNEXT_CPU_ONLY: this is the CPU suite; nvcc would not take the flags.
RNNEXT_CPU_ONLY=1 CFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" \
  "$PYTHON" setup.py -q build_ext --force --build-lib "$OUT/lib" --build-temp "$OUT/tmp" >&2
SO=$(ls "$OUT"/lib/rnnext/_C*.so)
for f in rnnext/*.py; do ln -sf "$ROOT/$f" "$OUT/pkg/rnnext/$(basename "$f")"; done
ln -sfn "$ROOT/benchmarks" "$OUT/pkg/benchmarks"  # tests/test_benchmarks.py imports it
cp -f "$SO" "$OUT/pkg/rnnext/"
# (nm's output captured first: `nm | grep -q` under pipefail fails when grep exits before nm has
# written everything, and nm dies of SIGPIPE.)
SYMBOLS=$(nm -D "$OUT/pkg/rnnext/$(basename "$SO")")
grep -q __asan_init <<<"$SYMBOLS" \
  || { echo "sanitize: the built extension is not instrumented" >&2; exit 2; }

# libstdc++ is preloaded too: python does not link it, and ASan resolves the real __cxa_throw when
# it starts; without it the first C++ exception (any TORCH_CHECK) dies in asan_interceptors.cpp.
export LD_PRELOAD="$LIBASAN:$LIBSTDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_init_order=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# The CPU suite: the build has no CUDA kernels, so hide any GPU and let the CUDA tests skip.
export CUDA_VISIBLE_DEVICES=""
# Several tests start subprocesses (distributed, crash checks); they inherit the above.
export RNNEXT_EXPECT_C="$ROOT/$OUT/pkg/rnnext"

"$PYTHON" -P - <<PY
import sys
sys.path.insert(0, "$OUT/pkg")
import rnnext, rnnext._C as c
assert c.__file__.startswith("$ROOT/$OUT/pkg/rnnext"), c.__file__
print("sanitize: rnnext._C loaded from", c.__file__, file=sys.stderr)
PY

if [ $# -eq 0 ]; then set -- tests; fi
echo "sanitize: running pytest $* under ASan+UBSan" >&2
# --capture=sys: pytest's default fd capture would swallow a report written to fd 2 just before
# the abort; this way it reaches the terminal.
"$PYTHON" -P -m pytest -q -p no:cacheprovider --capture=sys -o pythonpath="$ROOT/$OUT/pkg" "$@"
echo "sanitize: clean (no ASan/UBSan report, tests passed)" >&2
