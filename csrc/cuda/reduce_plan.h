// Host/device description of a per-channel reduction over (N, S): how blocks
// split the work and where partial results go. Filled by plan.cu.
#pragma once

#include <cstdint>

#include "device_common.cuh"

namespace bnfused {
namespace cudak {

struct ReducePlan {
  bool nsc = false;  // rows of C contiguous channels (channels_last, or S == 1)
  int vec = 1;       // elements per vector load
  int64_t C = 0;
  int splits = 1;     // blocks per channel (NCS) or per channel tile (NSC)
  int64_t chunk = 0;  // vectors (NCS) or rows (NSC) per split
  // NCS: grid (C, splits); vectors of channel c: plane-major, `plane_vecs` per plane.
  int64_t plane_vecs = 0;
  int64_t channel_vecs = 0;  // N * plane_vecs
  FastDivmod plane_div;      // divides by plane_vecs
  // NSC: grid (tiles, splits); a tile is `tile_vcols` vector columns, `lanes` rows at a time.
  int64_t row_vecs = 0;  // C / vec
  int64_t rows = 0;      // N * S
  int tile_vcols = 1;
  int lanes = 1;
  int tiles = 1;
  // Workspace (splits > 1): one counter per channel (NCS) or tile (NSC), partial states
  // at [c * splits + split] (NCS) or [split * C + c] (NSC).
  unsigned* counters = nullptr;
  void* partials = nullptr;
};

// Split `split` of a reduction over `total` items (NCS: vectors of a channel, NSC: rows).
struct SplitRange {
  int64_t begin, end;
};
__device__ __forceinline__ SplitRange split_range(const ReducePlan& plan, int split, int64_t total) {
  const int64_t begin = split * plan.chunk;
  return {begin, begin + plan.chunk < total ? begin + plan.chunk : total};
}

// Elementwise passes: a grid-stride loop over vectors in memory order.
struct ApplyPlan {
  int vec = 1;
  bool nsc_vec = false;    // vectors hold `vec` consecutive channels; else one channel each
  int64_t vecs = 0;        // numel / vec
  FastDivmod inner_div;    // vector index -> plane (NCS vectors, scalar: per S or per 1)
  FastDivmod channel_div;  // plane -> channel (mod C), or vector -> column (mod C / vec)
  int blocks = 1;
};

}  // namespace cudak
}  // namespace bnfused
