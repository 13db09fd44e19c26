// The per-channel reduction of the forward statistics (training), as an Op of the
// reduction kernels (reduce_ncs.cuh, reduce_nsc.cuh, persistent.cuh): Welford
// mean/M2 over (N, S), then save_mean, save_invstd, mean_lo and the running-stat
// update in the block that finishes each channel. Each channel is accumulated
// relative to a pivot, its first element: with |mean| >> std the deviations stay
// exact in the accumulation type, as they would not around zero. A channel whose
// sums come out non-finite is taken again in double by the thread that finalizes it.
#pragma once

#include "contract_math.h"
#include "device_common.cuh"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

template <typename T, int V>
struct StatsOp {
  using A = acc_t<T>;
  using State = Welford<A>;
  using Item = Vec<T, V>;
  struct Chan {
    A pivot;
  };
  static constexpr int kVec = V;
  static constexpr int kUnroll = 4;

  const T* __restrict__ x;       // [N,C,S]
  A* __restrict__ save_mean;     // [C]
  A* __restrict__ save_invstd;   // [C]
  A* __restrict__ mean_lo;       // [C] workspace: batch mean - save_mean (save_mean's rounding error)
  A* __restrict__ running_mean;  // [C] or null
  A* __restrict__ running_var;   // [C] or null
  A n, eps, momentum;
  ChannelWalk walk;  // where channel c's elements are (its first: the pivot)

  // The channel's first element, or 0 when it is not finite (NaN/Inf then propagate as unshifted).
  __device__ __forceinline__ A pivot(int64_t c) const {
    const A v = to_acc(x[walk.offset(0, c, 0)]);
    return v - v == A(0) ? v : A(0);
  }
  __device__ __forceinline__ Chan channel(int64_t c) const { return {pivot(c)}; }
  __device__ __forceinline__ Item load(int64_t off) const { return load_vec<T, V>(x, off); }

  // V elements of one channel: exact two-pass on the vector, then one Chan merge.
  __device__ __forceinline__ void accumulate(State& s, const Item& it, const Chan& ch) const {
    A v[V], sum = A(0);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      v[j] = to_acc(it.v[j]) - ch.pivot;
      sum += v[j];
    }
    const A mean = sum * (A(1) / A(V));
    A m2 = A(0);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A d = v[j] - mean;
      m2 += d * d;
    }
    s = State::merge(s, State{mean, m2, A(V)});
  }
  __device__ __forceinline__ void accumulate_one(State& s, const Item& it, int j, const Chan& ch) const {
    s.push(to_acc(it.v[j]) - ch.pivot);
  }
  // Element j of items [0, count) (one channel): exact two-pass over the registers, one
  // division instead of a Welford step per element.
  template <int K>
  __device__ __forceinline__ State column(const Item (&items)[K], int count, int j, const Chan& ch) const {
    A sum = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k < count) sum += to_acc(items[k].v[j]) - ch.pivot;
    if (count == 0) return State::zero();
    const A n = A(count);
    const A mean = sum / n;
    A m2 = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k < count) {
        const A d = to_acc(items[k].v[j]) - ch.pivot - mean;
        m2 += d * d;
      }
    }
    return State{mean, m2, n};
  }

  __device__ __forceinline__ void finalize(int64_t c, const State& s) const {
    const A p = pivot(c);
    const A mean = p + s.mean;
    if (!(mean - mean == A(0) && s.m2 - s.m2 == A(0))) return finalize_in_double(c);
    // pivot + s.mean as a rounded sum and its error (Knuth's two-sum): with |mean| >> std
    // one ulp of the mean is a visible error in y, so the normalize subtracts both parts.
    const A back = mean - p;
    const A lo = (p - (mean - back)) + (s.mean - back);
    store(c, mean, lo, mean, s.m2 / n, contract::unbiased_variance(s.m2, n));
  }

  // A channel whose fp32 sums overflowed (a spread past about 1e18) or that holds Inf or
  // NaN: its statistics again in double, two-pass, by the one thread that finalizes it.
  // Rare, so the common case keeps its single pass.
  __device__ void finalize_in_double(int64_t c) const {
    double sum = 0.0;
    for (int64_t b = 0; b < walk.N; ++b)
      for (int64_t i = 0; i < walk.S; ++i) sum += double(to_acc(x[walk.offset(b, c, i)]));
    const double dn = double(walk.N) * double(walk.S);
    const double mean = sum / dn;
    double m2 = 0.0;
    for (int64_t b = 0; b < walk.N; ++b) {
      for (int64_t i = 0; i < walk.S; ++i) {
        const double d = double(to_acc(x[walk.offset(b, c, i)])) - mean;
        m2 += d * d;
      }
    }
    // An infinite or NaN mean (a channel holding Inf or NaN) has, as in torch, a NaN variance.
    const bool finite = mean - mean == 0.0;
    const double var = finite ? m2 / dn : mean - mean;
    const A hi = A(mean);
    const double unbiased = finite ? contract::unbiased_variance(m2, dn) : var;
    store(c, hi, finite ? A(mean - double(hi)) : A(0), mean, var, unbiased);
  }

  // Outputs from the mean (hi + lo in A, and in W), the biased and unbiased variance.
  template <typename W>
  __device__ __forceinline__ void store(int64_t c, A hi, A lo, W mean, W var, W unbiased) const {
    save_mean[c] = hi;
    mean_lo[c] = lo;
    save_invstd[c] = A(W(1) / sqrt(var + W(eps)));
    if (running_mean != nullptr) {
      const W m = W(momentum);
      running_mean[c] = A(contract::running_update(W(running_mean[c]), mean, m));
      running_var[c] = A(contract::running_update(W(running_var[c]), unbiased, m));
    }
  }
};

// The op of a training forward: `nsc` as the plan's, mean_lo a [C] acc workspace vector.
template <typename T, int V>
StatsOp<T, V> make_stats_op(const ForwardParams& p, bool nsc, void* mean_lo) {
  using A = acc_t<T>;
  return StatsOp<T, V>{static_cast<const T*>(p.x),
                       static_cast<A*>(p.save_mean),
                       static_cast<A*>(p.save_invstd),
                       static_cast<A*>(mean_lo),
                       static_cast<A*>(p.running_mean),
                       static_cast<A*>(p.running_var),
                       static_cast<A>(p.shape.per_channel()),
                       static_cast<A>(p.eps),
                       static_cast<A>(p.momentum),
                       ChannelWalk::of(p.shape, nsc)};
}

}  // namespace cudak
}  // namespace bnfused
