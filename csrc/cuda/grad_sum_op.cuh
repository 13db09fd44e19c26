// The per-channel reduction of the backward, as an Op of the reduction kernels:
// sum_g and sum_gxmu = sum(g * (x - mean)), then dweight = sum_gxmu * invstd,
// dbias = sum_g and the dx coefficients, written by the block that finishes each channel.
#pragma once

#include "apply_common.cuh"
#include "grad_input.cuh"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

template <typename T, int V, Activation ACT>
struct GradSumOp {
  using A = acc_t<T>;
  using State = GradSums<A>;
  using Item = GradItem<T, V>;
  struct Chan { A mean, scale, shift; };
  static constexpr int kVec = V;
  static constexpr int kUnroll = V >= 4 ? 2 : 4;

  GradSource<T, ACT> src;
  AffineSource<A> affine;      // save_mean, save_invstd, weight, bias
  A* __restrict__ dweight;     // [C] or null
  A* __restrict__ dbias;       // [C] or null
  A* __restrict__ mean_g;      // [C] or null
  A* __restrict__ proj;        // [C] or null
  A n;

  __device__ __forceinline__ Chan channel(int64_t c) const {
    Chan ch;
    affine.load(c, ch.mean, ch.scale, ch.shift);
    return ch;
  }
  __device__ __forceinline__ Item load(int64_t off) const { return src.template load<V>(off); }

  __device__ __forceinline__ void accumulate_one(State& s, const Item& it, int j, const Chan& ch) const {
    const A xmu = to_acc(it.x.v[j]) - ch.mean;
    const A g = src.grad(it, j, xmu, ch.scale, ch.shift);
    s.g += g;
    s.gxmu += g * xmu;
  }
  // Element j of items [0, count) (one channel).
  template <int K>
  __device__ __forceinline__ State column(const Item (&items)[K], int count, int j, const Chan& ch) const {
    State s = State::zero();
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k < count) accumulate_one(s, items[k], j, ch);
    return s;
  }
  __device__ __forceinline__ void accumulate(State& s, const Item& it, const Chan& ch) const {
#pragma unroll
    for (int j = 0; j < V; ++j) accumulate_one(s, it, j, ch);
  }

  __device__ __forceinline__ void finalize(int64_t c, const State& s) const {
    const A invstd = affine.stat[c];
    if (dweight != nullptr) dweight[c] = s.gxmu * invstd;
    if (dbias != nullptr) dbias[c] = s.g;
    if (mean_g != nullptr) {
      mean_g[c] = s.g / n;
      proj[c] = s.gxmu / n * invstd * invstd;
    }
  }
};

// The op of a backward: mean_g and proj [C] acc workspace vectors, or null when dx
// needs no batch terms.
template <typename T, int V, Activation ACT>
GradSumOp<T, V, ACT> make_grad_sum_op(const BackwardParams& p, void* mean_g, void* proj) {
  using A = acc_t<T>;
  GradSumOp<T, V, ACT> op;
  op.src = GradSource<T, ACT>{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                              static_cast<const T*>(p.residual), p.mask,
                              static_cast<A>(p.activation_param)};
  op.affine = AffineSource<A>{static_cast<const A*>(p.save_mean), static_cast<const A*>(p.save_invstd),
                              static_cast<const A*>(p.weight), static_cast<const A*>(p.bias),
                              static_cast<A>(p.eps), false};
  op.dweight = static_cast<A*>(p.dweight);
  op.dbias = static_cast<A*>(p.dbias);
  op.mean_g = static_cast<A*>(mean_g);
  op.proj = static_cast<A*>(proj);
  op.n = static_cast<A>(p.shape.per_channel());
  return op;
}

}  // namespace cudak
}  // namespace bnfused
