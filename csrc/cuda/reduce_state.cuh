// Per-channel reduction states and their deterministic merges: Welford
// (mean, M2, count) with Chan's pairwise merge for the statistics, plain sums
// for the backward. Merge order is fixed by the thread layout, so results are
// bit-identical from run to run.
#pragma once

#include "device_common.cuh"

namespace bnfused {
namespace cudak {

// The elements of one channel in memory, for the rare element-by-element walks (a
// channel summed again in double): element (b, s) of channel c is at
// b * batch_stride + c * channel_stride + s * spatial_stride.
struct ChannelWalk {
  int64_t N, S, batch_stride, channel_stride, spatial_stride;

  static ChannelWalk of(const Shape& shape, bool nsc) {
    return {shape.N, shape.S, shape.C * shape.S, nsc ? int64_t(1) : shape.S, nsc ? shape.C : int64_t(1)};
  }
  __device__ __forceinline__ int64_t offset(int64_t b, int64_t c, int64_t s) const {
    return b * batch_stride + c * channel_stride + s * spatial_stride;
  }
};

template <typename A>
struct Welford {
  A mean, m2, n;

  __device__ __forceinline__ static Welford zero() { return {A(0), A(0), A(0)}; }

  // Chan et al.: exact in count, stable for |mean| >> std. An infinite mean merges
  // as a weighted sum (Inf - Inf would make it NaN): a channel holding +Inf gets
  // torch's +Inf mean, and NaN where +Inf and -Inf meet.
  __device__ __forceinline__ static Welford merge(const Welford& a, const Welford& b) {
    if (b.n == A(0)) return a;
    if (a.n == A(0)) return b;
    const A n = a.n + b.n;
    const A delta = b.mean - a.mean;
    const A r = b.n * rcp(n);
    const A mean = delta - delta == A(0) ? a.mean + delta * r : a.mean * (A(1) - r) + b.mean * r;
    return {mean, a.m2 + b.m2 + delta * delta * a.n * r, n};
  }

  // One element (the classic Welford step; a weighted sum when x or the mean is not finite).
  __device__ __forceinline__ void push(A x) {
    n += A(1);
    const A d = x - mean;
    const A r = rcp(n);
    const bool finite = d - d == A(0);
    mean = finite ? mean + d * r : mean * (A(1) - r) + x * r;
    m2 += d * (x - mean);
  }

  __device__ __forceinline__ static Welford shfl(const Welford& s, int m) {
    return {shfl_xor(s.mean, m), shfl_xor(s.m2, m), shfl_xor(s.n, m)};
  }
  __device__ __forceinline__ static Welford load_cg(const Welford* p) {
    return {__ldcg(&p->mean), __ldcg(&p->m2), __ldcg(&p->n)};
  }
};

// Sums for the backward: sum(g) and sum(g * (x - mean)).
template <typename A>
struct GradSums {
  A g, gxmu;

  __device__ __forceinline__ static GradSums zero() { return {A(0), A(0)}; }
  __device__ __forceinline__ static GradSums merge(const GradSums& a, const GradSums& b) {
    return {a.g + b.g, a.gxmu + b.gxmu};
  }
  __device__ __forceinline__ static GradSums shfl(const GradSums& s, int m) {
    return {shfl_xor(s.g, m), shfl_xor(s.gxmu, m)};
  }
  __device__ __forceinline__ static GradSums load_cg(const GradSums* p) {
    return {__ldcg(&p->g), __ldcg(&p->gxmu)};
  }
};

// Merges one state per thread of the block; the result is valid in thread 0.
// Uses `smem` (kWarps states) and leaves it reusable after return.
template <typename State>
__device__ __forceinline__ State block_merge(State s, State* smem) {
#pragma unroll
  for (int m = 1; m < 32; m <<= 1) s = State::merge(s, State::shfl(s, m));
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) smem[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    s = smem[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) s = State::merge(s, smem[w]);
  }
  __syncthreads();
  return s;
}

// Raw shared storage for `count` states (states have no default constructor in shared memory).
template <typename State, int kCount>
struct SharedStates {
  __device__ __forceinline__ static State* get() {
    BNF_SHARED(unsigned char, raw, [sizeof(State) * kCount]);
    return reinterpret_cast<State*>(raw);
  }
};

// Last-block-done handshake: every block of a group publishes its partial,
// then the block that arrives last (and only it) sees `true`. Resets the
// counter for the next launch. Call from all threads.
__device__ __forceinline__ bool arrive_last(unsigned* counter, unsigned expected) {
  BNF_SHARED(bool, is_last);
  __threadfence();  // partials visible device-wide before the arrival is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned prev = atomicAdd(counter, 1u);
    is_last = prev + 1 == expected;
    if (is_last) *counter = 0u;
  }
  __syncthreads();
  if (is_last) __threadfence();
  return is_last;
}

}  // namespace cudak
}  // namespace bnfused
