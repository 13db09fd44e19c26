// Reads one vector of the backward inputs and forms g = dy * act'(z), with
// act' from the forward's mask or from z recomputed out of x (+ residual).
#pragma once

#include "activation.cuh"
#include "device_common.cuh"

namespace bnfused {
namespace cudak {

template <typename T, int V>
struct GradItem {
  Vec<T, V> dy, x, r;
  uint32_t bits;
};

template <typename T, Activation ACT>
struct GradSource {
  using A = acc_t<T>;
  const T* __restrict__ dy;          // [N,C,S]
  const T* __restrict__ x;           // [N,C,S]
  const T* __restrict__ residual;    // [N,C,S] or null (only read when recomputing z)
  const uint8_t* __restrict__ mask;  // forward's bit mask or null
  A slope;
  // Only relu-like activations ever get a mask (contract: uses_mask); the others compile
  // without its load (which keeps the silu kernels within their registers, spill-free).
  static constexpr bool kMasked = ACT == Activation::kRelu || ACT == Activation::kLeakyRelu;

  template <int V>
  __device__ __forceinline__ GradItem<T, V> load(int64_t off) const {
    GradItem<T, V> it;
    it.dy = load_vec<T, V>(dy, off);
    it.x = load_vec<T, V>(x, off);
    it.bits = 0;
    if constexpr (ACT != Activation::kIdentity) {
      if (kMasked && mask != nullptr) {
        it.bits = load_mask_bits<V>(mask, off);
      } else if (residual != nullptr) {
        it.r = load_vec<T, V>(residual, off);
      }
    }
    return it;
  }

  // g of element j; xmu = x - mean, scale = invstd * w, shift = b.
  template <int V>
  __device__ __forceinline__ A grad(const GradItem<T, V>& it, int j, A xmu, A scale, A shift) const {
    const A d = to_acc(it.dy.v[j]);
    if constexpr (ACT == Activation::kIdentity) {
      return d;
    } else {
      if (mask != nullptr) return grad_through_bit<ACT>(d, ((it.bits >> j) & 1u) != 0, slope);
      A z = xmu * scale + shift;
      if (residual != nullptr) z += to_acc(it.r.v[j]);
      return grad_through<ACT>(d, z, slope);
    }
  }
};

}  // namespace cudak
}  // namespace bnfused
