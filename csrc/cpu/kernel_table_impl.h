// Entry points of one instruction set: dtype dispatch into the kernel bodies.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

#define BNFUSED_DTYPE_CASES(DTYPE, CALL) \
  switch (DTYPE) {                       \
    case DType::kFloat64:                \
      return CALL(double);               \
    case DType::kFloat16:                \
      return CALL(c10::Half);            \
    case DType::kBFloat16:               \
      return CALL(c10::BFloat16);        \
    default:                             \
      return CALL(float);                \
  }

inline void stats_entry(const ForwardParams& p, const Plan& pl, const StatsOut& o, int64_t a, int64_t b) {
#define BNFUSED_CALL(T) stats<T>(p, pl, o, a, b)
  BNFUSED_DTYPE_CASES(p.dtype, BNFUSED_CALL)
#undef BNFUSED_CALL
}

inline void forward_apply_entry(const ForwardParams& p, const Plan& pl, const ForwardCoefs& k, int64_t a,
                                int64_t b) {
#define BNFUSED_CALL(T) forward_apply<T>(p, pl, k, a, b)
  BNFUSED_DTYPE_CASES(p.dtype, BNFUSED_CALL)
#undef BNFUSED_CALL
}

inline void grad_sums_entry(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k,
                            const GradSumsOut& o, int64_t a, int64_t b) {
#define BNFUSED_CALL(T) grad_sums<T>(p, pl, k, o, a, b)
  BNFUSED_DTYPE_CASES(p.dtype, BNFUSED_CALL)
#undef BNFUSED_CALL
}

inline void backward_apply_entry(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t a,
                                 int64_t b) {
#define BNFUSED_CALL(T) backward_apply<T>(p, pl, k, a, b)
  BNFUSED_DTYPE_CASES(p.dtype, BNFUSED_CALL)
#undef BNFUSED_CALL
}

#undef BNFUSED_DTYPE_CASES

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
