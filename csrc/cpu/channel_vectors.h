// Host-side helpers of the CPU orchestration: reusable per-call scratch and
// reading single elements of any input dtype.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "bnfused.h"

namespace bnfused {
namespace cpu {

// Per-call host scratch of n T's, reused on the calling thread: no allocation or
// zero-fill per call. Each kSlot is a separate buffer, so one call can hold several.
template <typename T, int kSlot = 0>
T* host_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

inline double element_as_double(const void* x, DType dtype, int64_t idx) {
  switch (dtype) {
    case DType::kFloat64:
      return static_cast<const double*>(x)[idx];
    case DType::kFloat16:
      return float(static_cast<const c10::Half*>(x)[idx]);
    case DType::kBFloat16:
      return float(static_cast<const c10::BFloat16*>(x)[idx]);
    default:
      return static_cast<const float*>(x)[idx];
  }
}

}  // namespace cpu
}  // namespace bnfused
