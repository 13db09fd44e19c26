// Vector path of the forward elementwise pass for float, bfloat16 and float16
// storage (every activation but silu): kW float lanes, with streaming stores of
// y when the plan asks for them.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

template <Activation kAct> inline vf activate_vec(vf z, vf slope) {
  if constexpr (kAct == Activation::kRelu) return z < vf{} ? vf{} : z;  // keeps NaN
  else if constexpr (kAct == Activation::kLeakyRelu) return z > vf{} ? z : z * slope;
  else return z;
}

// forward_piece in vectors, len >= kW; a ragged tail is done as the last kW
// elements again (the overlap is rewritten with the same values).
template <typename T, Activation kAct, bool kRes, bool kMask, int kStride, bool kCentered>
inline void forward_piece_vec(const T* __restrict x, const T* __restrict r, T* __restrict y,
                              int32_t* __restrict flags, int64_t len,
                              const float* __restrict m, const float* __restrict al,
                              const float* __restrict be, float slope, bool stream) {
  const vf sl = splat(slope);
  auto coef = [](const float* a, int64_t i) { return kStride ? loadv(a + i) : splat(a[0]); };
  auto lanes = [&](int64_t i) {
    const vf xv = loadv(x + i);
    vf z = kCentered ? (xv - coef(m, i)) * coef(al, i) + coef(be, i) : xv * coef(al, i) + coef(be, i);
    if constexpr (kRes) z += loadv(r + i);
    if constexpr (kMask) {
      const vi bit = (z > vf{}) & 1;
      std::memcpy(flags + i, &bit, sizeof bit);
    }
    store_out(y + i, activate_vec<kAct>(z, sl), stream);
  };
  int64_t i = 0;
  for (; i + kW <= len; i += kW) lanes(i);
  if (i < len) lanes(len - kW);
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
