// Shared pieces of the elementwise passes: channel lookup of a vector and the
// per-channel affine (mean, invstd * weight, bias) loaded from batch or running stats.
#pragma once

#include "device_common.cuh"
#include "reduce_plan.h"

namespace bnfused {
namespace cudak {

// First channel of vector v: its only channel for NCS / scalar vectors,
// the first of kVec consecutive channels for NSC vectors.
template <bool kNscVec, int V>
__device__ __forceinline__ int64_t vector_channel(const ApplyPlan& plan, int64_t v) {
  if constexpr (kNscVec) return static_cast<int64_t>(plan.channel_div.mod(v)) * V;
  return plan.channel_div.mod(plan.inner_div.div(v));
}

template <typename A>
struct AffineSource {
  const A* __restrict__ mean;    // [C] save_mean (batch) or running_mean (eval)
  const A* __restrict__ stat;    // [C] save_invstd (batch) or running_var (eval)
  const A* __restrict__ weight;  // [C] or null
  const A* __restrict__ bias;    // [C] or null
  A eps;
  bool stat_is_var;
  // [C] or null, with batch statistics: batch mean - mean (the saved mean's rounding
  // error). x - mean is exact near the mean; shift absorbs the rest.
  const A* __restrict__ mean_lo;

  __device__ __forceinline__ A invstd(int64_t c) const {
    return stat_is_var ? A(1) / sqrt(stat[c] + eps) : stat[c];
  }
  // z = (x - mean) * scale + shift
  __device__ __forceinline__ void load(int64_t c, A& m, A& scale, A& shift) const {
    m = mean[c];
    scale = invstd(c) * (weight != nullptr ? weight[c] : A(1));
    shift = bias != nullptr ? bias[c] : A(0);
  }
  // load with the mean's low part in shift: x - mean is exact near the mean.
  __device__ __forceinline__ void load_centered(int64_t c, A& m, A& scale, A& shift) const {
    load(c, m, scale, shift);
    if (mean_lo != nullptr) shift -= mean_lo[c] * scale;
  }
  __device__ __forceinline__ A low_part(int64_t c) const { return mean_lo != nullptr ? mean_lo[c] : A(0); }
};

}  // namespace cudak
}  // namespace bnfused
