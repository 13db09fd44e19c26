// Vector path of the forward elementwise pass for float, bfloat16 and float16
// storage (every activation but silu): kW float lanes, with streaming stores of
// y when the plan asks for them.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// contract::passes on kW lanes: all-ones where the gradient passes at slope 1.
template <Activation kAct>
inline vi passes_vec(vf z) {
  if constexpr (kAct == Activation::kRelu)
    return ~(z <= vf{});
  else
    return z > vf{};
}

// contract::activate on kW lanes.
template <Activation kAct>
inline vf activate_vec(vf z, vf slope) {
  if constexpr (kAct == Activation::kRelu)
    return z < vf{} ? vf{} : z;  // keeps NaN
  else if constexpr (kAct == Activation::kLeakyRelu)
    return z > vf{} ? z : z * slope;
  else
    return z;
}

// The kW elements at i: z = (x - m) * a + b (x * a + b when not kCentered)
// [+ residual], their mask bits at `flag`, y = act(z).
template <typename T, Activation kAct, bool kRes, bool kMask, bool kCentered>
inline void forward_lanes(const T* __restrict x, const T* __restrict r, T* __restrict y,
                          int32_t* __restrict flag, int64_t i, vf m, vf a, vf b, vf slope, bool stream) {
  const vf xv = loadv(x + i);
  vf z = kCentered ? (xv - m) * a + b : xv * a + b;
  if constexpr (kRes) z += loadv(r + i);
  if constexpr (kMask) {
    const vi bit = passes_vec<kAct>(z) & 1;
    std::memcpy(flag, &bit, sizeof bit);
  }
  store_out(y + i, activate_vec<kAct>(z, slope), stream);
}

// forward_piece in vectors, len >= kW; a ragged tail is done as the last kW
// elements again (the overlap is rewritten with the same values).
template <typename T, Activation kAct, bool kRes, bool kMask, int kStride, bool kCentered>
inline void forward_piece_vec(const T* __restrict x, const T* __restrict r, T* __restrict y,
                              int32_t* __restrict flags, int64_t len, const float* __restrict m,
                              const float* __restrict al, const float* __restrict be, float slope,
                              bool stream) {
  const vf sl = splat(slope);
  auto coef = [](const float* a, int64_t i) { return kStride ? loadv(a + i) : splat(a[0]); };
  auto lanes = [&](int64_t i) {
    forward_lanes<T, kAct, kRes, kMask, kCentered>(x, r, y, kMask ? flags + i : nullptr, i,
                                                   kCentered ? coef(m, i) : vf{}, coef(al, i), coef(be, i),
                                                   sl, stream);
  };
  int64_t i = 0;
  for (; i + kW <= len; i += kW) lanes(i);
  if (i < len) lanes(len - kW);
}

// Segments with kW <= S: vectors run over [i, end) regardless of plane
// boundaries, so a 49-element plane costs about 3 vectors instead of 4 plus a
// run of its own, and stores stay aligned to the start of the range. A vector
// spans at most two planes; lanes before the boundary take plane c's
// coefficients, the rest plane c + 1's. `c` and `next` (the end of c's plane)
// describe element i; `flags` holds the bits from element i on. Returns the
// first element not done (< kW from end).
template <typename T, Activation kAct, bool kRes, bool kMask>
inline int64_t forward_planes_vec(const T* __restrict x, const T* __restrict r, T* __restrict y,
                                  int32_t* __restrict flags, int64_t i, int64_t end, int64_t c, int64_t next,
                                  int64_t S, int64_t C, const float* __restrict m, const float* __restrict al,
                                  const float* __restrict be, float slope, bool stream) {
  const vf sl = splat(slope);
  const vi lanes = lane_index();
  vf vm = splat(m[c]), va = splat(al[c]), vb = splat(be[c]);
  const int64_t i0 = i;
  for (; i + kW <= end; i += kW) {
    vf cm = vm, ca = va, cb = vb;
    if (i + kW > next) {  // the vector crosses into the next plane
      c = c + 1 == C ? 0 : c + 1;
      vm = splat(m[c]), va = splat(al[c]), vb = splat(be[c]);
      const vi first = lanes < static_cast<int32_t>(next - i);
      cm = first ? cm : vm, ca = first ? ca : va, cb = first ? cb : vb;
      next += S;
    }
    forward_lanes<T, kAct, kRes, kMask, true>(x, r, y, kMask ? flags + (i - i0) : nullptr, i, cm, ca, cb, sl,
                                              stream);
  }
  return i;
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
