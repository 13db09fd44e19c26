// Per-element backward inputs shared by both backward passes:
// g = dy * act'(z), z recomputed from x [+ residual] or read from the mask.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

template <typename A>
struct BwdCoefPtrs {
  const A* mean;
  const A* alpha;
  const A* beta;
  const A* k_g;
  const A* k_x;
  const A* k_c;
  const A* xscale;
  BwdCoefPtrs offset(int64_t c) const {
    return {mean + c, alpha + c, beta + c, k_g + c, k_x + c, k_c + c, xscale + c};
  }
};

template <typename A>
BwdCoefPtrs<A> bwd_coef_ptrs(const BackwardCoefs& k) {
  return {static_cast<const A*>(k.mean),  static_cast<const A*>(k.alpha), static_cast<const A*>(k.beta),
          static_cast<const A*>(k.k_g),   static_cast<const A*>(k.k_x),   static_cast<const A*>(k.k_c),
          static_cast<const A*>(k.xscale)};
}

// Where act'(z) comes from.
enum class GradSrc { kRecompute, kRecomputeResidual, kMask };

// Raw pointers of one backward call, typed.
template <typename T>
struct BwdTensors {
  const T* dy;
  const T* x;
  const T* r;
  const uint8_t* mask;
  explicit BwdTensors(const BackwardParams& p)
      : dy(static_cast<const T*>(p.dy)),
        x(static_cast<const T*>(p.x)),
        r(static_cast<const T*>(p.residual)),
        mask(p.mask) {}
};

// g for one element: d = dy, xm = x - mean, r = residual value, keep = mask bit.
template <Activation kAct, GradSrc kSrc, typename A>
inline A grad_value(A d, A xm, A r, int32_t keep, A alpha, A beta, A slope) {
  if constexpr (kAct == Activation::kIdentity) {
    return d;
  } else if constexpr (kSrc == GradSrc::kMask) {
    return grad_through_bit<kAct>(d, keep != 0, slope);
  } else {
    A z = xm * alpha + beta;
    if constexpr (kSrc == GradSrc::kRecomputeResidual) z += r;
    return grad_through<kAct>(d, z, slope);
  }
}

// grad_value on kW floats (not for silu): grad_through_bit's selects on lanes.
template <Activation kAct, GradSrc kSrc>
inline vf grad_vec(vf d, vf xm, vf r, vi keep, vf alpha, vf beta, vf slope) {
  if constexpr (kAct == Activation::kIdentity) {
    return d;
  } else if constexpr (kSrc == GradSrc::kMask) {
    return keep != 0 ? d : (kAct == Activation::kLeakyRelu ? d * slope : vf{});
  } else {
    vf z = xm * alpha + beta;
    if constexpr (kSrc == GradSrc::kRecomputeResidual) z += r;
    return passes_vec<kAct>(z) != 0 ? d : (kAct == Activation::kLeakyRelu ? d * slope : vf{});
  }
}

// Calls Op::template run<kAct, kSrc>(args...) for the activation and gradient source of p.
template <typename Op, typename... Args>
void dispatch_grad(const BackwardParams& p, Args&&... args) {
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
