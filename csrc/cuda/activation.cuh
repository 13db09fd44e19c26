// Activation math in the accumulation type, and the packed activation mask.
#pragma once

#include "device_common.cuh"

namespace bnfused {
namespace cudak {

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

// NaN propagates through relu/leaky_relu as in torch (the comparison is false for NaN).
template <Activation ACT, typename A>
__device__ __forceinline__ A act_forward(A z, A slope) {
  if constexpr (ACT == Activation::kRelu) {
    return z < A(0) ? A(0) : z;
  } else if constexpr (ACT == Activation::kLeakyRelu) {
    return z < A(0) ? z * slope : z;
  } else if constexpr (ACT == Activation::kSilu) {
    return z / (A(1) + exp_acc(-z));
  } else {
    return z;
  }
}

// Whether the gradient passes at slope 1, as torch decides it: relu stops it
// where z <= 0 (threshold_backward), so NaN passes; leaky_relu passes it where
// z > 0, so NaN takes the negative slope. This is also the mask bit.
template <Activation ACT, typename A>
__device__ __forceinline__ bool passes(A z) {
  if constexpr (ACT == Activation::kRelu) return !(z <= A(0));
  return z > A(0);
}

// d act / dz at the pre-activation z.
template <Activation ACT, typename A>
__device__ __forceinline__ A act_grad(A z, A slope) {
  if constexpr (ACT == Activation::kRelu) {
    return passes<ACT>(z) ? A(1) : A(0);
  } else if constexpr (ACT == Activation::kLeakyRelu) {
    return z > A(0) ? A(1) : slope;
  } else if constexpr (ACT == Activation::kSilu) {
    const A s = A(1) / (A(1) + exp_acc(-z));
    return s * (A(1) + z * (A(1) - s));
  } else {
    return A(1);
  }
}

// d act / dz from a mask bit (only relu/leaky_relu write masks).
template <typename A>
__device__ __forceinline__ A mask_grad(uint32_t bit, A slope, Activation act) {
  return bit ? A(1) : (act == Activation::kLeakyRelu ? slope : A(0));
}

// The V mask bits of elements [e, e + V) (e a multiple of V, V <= 8 divides 8):
// they sit in one byte, so byte loads need no alignment.
template <int V>
__device__ __forceinline__ uint32_t load_mask_bits(const uint8_t* __restrict__ mask, int64_t e) {
  note_load(mask + (e >> 3), 1);
  const uint32_t byte = mask[e >> 3];
  return (byte >> (e & 7)) & ((1u << V) - 1u);
}

// Writes the mask word(s) of one warp whose lanes hold V consecutive elements
// each, lane 0 starting at element `warp_e0` (a multiple of 32 * V). All lanes
// must call it; lanes past the end pass bits = 0. `numel` bounds the words.
template <int V>
__device__ __forceinline__ void store_mask_bits(uint32_t* __restrict__ mask_words, int64_t warp_e0,
                                                uint32_t bits, int64_t numel) {
  const int lane = threadIdx.x & 31;
  constexpr int kLanesPerWord = 32 / V;
  uint32_t word = bits << ((lane % kLanesPerWord) * V);
#pragma unroll
  for (int m = 1; m < kLanesPerWord; m <<= 1) word |= __shfl_xor_sync(0xffffffffu, word, m);
  const int64_t first = warp_e0 + static_cast<int64_t>(lane) * V;
  if (lane % kLanesPerWord == 0 && first < numel) {
    note_store(mask_words + (first >> 5), 4);
    mask_words[first >> 5] = word;
  }
}

}  // namespace cudak
}  // namespace bnfused
