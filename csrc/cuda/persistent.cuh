// Persistent training kernels: one cooperative launch whose blocks hold their
// share of the data in registers from the per-channel reduction to the
// elementwise pass, so that x (and dy) are read from memory once. The grid is
// the reduction's, (C, splits) for NCS and (tiles, splits) for NSC, every block
// co-resident. Per block:
//   1. load its items (at most resident_items() vectors per thread) and reduce them;
//   2. splits == 1: finalize its own channels. Else publish a partial state,
//      grid sync, and the first split of each channel (tile) merges the partials
//      in a fixed order and finalizes; grid sync;
//   3. read the finalized per-channel values and run the elementwise pass on the
//      items it holds.
// Op provides `reduce` (an Op of reduce_ncs.cuh / reduce_nsc.cuh, with column(items,
// count, j, chan): the state of element j of the first `count` items), Elem (the element
// type) and kBackward (which of resident_items applies), and
//   Coef coef(c): the per-channel values of step 3 (read after the sync);
//   uint32_t apply<P>(const Item&, int64_t off, const Coef*): the elementwise pass of
//     one vector (P = 1: one channel, coefs[0]; P = V: V consecutive channels,
//     coefs[0..V)), returning its activation-mask bits;
//   uint32_t* mask, int64_t numel: the mask to write, or null.
// The mask's 32-bit words can straddle blocks (a plane or a row boundary inside a
// word), so it is zeroed in step 1, before a grid sync, and written by atomicOr.
#pragma once

#include "reduce_ncs.cuh"
#include "reduce_nsc.cuh"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

// Step 1 of the mask: every word zero, by all threads of the grid.
__device__ __forceinline__ void zero_mask_words(uint32_t* __restrict__ words, int64_t numel) {
  const int64_t count = (numel + 31) >> 5;
  const int64_t block = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * gridDim.y * kThreads;
  for (int64_t w = block * kThreads + threadIdx.x; w < count; w += stride) {
    note_store(words + w, 4);
    words[w] = 0u;
  }
}

// ORs each lane's `bits` (of the vector at element `off`, V <= 32 elements in one
// word) into the zeroed mask. Lanes that share a word combine their bits first (a
// suffix OR over each run of lanes with the same word), so that a word gets one
// atomic per warp that touches it. All lanes of the warp call it.
__device__ __forceinline__ void or_mask_bits(uint32_t* __restrict__ words, int64_t off, uint32_t bits,
                                             bool valid) {
  const int lane = threadIdx.x & 31;
  const int64_t word = valid ? off >> 5 : int64_t(-1);
  uint32_t acc = valid ? bits << (off & 31) : 0u;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const uint32_t other = __shfl_down_sync(0xffffffffu, acc, d);
    const int64_t other_word = __shfl_down_sync(0xffffffffu, word, d);
    if (lane + d < 32 && other_word == word) acc |= other;
  }
  const int64_t prev_word = __shfl_up_sync(0xffffffffu, word, 1);
  if (valid && (lane == 0 || prev_word != word) && acc != 0u) atomicOr(words + word, acc);
}

