# bnfused developer commands. `make test` is the test command; `make bench` the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA kernels are compiled whenever a toolkit exists, GPU or not.
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 9.0
PYTEST ?= $(PY) -m pytest -q -ra

.PHONY: env build test test-quick bench clean

env: $(VENV)/.deps

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Editable install against the torch in the environment (no isolated build).
build: env
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PYTEST) tests
	TRITON_INTERPRET=1 BNFUSED_BACKEND=triton $(PYTEST) tests/test_parity.py tests/test_ops.py
	BNFUSED_BACKEND=reference $(PYTEST) tests/test_parity.py

bench: build
	$(PY) benchmarks/bench.py

clean:
	rm -rf build *.egg-info bnfused/*.so
