#!/usr/bin/env bash
# Prints the path of a Python interpreter that has torch, ninja, pybind11 and pytest (and, when they
# can be installed, onnx, onnxruntime and onnxscript for the ONNX tests), setting one up if needed.
# Uses an importable torch (a CUDA build, say) when there is one; otherwise makes .venv with
# torch==2.13.0 (the CPU wheel). All progress goes to stderr; stdout is only the path.
set -euo pipefail
cd "$(dirname "$0")/.."
need="ninja pybind11 pytest"
pick() {
  for py in "${RNNEXT_PYTHON:-}" .venv/bin/python python3 python; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import torch" >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  return 1
}
if ! py=$(pick); then
  echo "rnnext: no importable torch; creating .venv with torch==2.13.0" >&2
  python3 -m venv .venv >&2
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel >&2
  .venv/bin/python -m pip install -q "torch==2.13.0" >&2
  py=.venv/bin/python
fi
missing=$("$py" - <<'PY'
import importlib.util
print(" ".join(m for m in ("ninja", "pybind11", "pytest", "hypothesis") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "rnnext: installing $missing into $py's environment" >&2
  "$py" -m pip install -q $missing >&2
fi
# The ONNX tests' dependencies (tests/test_onnx.py): optional, so an offline machine still builds and
# tests; those tests then skip, naming the missing package.
optional=$("$py" - <<'PY'
import importlib.util
print(" ".join(m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$optional" ]; then
  echo "rnnext: installing $optional (ONNX export tests) into $py's environment" >&2
  "$py" -m pip install -q $optional >&2 \
    || echo "rnnext: could not install $optional; the ONNX export tests will skip" >&2
fi
command -v "$py" 2>/dev/null || echo "$py"
