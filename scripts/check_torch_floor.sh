#!/usr/bin/env bash
# The oldest stack bnfused supports, built and tested: the GPU machines' software
# (Python 3.12, torch 2.11.0, Triton 3.6.0). A fresh venv, the editable install with
# --no-build-isolation --no-deps (what benchmarks/gpu_check.sh does there), then the CPU
# suites, the Triton kernels under the interpreter and the CUDA kernels under the emulator.
#
#   scripts/check_torch_floor.sh            CUDA kernels compiled too (TORCH_CUDA_ARCH_LIST=9.0)
#   BNFUSED_CUDA=0 scripts/check_torch_floor.sh   C++ CPU kernels and the emulator only (CI)
#   FLOOR_TORCH=2.11.0 FLOOR_TRITON=3.6.0 FLOOR_PYTHON=python3.12   the stack to check
#   FLOOR_DIR=.floor                        where the venv and the copy of the tree live
#   FLOOR_TESTS="tests/test_ops.py ..."    the default-backend suites to run
#
# It tests a copy of the working tree (tracked and untracked, not ignored files), so the
# build here never touches the .venv build in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TORCH_VERSION=${FLOOR_TORCH:-2.11.0}
TRITON_VERSION=${FLOOR_TRITON:-3.6.0}
DIR=${FLOOR_DIR:-$REPO/.floor}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

find_python() {
  local want=${FLOOR_PYTHON:-python3.12} p
  for p in "$want" "$(pyenv prefix 3.12 2>/dev/null)/bin/python3.12" /usr/bin/python3.12; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
  # pyenv installs versions it does not put on PATH.
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  echo "check_torch_floor: no Python 3.12 found (set FLOOR_PYTHON)" >&2
  return 1
}

stage() { echo "== floor: $*"; }
t0=$(date +%s)

VENV=$DIR/venv-torch$TORCH_VERSION
if [ ! -f "$VENV/.ready" ]; then
  stage "venv: $(find_python) torch==$TORCH_VERSION triton==$TRITON_VERSION"
  rm -rf "$VENV"
  "$(find_python)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Triton 3.6's interpreter reads scalar arguments with int() of a 1-element array,
  # which NumPy 2.4 refuses.
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" \
    "numpy<2.4" pytest ninja "setuptools>=64" wheel
  touch "$VENV/.ready"
fi
PY=$VENV/bin/python
"$PY" -c "import sys, torch, triton; print('floor:', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"

stage "copy of the tree"
SRC=$DIR/src
mkdir -p "$SRC"
# Replace the sources, keep build/ (ninja rebuilds what changed, by mtime).
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$SRC"

stage "pip install --no-build-isolation --no-deps -e . (BNFUSED_CUDA=${BNFUSED_CUDA:-auto})"
(cd "$SRC" && BNFUSED_EMULATED=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .)
(cd "$SRC" && "$PY" -c "import bnfused, pprint; pprint.pprint(bnfused.backends())")

TESTS=${FLOOR_TESTS:-tests/test_contract.py tests/test_errors.py tests/test_ops.py tests/test_parity.py tests/test_running_stats.py tests/test_nonfinite.py tests/test_cpu_kernels.py tests/test_torch_compat.py tests/test_settings.py tests/test_emulator.py}
PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
cd "$SRC"
stage "default backends"
"${PYTEST[@]}" $TESTS
stage "Triton under the interpreter"
TRITON_INTERPRET=1 BNFUSED_BACKEND=triton "${PYTEST[@]}" tests/test_triton.py tests/test_parity.py tests/test_ops.py
stage "CUDA kernels under the emulator"
BNFUSED_BACKEND=cuda-emulated "${PYTEST[@]}" tests/test_parity.py tests/test_ops.py tests/test_running_stats.py
echo "floor: torch $TORCH_VERSION passed in $(( $(date +%s) - t0 ))s"
