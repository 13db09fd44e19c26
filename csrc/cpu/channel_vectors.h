// Host-side helpers of the CPU orchestration: per-channel vectors in the acc
// type (float or double) and reading single elements of any input dtype.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "bnfused.h"

namespace bnfused {
namespace cpu {

inline double acc_get(const void* p, bool dbl, int64_t c) {
  return dbl ? static_cast<const double*>(p)[c] : double(static_cast<const float*>(p)[c]);
}

inline void acc_put(void* p, bool dbl, int64_t c, double v) {
  if (dbl) static_cast<double*>(p)[c] = v;
  else static_cast<float*>(p)[c] = static_cast<float>(v);
}

// Nullable acc vector read with a default.
inline double acc_get_or(const void* p, bool dbl, int64_t c, double fallback) {
  return p ? acc_get(p, dbl, c) : fallback;
}

// A [C] vector owned here, handed to kernels as acc-typed memory.
class AccBuffer {
 public:
  AccBuffer(int64_t C, bool dbl) : dbl_(dbl), d_(dbl ? C : 0), f_(dbl ? 0 : C) {}
  void set(int64_t c, double v) { acc_put(data(), dbl_, c, v); }
  double get(int64_t c) const { return acc_get(data(), dbl_, c); }
  void* data() { return dbl_ ? static_cast<void*>(d_.data()) : static_cast<void*>(f_.data()); }
  const void* data() const {
    return dbl_ ? static_cast<const void*>(d_.data()) : static_cast<const void*>(f_.data());
  }

 private:
  bool dbl_;
  std::vector<double> d_;
  std::vector<float> f_;
};

// Per-call host scratch, reused on the calling thread: no allocation or zero-fill per call.
inline double* host_scratch(size_t n) {
  thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

inline double element_as_double(const void* x, DType dtype, int64_t idx) {
  switch (dtype) {
    case DType::kFloat64: return static_cast<const double*>(x)[idx];
    case DType::kFloat16: return float(static_cast<const c10::Half*>(x)[idx]);
    case DType::kBFloat16: return float(static_cast<const c10::BFloat16*>(x)[idx]);
    default: return static_cast<const float*>(x)[idx];
  }
}

}  // namespace cpu
}  // namespace bnfused
