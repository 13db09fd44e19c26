// Per-channel reduction for NSC data (rows of C contiguous channels): grid
// (tiles, splits). A block owns a tile of vector columns (coalesced along C)
// and a range of rows; each thread keeps kVec channel states, the block merges
// its row lanes in shared memory with a fixed tree, and with splits > 1 the
// last block of a tile merges the partials of all splits and finalizes.
//
// Op provides (besides what reduce_ncs.cuh needs): accumulate_one(State&,
// const Item&, int j, const Chan&) for element j of a vector of kVec channels.
#pragma once

#include "reduce_plan.h"
#include "reduce_state.cuh"

namespace bnfused {
namespace cudak {

// Merges rows [0, rows) of a (rows x width) state table into row 0 (fixed tree).
template <typename State>
__device__ __forceinline__ void merge_rows(State* table, int rows, int width) {
  int h = 1;
  while (h < rows) h <<= 1;
  for (h >>= 1; h >= 1; h >>= 1) {
    __syncthreads();
    for (int item = threadIdx.x; item < h * width; item += kThreads) {
      const int r = item / width, k = item - r * width;
      if (r + h < rows) table[r * width + k] = State::merge(table[r * width + k], table[(r + h) * width + k]);
    }
  }
  __syncthreads();
}

// Row 0 of `table` gets, per channel of the tile, the merge of the V channel states
// `st` of the threads of every row lane (each thread at (lane, col)).
template <typename State, int V>
__device__ __forceinline__ void merge_lanes(State* table, const State (&st)[V], int lane, int col, int lanes,
                                            int width) {
  if (lane < lanes) {
#pragma unroll
    for (int j = 0; j < V; ++j) table[lane * width + col * V + j] = st[j];
  }
  merge_rows(table, lanes, width);
}

// Row 0 of `table` (width channels from tile_c0) gets each channel's merge of the
// plan.splits partial states at [split * C + c], in a fixed order: `groups`
// threads per channel walk the splits, then a tree merge.
template <typename State>
__device__ __forceinline__ void merge_partials_nsc(State* table, const State* partials, const ReducePlan& plan,
                                                   int64_t tile_c0, int width) {
  const int groups = kThreads / width;
  const int kc = threadIdx.x % width, group = threadIdx.x / width;
  if (group < groups) {
    State total = State::zero();
    if (tile_c0 + kc < plan.C) {
      for (int s = group; s < plan.splits; s += groups)
        total = State::merge(total, State::load_cg(partials + s * plan.C + tile_c0 + kc));
    }
    table[group * width + kc] = total;
  }
  merge_rows(table, groups, width);
}

template <class Op>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm) reduce_nsc_kernel(Op op, ReducePlan plan) {
  using State = typename Op::State;
  constexpr int V = Op::kVec;
  constexpr int K = Op::kUnroll;
  State* table = SharedStates<State, kThreads * V>::get();

  const int tile = blockIdx.x;
  const int split = blockIdx.y;
  const int width = plan.tile_vcols * V;  // channels per tile
  const int col = threadIdx.x % plan.tile_vcols;
  const int lane = threadIdx.x / plan.tile_vcols;
  const int64_t vcol = static_cast<int64_t>(tile) * plan.tile_vcols + col;
  const bool active = lane < plan.lanes && vcol < plan.row_vecs;
  const int64_t c0 = vcol * V;

  State st[V];
  typename Op::Chan ch[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    st[j] = State::zero();
    if (active) ch[j] = op.channel(c0 + j);
  }
  if (active) {
    const int64_t begin = split * plan.chunk;
    const int64_t end = begin + plan.chunk < plan.rows ? begin + plan.chunk : plan.rows;
    for (int64_t r0 = begin + lane; r0 < end; r0 += K * plan.lanes) {
      typename Op::Item items[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t r = r0 + k * plan.lanes;
        if (r < end) items[k] = op.load((r * plan.row_vecs + vcol) * V);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (r0 + k * plan.lanes < end) {
#pragma unroll
          for (int j = 0; j < V; ++j) op.accumulate_one(st[j], items[k], j, ch[j]);
        }
      }
    }
  }
  merge_lanes(table, st, lane, col, plan.lanes, width);

  const int64_t tile_c0 = static_cast<int64_t>(tile) * width;
  const int k = threadIdx.x;
  const bool owns_channel = k < width && tile_c0 + k < plan.C;
  if (plan.splits == 1) {
    if (owns_channel) op.finalize(tile_c0 + k, table[k]);
    return;
  }
  State* partials = static_cast<State*>(plan.partials);
  if (owns_channel) partials[split * plan.C + tile_c0 + k] = table[k];
  if (!arrive_last(plan.counters + tile, plan.splits)) return;

  merge_partials_nsc(table, partials, plan, tile_c0, width);
  if (owns_channel) op.finalize(tile_c0 + k, table[k]);
}

}  // namespace cudak
}  // namespace bnfused
