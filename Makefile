# bnfused developer commands. `make test` is the test command; `make bench` the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA kernels are compiled whenever a toolkit exists, GPU or not, for setup.py's
# default TORCH_CUDA_ARCH_LIST unless the environment sets one.
export CUDA_HOME ?= /usr/local/cuda
PYTEST ?= $(PY) -m pytest -q -ra

.PHONY: env build lint format test check-torch-floor bench bn-only clean

env: $(VENV)/.deps

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Editable install against the torch in the environment (no isolated build),
# registered once; the extension is then built in place, incrementally.
$(VENV)/.editable: $(VENV)/.deps pyproject.toml
	BNFUSED_EXT=0 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# BNFUSED_EMULATED=1: also the CUDA kernels for the CPU emulator, which the tests run.
build: $(VENV)/.editable
	BNFUSED_EMULATED=1 $(PY) setup.py -q build_ext --inplace

# Style and static checks, run first by .ci/run (well under a minute): ruff (lint and
# format), mypy on the op and modules layers, clang-format on csrc/. `make format` fixes
# what the formatters can.
CSRC = $(shell git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'tests/emulator_fixtures/*')
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run -Werror --style=file $(CSRC)

format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i --style=file $(CSRC)

# The sources that need no ATen header compile as C++17 (the oldest supported torch's
# standard; scripts/check_cxx17.sh). Then the default backends (compiled C++ on CPU,
# the best instruction set the CPU has); the CPU kernels again in their portable, AVX2 and plain AVX-512 builds
# (the default is AVX512_BF16 where the CPU has it), and with every output
# written by streaming stores;
# the Triton kernels under the interpreter on CPU tensors (small shapes); the
# CUDA kernels under the CPU emulator (docs/cuda.md; without a GPU the first line
# already runs tests/test_cuda_kernels.py on it), at 132 SMs in block order, with the
# persistent training kernels wherever they fit, and at 7 SMs shuffled; the
# plain-PyTorch reference.
test: build
	scripts/check_cxx17.sh
	$(PYTEST) tests
	BNFUSED_CPU_ISA=baseline $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_ISA=avx2 $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_ISA=avx512 $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_STREAM_BYTES=0 $(PYTEST) tests/test_cpu_kernels.py
	TRITON_INTERPRET=1 BNFUSED_BACKEND=triton $(PYTEST) tests/test_triton.py tests/test_parity.py tests/test_ops.py tests/test_op_boundary.py tests/test_vmap.py tests/test_func.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py
	BNFUSED_BACKEND=cuda-emulated $(PYTEST) tests/test_parity.py tests/test_ops.py tests/test_op_boundary.py tests/test_vmap.py tests/test_func.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py
	BNFUSED_BACKEND=cuda-emulated BNFUSED_CUDA_PATH=persistent $(PYTEST) tests/test_cuda_kernels.py tests/test_parity.py tests/test_ops.py tests/test_running_stats.py tests/test_nonfinite.py
	BNFUSED_BACKEND=cuda-emulated BNFUSED_EMULATED_SMS=7 BNFUSED_EMULATED_BLOCK_ORDER=shuffled BNFUSED_EMULATED_SEED=1 $(PYTEST) tests/test_parity.py tests/test_running_stats.py
	BNFUSED_BACKEND=reference $(PYTEST) tests/test_parity.py tests/test_ops.py tests/test_op_boundary.py tests/test_vmap.py tests/test_func.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py

# The oldest supported stack (torch 2.11, Python 3.12, Triton 3.6) in a fresh venv under
# .floor/: editable install without build isolation, CPU, Triton-interpreter and emulator
# suites. BNFUSED_CUDA=0 skips the CUDA kernels (the C++ standard of the rest is what varies).
check-torch-floor:
	scripts/check_torch_floor.sh

# Where no GPU is visible, its last sections print the CUDA kernels' memory traffic under
# the emulator and what the GPU compilers make of the kernels (inspection/). The report is
# marked UNRELIABLE when the machine was busy (benchmarks/reliability.py).
bench: build
	$(PY) -m benchmarks.bench $(ARGS)

# Training only BatchNorm vs all parameters vs random features (see docs/freezing.md).
bn-only: build
	$(PY) -m examples.bn_only $(ARGS)

clean:
	rm -rf build *.egg-info bnfused/*.so $(VENV)/.editable
