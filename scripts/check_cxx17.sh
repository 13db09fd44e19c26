#!/usr/bin/env bash
# Every source that does not need torch's own headers compiles as C++17 (syntax only,
# seconds): the CUDA kernels as the emulator builds them, the emulator, the CPU kernel
# bodies. torch before 2.14 builds extensions as C++17, so a C++20 construct here would
# break the build on the oldest supported torch (torch 2.11, the GPU machines' stack)
# while passing on the newest. The sources that include ATen are compiled as C++17 by
# `make check-torch-floor` (torch 2.11's headers; torch 2.14's need C++20).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
PY=${PYTHON:-.venv/bin/python}
TORCH_INCLUDE=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")

# The CUDA sources need no torch header at all; the CPU kernels only c10's scalar types.
emulated=(csrc/cuda/*.cu csrc/emulator/*.cpp tests/emulator_fixtures/*.cpp)
cpu=(csrc/cpu/kernels_*.cpp csrc/cpu/kernel_select.cpp csrc/cpu/memory_policy.cpp
     csrc/cpu/settings.cpp)
failed=0
for f in "${emulated[@]}"; do
  case $f in */register_emulated.cpp) continue ;; esac  # the CPython/torch registration
  "$CXX" -std=c++17 -fsyntax-only -x c++ -Wno-unknown-pragmas -Wno-psabi \
    -Icsrc/emulator/include -Icsrc/emulator -Icsrc/cuda -Icsrc "$f" || { echo "C++17: $f"; failed=1; }
done
for f in "${cpu[@]}"; do
  "$CXX" -std=c++17 -fsyntax-only -Wno-psabi -Icsrc -I"$TORCH_INCLUDE" "$f" ||
    { echo "C++17: $f"; failed=1; }
done
[ "$failed" = 0 ] && echo "C++17: ${#emulated[@]} CUDA/emulator and ${#cpu[@]} CPU kernel sources compile"
exit $failed
