// Headers the per-instruction-set kernel bodies use. Included before any
// `#pragma GCC target`, so everything declared here keeps the default target
// and no inline function is emitted twice with different instruction sets.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "contract_math.h"
#include "cpu/cpu_common.h"
