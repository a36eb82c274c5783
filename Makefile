# Every target finds or sets up its Python first (scripts/python_env.sh): an importable torch is used
# as it is (a CUDA build included), otherwise a local .venv gets torch==2.13.0 (CPU).
PYTHON := $(shell scripts/python_env.sh)
export MAX_JOBS ?= 2

.PHONY: build test bench lint clean cuda-check sanitize

build:
	$(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest -q

# The benchmark suite, one driver for the CPU and CUDA (python -m benchmarks --help): writes
# benchmarks/results/<machine>.{json,md,png}; the CPU on torch's default thread count unless --threads.
# Options pass through BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick" or BENCH_ARGS="--cases tutorial".
# matplotlib (for the plot) is installed when missing; if that fails the run notes the plot as skipped.
bench: build
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PYTHON) -m pip install -q matplotlib \
		|| echo "rnnext: matplotlib could not be installed; the benchmark plot will be skipped" >&2
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

# Compile-only nvcc check of csrc/cuda (no GPU needed): scripts/cuda_compile_check.sh.
cuda-check:
	PYTHON=$(PYTHON) scripts/cuda_compile_check.sh

# ASan + UBSan build of the extension (out of place, in build/sanitize/) and the CPU test suite run
# against it; not in CI (slow). PYTEST_ARGS narrows the run, e.g. PYTEST_ARGS=tests/test_ops.py.
sanitize:
	PYTHON=$(PYTHON) scripts/sanitize.sh $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check rnnext tests benchmarks examples setup.py

clean:
	rm -rf build rnnext/*.so
