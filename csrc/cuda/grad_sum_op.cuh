// The per-channel reduction of the backward, as an Op of the reduction kernels:
// sum_g and sum_gxmu = sum(g * (x - save_mean)), then dweight, dbias and the dx
// coefficients, written by the block that finishes each channel. A channel of fp32 data
// whose float sum of g * (x - mean) overflowed (a spread near float32's largest values) is
// summed again in double by the thread that finalizes it, as the statistics are. (Other
// dtypes keep torch's accumulation: double for fp64, float for fp16/bf16.)
#pragma once

#include <type_traits>

#include "apply_common.cuh"
#include "grad_input.cuh"
#include "kernels.h"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

// The per-channel coefficients of dx with batch statistics, each [C] acc, in this order in
// the workspace (kDxCoefs in kernels.h counts them): dx = (g - mean_g - (x - mean) * proj)
// * scale, with g recomputed from z = (x - mean) * scale + shift. mean_g = sum_g / n (less
// lo * proj), proj = sum(g * xhat) / n * invstd, scale = invstd * w, shift = b - lo * scale
// (lo = save_mean_lo): the elementwise pass finds them ready, the mean's low part included.
template <typename A>
struct DxCoefs {
  A* __restrict__ mean_g;
  A* __restrict__ proj;
  A* __restrict__ scale;
  A* __restrict__ shift;
  static DxCoefs at(void* base, int64_t C) {
    A* p = static_cast<A*>(base);
    if (p == nullptr) return {nullptr, nullptr, nullptr, nullptr};
    return {p, p + C, p + 2 * C, p + 3 * C};
  }
};

template <typename T, int V, Activation ACT>
struct GradSumOp {
  using A = acc_t<T>;
  using State = GradSums<A>;
  using Item = GradItem<T, V>;
  struct Chan {
    A mean, scale, shift;
  };
  static constexpr int kVec = V;
  static constexpr int kUnroll = V >= 4 ? 2 : 4;
  static constexpr bool kRedoInDouble = std::is_same<T, float>::value;
  // The mean's low part matters where the mean is a float (its rounding, 6e-8 of |mean|,
  // shows at |mean| = 1e4 std); a double mean is exact to 1e-12 std there.
  static constexpr bool kLowPart = !std::is_same<A, double>::value;

  GradSource<T, ACT> src;
  AffineSource<A> affine;   // save_mean, save_invstd, weight, bias, save_mean_lo
  A* __restrict__ dweight;  // [C] or null
  A* __restrict__ dbias;    // [C] or null
  DxCoefs<A> dx;            // written by finalize when non-null
  A n;
  ChannelWalk walk;  // for the rare channel summed again in double

  __device__ __forceinline__ Chan channel(int64_t c) const {
    Chan ch;
    load_affine(c, ch.mean, ch.scale, ch.shift);
    return ch;
  }
  __device__ __forceinline__ Item load(int64_t off) const { return src.template load<V>(off); }
  __device__ __forceinline__ void load_affine(int64_t c, A& mean, A& scale, A& shift) const {
    if constexpr (kLowPart)
      affine.load_centered(c, mean, scale, shift);
    else
      affine.load(c, mean, scale, shift);
  }

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

  // The sums are around save_mean; with its low part lo, sum(g * (x - mean)) = sum_gxmu -
  // lo * sum_g. (A zero lo changes nothing, so an Inf sum_g never meets 0 * Inf.)
  __device__ __forceinline__ void finalize(int64_t c, const State& s) const {
    const A invstd = affine.stat[c];
    const A lo = kLowPart ? affine.low_part(c) : A(0);
    A gxhat = (s.gxmu - (lo != A(0) ? lo * s.g : A(0))) * invstd;
    if constexpr (kRedoInDouble) {
      if (!(gxhat - gxhat == A(0)) && s.g - s.g == A(0) && invstd - invstd == A(0) &&
          affine.mean[c] - affine.mean[c] == A(0))
        gxhat = gxhat_in_double(c, invstd);
    }
    if (dweight != nullptr) dweight[c] = gxhat;
    if (dbias != nullptr) dbias[c] = s.g;
    if (dx.mean_g != nullptr) {
      const A pj = gxhat / n * invstd;
      dx.proj[c] = pj;
      dx.mean_g[c] = s.g / n - (lo != A(0) ? lo * pj : A(0));
      A mean, scale, shift;
      load_affine(c, mean, scale, shift);
      dx.scale[c] = scale;
      dx.shift[c] = shift;
    }
  }

  // sum(g * xhat) of a channel whose float sum overflowed while g, invstd and the mean are
  // finite: again in double, element by element, by the one thread that finalizes it.
  __device__ A gxhat_in_double(int64_t c, A invstd) const {
    A mean, scale, shift;
    affine.load_centered(c, mean, scale, shift);
    const double lo = double(affine.low_part(c));
    double sum = 0.0;
    for (int64_t b = 0; b < walk.N; ++b) {
      for (int64_t i = 0; i < walk.S; ++i) {
        const GradItem<T, 1> it = src.template load<1>(walk.offset(b, c, i));
        const A xmu = to_acc(it.x.v[0]) - mean;
        sum += double(src.grad(it, 0, xmu, scale, shift)) * (double(xmu) - lo);
      }
    }
    return A(sum * double(invstd));
  }
};

// The op of a backward: dx_coefs the kDxCoefs [C] acc workspace vectors, or null when dx
// needs no batch terms.
template <typename T, int V, Activation ACT>
GradSumOp<T, V, ACT> make_grad_sum_op(const BackwardParams& p, void* dx_coefs) {
  using A = acc_t<T>;
  GradSumOp<T, V, ACT> op;
  op.src = GradSource<T, ACT>{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                              static_cast<const T*>(p.residual), p.mask, static_cast<A>(p.activation_param)};
  op.affine = AffineSource<A>{static_cast<const A*>(p.save_mean),
                              static_cast<const A*>(p.save_invstd),
                              static_cast<const A*>(p.weight),
                              static_cast<const A*>(p.bias),
                              static_cast<A>(p.eps),
                              false,
                              static_cast<const A*>(p.training ? p.save_mean_lo : nullptr)};
  op.dweight = static_cast<A*>(p.dweight);
  op.dbias = static_cast<A*>(p.dbias);
  op.dx = DxCoefs<A>::at(dx_coefs, p.shape.C);
  op.n = static_cast<A>(p.shape.per_channel());
  op.walk = ChannelWalk::of(p.shape, p.shape.layout == Layout::kNSC);
  return op;
}

}  // namespace cudak
}  // namespace bnfused
