# bnfused developer commands. `make test` is the test command; `make bench` the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA kernels are compiled whenever a toolkit exists, GPU or not, for setup.py's
# default TORCH_CUDA_ARCH_LIST unless the environment sets one.
export CUDA_HOME ?= /usr/local/cuda
PYTEST ?= $(PY) -m pytest -q -ra

.PHONY: env build test bench bn-only clean

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

build: $(VENV)/.editable
	$(PY) setup.py -q build_ext --inplace

# The default backends (compiled C++ on CPU, the best instruction set the CPU
# has); the CPU kernels again in their portable, AVX2 and plain AVX-512 builds
# (the default is AVX512_BF16 where the CPU has it), and with every output
# written by streaming stores;
# the Triton kernels under the interpreter on CPU tensors (small shapes); the
# CUDA kernels under the CPU emulator (docs/cuda.md; without a GPU the first line
# already runs tests/test_cuda_kernels.py on it), at 132 SMs in block order, with the
# persistent training kernels wherever they fit, and at 7 SMs shuffled; the
# plain-PyTorch reference.
test: build
	$(PYTEST) tests
	BNFUSED_CPU_ISA=baseline $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_ISA=avx2 $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_ISA=avx512 $(PYTEST) tests/test_cpu_kernels.py tests/test_nonfinite.py
	BNFUSED_CPU_STREAM_BYTES=0 $(PYTEST) tests/test_cpu_kernels.py
	TRITON_INTERPRET=1 BNFUSED_BACKEND=triton $(PYTEST) tests/test_triton.py tests/test_parity.py tests/test_ops.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py
	BNFUSED_BACKEND=cuda-emulated $(PYTEST) tests/test_parity.py tests/test_ops.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py
	BNFUSED_BACKEND=cuda-emulated BNFUSED_CUDA_PATH=persistent $(PYTEST) tests/test_cuda_kernels.py tests/test_parity.py tests/test_ops.py tests/test_running_stats.py tests/test_nonfinite.py
	BNFUSED_BACKEND=cuda-emulated BNFUSED_EMULATED_SMS=7 BNFUSED_EMULATED_BLOCK_ORDER=shuffled BNFUSED_EMULATED_SEED=1 $(PYTEST) tests/test_parity.py tests/test_running_stats.py
	BNFUSED_BACKEND=reference $(PYTEST) tests/test_parity.py tests/test_ops.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_fuzz.py

# Where no GPU is visible, one of its sections prints what the GPU compilers make of the
# kernels (benchmarks/codegen.py).
bench: build
	$(PY) benchmarks/bench.py $(ARGS)

# Training only BatchNorm vs all parameters vs random features (see docs/freezing.md).
bn-only: build
	$(PY) benchmarks/bn_only.py $(ARGS)

clean:
	rm -rf build *.egg-info bnfused/*.so $(VENV)/.editable
