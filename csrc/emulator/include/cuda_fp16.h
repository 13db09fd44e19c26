// Emulated <cuda_fp16.h>.
#pragma once

#include "../half_types.h"