template <class Op>
__global__ void __launch_bounds__(kThreads, kPersistentBlocksPerSm)
    persistent_ncs_kernel(Op op, ReducePlan plan) {
  using R = typename Op::Reduce;
  using State = typename R::State;
  constexpr int V = R::kVec;
  constexpr int K = resident_items(Op::kBackward, false, kDType<typename Op::Elem>, V);
  State* smem = SharedStates<State, kWarps>::get();

  const int64_t c = blockIdx.x;
  const int split = blockIdx.y;
  const auto [begin, end] = split_range(plan, split, plan.channel_vecs);
  if (op.mask != nullptr) zero_mask_words(op.mask, op.numel);

  typename R::Item items[K];
  {
    const typename R::Chan ch = op.reduce.channel(c);
    State st = State::zero();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = begin + threadIdx.x + k * kThreads;
      if (j < end) {
        items[k] = op.reduce.load(ncs_offset<V>(plan, c, j));
        op.reduce.accumulate(st, items[k], ch);
      }
    }
    st = block_merge(st, smem);
    if (plan.splits == 1) {
      if (threadIdx.x == 0) op.reduce.finalize(c, st);
      if (op.mask != nullptr) grid_sync();
      __syncthreads();
    } else {
      State* partials = static_cast<State*>(plan.partials) + c * plan.splits;
      if (threadIdx.x == 0) partials[split] = st;
      grid_sync();
      if (split == 0) {
        const State total = merge_partials_ncs(partials, plan.splits, smem);
        if (threadIdx.x == 0) op.reduce.finalize(c, total);
      }
      grid_sync();
    }
  }

  const typename Op::Coef coef = op.coef(c);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t j = begin + threadIdx.x + k * kThreads;
    const bool valid = j < end;
    const int64_t off = valid ? ncs_offset<V>(plan, c, j) : 0;
    const uint32_t bits = valid ? op.template apply<1>(items[k], off, &coef) : 0u;
    if (op.mask != nullptr) or_mask_bits(op.mask, off, bits, valid);
  }
}

template <class Op>
__global__ void __launch_bounds__(kThreads, kPersistentBlocksPerSm)
    persistent_nsc_kernel(Op op, ReducePlan plan) {
  using R = typename Op::Reduce;
  using State = typename R::State;
  constexpr int V = R::kVec;
  constexpr int K = resident_items(Op::kBackward, true, kDType<typename Op::Elem>, V);
  State* table = SharedStates<State, kThreads * V>::get();

  const NscThread<V> t(plan);
  const auto [begin, end] = split_range(plan, t.split, plan.rows);
  if (op.mask != nullptr) zero_mask_words(op.mask, op.numel);

  typename R::Item items[K];
  {
    State st[V];
    typename R::Chan ch[V];
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (t.active) ch[j] = op.reduce.channel(t.c0 + j);
    int count = 0;  // items held: rows begin + lane + k * lanes below end, a prefix of k
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t r = begin + t.lane + static_cast<int64_t>(k) * plan.lanes;
      if (t.active && r < end) {
        items[k] = op.reduce.load((r * plan.row_vecs + t.vcol) * V);
        count = k + 1;
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) st[j] = op.reduce.column(items, count, j, ch[j]);
    merge_lanes(table, st, t.lane, t.col, plan.lanes, t.width);
  }

  const int kc = threadIdx.x;
  if (plan.splits == 1) {
    if (t.owns_channel) op.reduce.finalize(t.tile_c0 + kc, table[kc]);
    if (op.mask != nullptr) grid_sync();
    __syncthreads();
  } else {
    State* partials = static_cast<State*>(plan.partials);
    if (t.owns_channel) partials[t.split * plan.C + t.tile_c0 + kc] = table[kc];
    grid_sync();
    if (t.split == 0) {
      merge_partials_nsc(table, partials, plan, t.tile_c0, t.width);
      if (t.owns_channel) op.reduce.finalize(t.tile_c0 + kc, table[kc]);
    }
    grid_sync();
  }

  // The tile's per-channel values in shared memory (width <= 32 * V <= kThreads): in
  // registers, V of them per thread would crowd out the items.
  using Coef = typename Op::Coef;
  BNF_SHARED(unsigned char, coef_bytes, [sizeof(Coef) * kThreads]);
  Coef* coefs = reinterpret_cast<Coef*>(coef_bytes);
  if (t.owns_channel) coefs[kc] = op.coef(t.tile_c0 + kc);
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t r = begin + t.lane + static_cast<int64_t>(k) * plan.lanes;
    const bool valid = t.active && r < end;
    const int64_t off = valid ? (r * plan.row_vecs + t.vcol) * V : 0;
    const uint32_t bits = valid ? op.template apply<V>(items[k], off, coefs + t.col * V) : 0u;
    if (op.mask != nullptr) or_mask_bits(op.mask, off, bits, valid);
  }
}

}  // namespace cudak
}  // namespace bnfused
