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

// Where a thread of a block of an NSC reduction stands (grid (tiles, splits)): its vector
// column `col` of the tile and its row lane, and thread k < width's channel of the tile.
template <int V>
struct NscThread {
  int tile, split;
  int width;  // channels per tile
  int col, lane;
  int64_t vcol, c0;   // the thread's vector column and its first channel
  int64_t tile_c0;    // the tile's first channel
  bool active;        // a row lane on a vector column of the data
  bool owns_channel;  // thread k merges and finalizes channel tile_c0 + k

  __device__ __forceinline__ explicit NscThread(const ReducePlan& plan)
      : tile(blockIdx.x),
        split(blockIdx.y),
        width(plan.tile_vcols * V),
        col(threadIdx.x % plan.tile_vcols),
        lane(threadIdx.x / plan.tile_vcols),
        vcol(static_cast<int64_t>(tile) * plan.tile_vcols + col),
        c0(vcol * V),
        tile_c0(static_cast<int64_t>(tile) * width),
        active(lane < plan.lanes && vcol < plan.row_vecs),
        owns_channel(static_cast<int>(threadIdx.x) < width && tile_c0 + threadIdx.x < plan.C) {}
};

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
__device__ __forceinline__ void merge_partials_nsc(State* table, const State* partials,
                                                   const ReducePlan& plan, int64_t tile_c0, int width) {
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

  const NscThread<V> t(plan);
  const SplitRange range = split_range(plan, t.split, plan.rows);

  State st[V];
  typename Op::Chan ch[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    st[j] = State::zero();
    if (t.active) ch[j] = op.channel(t.c0 + j);
  }
  if (t.active) {
    for (int64_t r0 = range.begin + t.lane; r0 < range.end; r0 += K * plan.lanes) {
      typename Op::Item items[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t r = r0 + k * plan.lanes;
        if (r < range.end) items[k] = op.load((r * plan.row_vecs + t.vcol) * V);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (r0 + k * plan.lanes < range.end) {
#pragma unroll
          for (int j = 0; j < V; ++j) op.accumulate_one(st[j], items[k], j, ch[j]);
        }
      }
    }
  }
  merge_lanes(table, st, t.lane, t.col, plan.lanes, t.width);

  const int k = threadIdx.x;
  if (plan.splits == 1) {
    if (t.owns_channel) op.finalize(t.tile_c0 + k, table[k]);
    return;
  }
  State* partials = static_cast<State*>(plan.partials);
  if (t.owns_channel) partials[t.split * plan.C + t.tile_c0 + k] = table[k];
  if (!arrive_last(plan.counters + t.tile, plan.splits)) return;

  merge_partials_nsc(table, partials, plan, t.tile_c0, t.width);
  if (t.owns_channel) op.finalize(t.tile_c0 + k, table[k]);
}

}  // namespace cudak
}  // namespace bnfused
