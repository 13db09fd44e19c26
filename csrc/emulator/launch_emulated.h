// The CUDA kernels of csrc/cuda run on the CPU by the emulator, on host memory.
#pragma once

#include "bnfused.h"

namespace bnfused {

void forward_emulated(const ForwardParams& p);
void backward_emulated(const BackwardParams& p);

}  // namespace bnfused
