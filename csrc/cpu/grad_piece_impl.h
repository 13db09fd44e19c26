// Per-element backward inputs shared by both backward passes:
// g = dy * act'(z) (z recomputed from x [+ residual], or read from the mask)
// and xm = x - mean, written to acc-typed buffers.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

template <typename A> struct BwdCoefPtrs {
  const A* mean;
  const A* scale;
  const A* bias;
  const A* dx_scale;
  const A* mean_g;
  const A* q;
  BwdCoefPtrs offset(int64_t c) const {
    return {mean + c, scale + c, bias + c, dx_scale + c, mean_g + c, q + c};
  }
};

template <typename A> BwdCoefPtrs<A> bwd_coef_ptrs(const BackwardCoefs& k) {
  return {static_cast<const A*>(k.mean),     static_cast<const A*>(k.scale),
          static_cast<const A*>(k.bias),     static_cast<const A*>(k.dx_scale),
          static_cast<const A*>(k.mean_g),   static_cast<const A*>(k.q)};
}

// Where act'(z) comes from.
enum class GradSrc { kRecompute, kRecomputeResidual, kMask };

// Raw pointers of one backward call, typed.
template <typename T> struct BwdTensors {
  const T* dy;
  const T* x;
  const T* r;
  const uint8_t* mask;
  explicit BwdTensors(const BackwardParams& p)
      : dy(static_cast<const T*>(p.dy)), x(static_cast<const T*>(p.x)),
        r(static_cast<const T*>(p.residual)), mask(p.mask) {}
};

// Mask bits [idx, idx + len) as 0/1 bytes; whole bytes go through a constant-shift loop that vectorizes.
inline void unpack_bits(const uint8_t* mask, int64_t idx, int64_t len, uint8_t* flags) {
  int64_t i = 0;
  for (; i < len && ((idx + i) & 7) != 0; ++i) flags[i] = (mask[(idx + i) >> 3] >> ((idx + i) & 7)) & 1;
  const uint8_t* bytes = mask + ((idx + i) >> 3);
  const int64_t whole = (len - i) >> 3;
  for (int64_t j = 0; j < whole; ++j)
    for (int b = 0; b < 8; ++b) flags[i + j * 8 + b] = (bytes[j] >> b) & 1;
  for (i += whole * 8; i < len; ++i) flags[i] = (mask[(idx + i) >> 3] >> ((idx + i) & 7)) & 1;
}

// Elements [idx, idx + len) of memory (one channel when kStride == 0).
template <typename T, Activation kAct, GradSrc kSrc, int kStride, typename A>
inline void grad_piece(const BwdTensors<T>& t, int64_t idx, int64_t len, const BwdCoefPtrs<A>& k,
                       A slope, A* g, A* xm) {
  if constexpr (kSrc == GradSrc::kMask && kAct != Activation::kIdentity) {
    constexpr int64_t kSub = 256;
    uint8_t flags[kSub];
    const A neg_slope = kAct == Activation::kLeakyRelu ? slope : A(0);
    for (int64_t s0 = 0; s0 < len; s0 += kSub) {
      const int64_t m = min64(kSub, len - s0);
      unpack_bits(t.mask, idx + s0, m, flags);
      const T* dy = t.dy + idx + s0;
      const T* x = t.x + idx + s0;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t ci = (s0 + i) * kStride;
        const A d = load<A>(dy[i]);
        // relu: exact zeros where masked off (a select, not a multiply, as torch).
        g[s0 + i] = flags[i] ? d : (kAct == Activation::kLeakyRelu ? d * neg_slope : A(0));
        xm[s0 + i] = load<A>(x[i]) - k.mean[ci];
      }
    }
    return;
  }
  const T* dy = t.dy + idx;
  const T* x = t.x + idx;
  for (int64_t i = 0; i < len; ++i) {
    const int64_t ci = i * kStride;
    const A xmv = load<A>(x[i]) - k.mean[ci];
    const A d = load<A>(dy[i]);
    if constexpr (kAct == Activation::kIdentity) {
      g[i] = d;
    } else {
      A z = xmv * k.scale[ci] + k.bias[ci];
      if constexpr (kSrc == GradSrc::kRecomputeResidual) z += load<A>(t.r[idx + i]);
      g[i] = grad_through<kAct>(d, z, slope);
    }
    xm[i] = xmv;
  }
}

// Calls Op::template run<kAct, kSrc>(args...) for the activation and gradient source of p.
template <typename Op, typename... Args> void dispatch_grad(const BackwardParams& p, Args&&... args) {
  const bool mask = p.mask != nullptr, res = p.residual != nullptr;
  switch (p.activation) {
    case Activation::kRelu:
      if (mask) return Op::template run<Activation::kRelu, GradSrc::kMask>(args...);
      if (res) return Op::template run<Activation::kRelu, GradSrc::kRecomputeResidual>(args...);
      return Op::template run<Activation::kRelu, GradSrc::kRecompute>(args...);
    case Activation::kLeakyRelu:
      if (mask) return Op::template run<Activation::kLeakyRelu, GradSrc::kMask>(args...);
      if (res) return Op::template run<Activation::kLeakyRelu, GradSrc::kRecomputeResidual>(args...);
      return Op::template run<Activation::kLeakyRelu, GradSrc::kRecompute>(args...);
    case Activation::kSilu:
      if (res) return Op::template run<Activation::kSilu, GradSrc::kRecomputeResidual>(args...);
      return Op::template run<Activation::kSilu, GradSrc::kRecompute>(args...);
    default:
      return Op::template run<Activation::kIdentity, GradSrc::kRecompute>(args...);
  }
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
