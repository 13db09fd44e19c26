// Device building blocks shared by all kernels: accumulation types, dtype
// conversions, 16-byte vector access and a fast integer divider.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "bnfused.h"
#include "portable.cuh"

namespace bnfused {
namespace cudak {

constexpr int kThreads = 256;  // every kernel runs 256-thread blocks
constexpr int kWarps = kThreads / 32;
// Blocks per SM that the launch plans (plan.cu) size their grids for. Each kernel
// declares its number in __launch_bounds__, so ptxas keeps registers within it;
// tests/test_codegen_cuda.py checks the cubins against these numbers.
// Elementwise passes: the grid is one resident wave (a grid-stride loop).
constexpr int kForwardApplyBlocksPerSm = 4;
constexpr int kBackwardApplyBlocksPerSm = 3;
constexpr int kReduceBlocksPerSm = 2;  // reductions
// Persistent training kernels (persistent.cuh): each thread holds its items, 16-byte
// vectors of x in the forward and of dy and x (and the residual when the pre-activation
// is recomputed) in the backward, in registers across the grid sync. 2 blocks per SM
// leave 128 registers a thread; the items are as many as fit beside the kernel's other
// state without spills (tests/test_codegen_cuda.py), fewer for NSC, whose threads also
// keep a state per channel of their vector.
constexpr int kPersistentBlocksPerSm = 2;
// bf16 vectors need more registers than fp16 ones beside them (ptxas keeps them widened).
// A scalar item (vec 1: planes that are not whole 16-byte vectors, e.g. 7x7 in bf16)
// holds one element in one register (two for fp64) where a vector takes four, so NCS
// threads hold that many more of them.
constexpr int scalar_item_factor(DType dtype) { return dtype == DType::kFloat64 ? 2 : 4; }
constexpr int resident_items(bool backward, bool nsc, DType dtype, int vec) {
  const bool bf16 = dtype == DType::kBFloat16;
  const int items = backward ? (bf16 ? 3 : 4) : nsc ? (bf16 ? 6 : 8) : (bf16 ? 10 : 12);
  return !nsc && vec == 1 ? items * scalar_item_factor(dtype) : items;
}

template <typename T>
constexpr DType kDType = DType::kFloat32;
template <>
constexpr DType kDType<double> = DType::kFloat64;
template <>
constexpr DType kDType<__half> = DType::kFloat16;
template <>
constexpr DType kDType<__nv_bfloat16> = DType::kBFloat16;

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Loads/stores V elements at element offset `off`; the launcher guarantees alignment.
template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* __restrict__ p, int64_t off) {
  note_load(p + off, sizeof(Vec<T, V>));
  return *reinterpret_cast<const Vec<T, V>*>(p + off);
}
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* __restrict__ p, int64_t off, const Vec<T, V>& v) {
  note_store(p + off, sizeof(Vec<T, V>));
  *reinterpret_cast<Vec<T, V>*>(p + off) = v;
}

// Streams the per-channel partials written by other blocks through L2, never a stale L1.
template <typename A>
__device__ __forceinline__ A load_cg(const A* p) {
  return __ldcg(p);
}

// Integer division by a runtime constant: multiply-high when every dividend is
// below 2^31 (decided on the host), plain 64-bit division otherwise.
struct FastDivmod {
  uint64_t d = 1;
  uint32_t mul = 0, shift = 0;
  bool fast = false;

  FastDivmod() = default;
  __host__ FastDivmod(int64_t divisor, int64_t max_dividend) : d(static_cast<uint64_t>(divisor)) {
    fast = divisor > 0 && divisor < (int64_t(1) << 31) && max_dividend < (int64_t(1) << 31);
    if (!fast) return;
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint64_t div(uint64_t n) const {
    if (fast) {
      const uint32_t n32 = static_cast<uint32_t>(n);
      return (__umulhi(n32, mul) + n32) >> shift;
    }
    return n / d;
  }
  __device__ __forceinline__ uint64_t mod(uint64_t n) const { return n - div(n) * d; }
};

// Correctly rounded reciprocal (no slow-path call, unlike IEEE division); used
// for the count ratios of the Welford merges.
__device__ __forceinline__ float rcp(float v) { return __frcp_rn(v); }
__device__ __forceinline__ double rcp(double v) { return __drcp_rn(v); }

__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ double shfl_xor(double v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }

}  // namespace cudak
}  // namespace bnfused
