// Emulated <cuda_bf16.h>.
#pragma once

#include "../half_types.h"
