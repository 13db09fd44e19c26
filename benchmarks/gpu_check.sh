#!/usr/bin/env bash
# The whole GPU check in one command, for a lent H100/H200 (no network, no venv):
#   build (sm_90) -> bnfused.backends() -> tests with BNFUSED_BACKEND=cuda, the CUDA kernel
#   tests again with BNFUSED_CUDA_PATH=persistent, then BNFUSED_BACKEND=triton
#   -> compute-sanitizer on a small workload -> full benchmark (the CUDA kernels' two-pass
#   and persistent paths side by side).
# A failed build stops the check at once, naming the step and the command that reruns it;
# every later step runs even when an earlier one fails. Each exit status is recorded in
# status.txt and the script exits non-zero at the end if any step failed.
#
#   benchmarks/gpu_check.sh [OUT_DIR]         (default: $OUT, else benchmarks/results/gpu-<date>)
#   GPU_CHECK_BUDGET_S=540                 total wall-clock budget in seconds
#   BENCH_ARGS="--no-e2e ..."              extra arguments for python -m benchmarks.bench
#   SKIP_BUILD=1                           use the extension already built
#   BNFUSED_COMMIT=<hash>                  the commit to report when the tree has no .git
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
STAMP=$(date +%Y-%m-%d-%H%M)
DIR=${1:-${OUT:-$REPO/benchmarks/results/gpu-$STAMP}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
BUDGET=${GPU_CHECK_BUDGET_S:-540}
START=$(date +%s)
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")")"; do
    if [ -x "$c/bin/nvcc" ]; then export CUDA_HOME=$c; break; fi
  done
fi
FAILED=0
: > "$DIR/status.txt"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP_S RESERVE_S CMD...: run CMD with a timeout of min(CAP, time left - RESERVE),
# log to NAME.log, record the exit status (124 = timed out).
step() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local limit=$(( $(left) - reserve )); [ "$limit" -gt "$cap" ] && limit=$cap
  [ "$limit" -lt 10 ] && limit=10
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=15 "$limit" "$@" > "$DIR/$name.log" 2>&1
  local rc=$?
  printf '%-16s rc=%-4s %4ss  %s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$*" | tee -a "$DIR/status.txt"
  [ "$rc" -ne 0 ] && FAILED=1 && tail -n 15 "$DIR/$name.log"
  return 0
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "${BNFUSED_COMMIT:-unknown} (BNFUSED_COMMIT)") $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | head -c1 | sed 's/./(dirty)/')"
  echo "python: $PY $($PY --version 2>&1)"
  echo "CUDA_HOME: ${CUDA_HOME:-not found}  TORCH_CUDA_ARCH_LIST: ${TORCH_CUDA_ARCH_LIST:-setup.py default}"
  [ -n "${CUDA_HOME:-}" ] && "$CUDA_HOME/bin/nvcc" --version | tail -n 2
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$DIR/versions.txt" 2>&1
git -C "$REPO" log -1 --format='%H %s' > "$DIR/commit.txt" 2>&1 ||
  echo "${BNFUSED_COMMIT:-unknown} (no .git here; from BNFUSED_COMMIT)" > "$DIR/commit.txt"
git -C "$REPO" status --short >> "$DIR/commit.txt" 2>/dev/null
nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$DIR/nvidia-smi.txt"
cat "$DIR/versions.txt"

step_ok() { grep -q "^$1 .*rc=0 " "$DIR/status.txt"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # Editable install against the installed torch; no index, no dependency resolution.
  step build 300 200 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
  if ! step_ok build; then
    step build_inplace 240 200 "$PY" setup.py build_ext --inplace
  fi
  # Nothing after the build means anything without it: stop here, naming the step.
  if ! step_ok build && ! step_ok build_inplace; then
    {
      echo "gpu_check: FAILED at step 'build' (logs: $DIR/build.log, $DIR/build_inplace.log);"
      echo "the first error:"
      grep -m1 -B2 -A6 -E "error:|Error" "$DIR/build.log" || tail -n 20 "$DIR/build.log"
      echo "rerun the step alone with:"
      echo "  cd $REPO && $PY -m pip install --no-build-isolation --no-deps --no-index -v -e ."
    } | tee -a "$DIR/status.txt"
    exit 1
  fi
fi
step backends 60 180 "$PY" -c "import bnfused, pprint; pprint.pprint(bnfused.backends())"
cat "$DIR/backends.log"

step test_cuda 120 180 env BNFUSED_BACKEND=cuda "$PY" -m pytest -q -ra -p no:cacheprovider tests \
  --junitxml="$DIR/test_cuda.xml"
# The CUDA kernels again with the persistent training path wherever it fits.
step test_persistent 60 150 env BNFUSED_BACKEND=cuda BNFUSED_CUDA_PATH=persistent "$PY" -m pytest -q -ra \
  -p no:cacheprovider tests/test_cuda_kernels.py tests/test_persistent.py --junitxml="$DIR/test_persistent.xml"
step test_triton 120 150 env BNFUSED_BACKEND=triton "$PY" -m pytest -q -ra -p no:cacheprovider tests \
  --junitxml="$DIR/test_triton.xml"

SANITIZER=""
for c in "$(command -v compute-sanitizer)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
         "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer"; do
  if [ -n "$c" ] && [ -x "$c" ]; then SANITIZER=$c; break; fi
done
if [ -n "$SANITIZER" ]; then
  # No caching allocator, so an out-of-bounds access hits unallocated memory and is reported.
  step sanitizer 90 130 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
    --error-exitcode 99 "$PY" scripts/sanitize_small.py
else
  echo "sanitizer        skipped (compute-sanitizer not found)" | tee -a "$DIR/status.txt"
fi

# The benchmark gets what is left as its own time limit: its sections share it and
# the report is written before the step's timeout.
BENCH_LIMIT=$(( $(left) - 10 )); [ "$BENCH_LIMIT" -lt 60 ] && BENCH_LIMIT=60
step bench 600 10 "$PY" -m benchmarks.bench --device cuda --time-limit-s "$(( BENCH_LIMIT - 15 ))" \
  --out-dir "$DIR" ${BENCH_ARGS:-}
tail -n 60 "$DIR/bench.log"

echo "total $(( $(date +%s) - START ))s; results in $DIR" | tee -a "$DIR/status.txt"
cat "$DIR/status.txt"
exit $FAILED
