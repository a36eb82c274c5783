# Every target finds or sets up its Python first (scripts/python_env.sh): an importable torch is used
# as it is (a CUDA build included), otherwise a local .venv gets torch==2.13.0 (CPU).
PYTHON := $(shell scripts/python_env.sh)
export MAX_JOBS ?= 2

.PHONY: build test bench lint clean cuda-check

build:
	$(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest -q

bench: build
	$(PYTHON) benchmarks/demo.py

# Compile-only nvcc check of csrc/cuda (no GPU needed): scripts/cuda_compile_check.sh.
cuda-check:
	PYTHON=$(PYTHON) scripts/cuda_compile_check.sh

lint:
	$(PYTHON) -m ruff check rnnext tests benchmarks setup.py

clean:
	rm -rf build rnnext/*.so
