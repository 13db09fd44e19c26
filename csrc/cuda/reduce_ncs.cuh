// Per-channel reduction for NCS data: grid (C, splits), each block reduces a
// contiguous range of its channel's vectors; with splits > 1 the last block of
// a channel merges the partials in a fixed order and finalizes.
//
// Op provides: State, Chan, Item, kVec, kUnroll; channel(c) -> Chan;
// load(elem_offset) -> Item; accumulate(State&, const Item&, const Chan&) for
// kVec elements of one channel; finalize(c, const State&).
#pragma once

#include "reduce_plan.h"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

// Element offset of vector j of channel c (vectors plane-major, plan.plane_vecs per plane).
template <int V>
__device__ __forceinline__ int64_t ncs_offset(const ReducePlan& plan, int64_t c, int64_t j) {
  const int64_t plane = plan.plane_div.div(j);
  const int64_t s = j - plane * plan.plane_vecs;
  return ((plane * plan.C + c) * plan.plane_vecs + s) * V;
}

// The merge of one channel's `splits` partial states in a fixed order, valid in thread 0.
template <typename State>
__device__ __forceinline__ State merge_partials_ncs(const State* partials, int splits, State* smem) {
  State total = State::zero();
  for (int s = threadIdx.x; s < splits; s += kThreads)
    total = State::merge(total, State::load_cg(partials + s));
  return block_merge(total, smem);
}

template <class Op>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm) reduce_ncs_kernel(Op op, ReducePlan plan) {
  using State = typename Op::State;
  constexpr int V = Op::kVec;
  constexpr int K = Op::kUnroll;
  State* smem = SharedStates<State, kWarps>::get();

  const int64_t c = blockIdx.x;
  const int split = blockIdx.y;
  const auto [begin, end] = split_range(plan, split, plan.channel_vecs);
  const typename Op::Chan ch = op.channel(c);

  State st = State::zero();
  for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += K * kThreads) {
    typename Op::Item items[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = j0 + k * kThreads;
      if (j < end) items[k] = op.load(ncs_offset<V>(plan, c, j));
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (j0 + k * kThreads < end) op.accumulate(st, items[k], ch);
  }
  st = block_merge(st, smem);

  if (plan.splits == 1) {
    if (threadIdx.x == 0) op.finalize(c, st);
    return;
  }
  State* partials = static_cast<State*>(plan.partials) + c * plan.splits;
  if (threadIdx.x == 0) partials[split] = st;
  if (!arrive_last(plan.counters + c, plan.splits)) return;

  const State total = merge_partials_ncs(partials, plan.splits, smem);
  if (threadIdx.x == 0) op.finalize(c, total);
}

}  // namespace cudak
}  // namespace bnfused
