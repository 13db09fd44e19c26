// The activations (contract_math.h) and the packed activation mask.
#pragma once

#include "contract_math.h"
#include "device_common.cuh"

namespace bnfused {
namespace cudak {

using contract::activate;
using contract::grad_through;
using contract::grad_through_bit;
using contract::passes;

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
