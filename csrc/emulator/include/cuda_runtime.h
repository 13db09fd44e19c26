// Emulated <cuda_runtime.h>: found before any CUDA toolkit on the include path
// of the emulated build, so the csrc/cuda sources compile unchanged for the CPU.
#pragma once

#include "../device.h"
#include "../runtime.h"
