// Per-shape launch strategy: vector widths, splits of the reductions, grid
// sizes and the workspace layout. Depends only on the shape, dtype, pointer
// alignment and the current device's SM count, never on data.
#pragma once

#include <cstddef>
#include <initializer_list>

#include "bnfused.h"
#include "reduce_plan.h"

namespace bnfused {
namespace cudak {

// Whether the plans treat the data as rows of C contiguous channels (NSC, or S == 1).
bool rows_of_channels(const Shape& shape);

// Widest vector usable for all `ptrs` (nulls ignored): 16 bytes when every
// pointer is 16-byte aligned and vectors never cross a channel boundary, else 1.
int choose_vec(const Shape& shape, DType dtype, std::initializer_list<const void*> ptrs);

ReducePlan make_reduce_plan(const Shape& shape, int vec);
// The persistent kernels' split of the same reduction: each block's share small enough
// for its threads to hold, `items` vectors each (NCS: chunk <= kThreads * items vectors,
// NSC: chunk <= lanes * items rows), spread over up to `target_blocks` blocks. It runs
// only if plan_blocks() <= the co-resident blocks of its kernel.
ReducePlan make_resident_plan(const Shape& shape, int vec, int items, int64_t target_blocks);
// Blocks of a reduction's grid: C * splits (NCS) or tiles * splits (NSC).
int64_t plan_blocks(const ReducePlan& plan);
// kPersistentBlocksPerSm x SMs of the current device: the grid a resident plan aims for.
int64_t resident_target_blocks();
// 2048 threads per SM x SMs: no plan with more blocks can be resident.
int64_t max_resident_blocks();
// SMs of the current device.
int device_sm_count();
// `blocks_per_sm`: resident blocks of the kernel that will run the plan (one wave).
ApplyPlan make_apply_plan(const Shape& shape, int vec, int blocks_per_sm);

// Workspace of a reduction: counters then partial states (`state_bytes` each),
// then `extra_vectors` acc-typed [C] arrays. Sized for the largest of the
// vector-width choices so that it does not depend on pointers.
// Also room for the persistent kernel's plan, make_resident_plan(shape, vec,
// resident_items(backward, ...), resident_target_blocks()).
size_t reduce_workspace_bytes(const Shape& shape, DType dtype, size_t state_bytes, int extra_vectors,
                              bool backward);
// Points plan.counters / plan.partials into `workspace`; returns the extra arrays' base.
char* bind_workspace(ReducePlan& plan, void* workspace, size_t state_bytes);

}  // namespace cudak
}  // namespace bnfused
