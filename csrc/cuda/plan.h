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

// Widest vector usable for all `ptrs` (nulls ignored): 16 bytes when every
// pointer is 16-byte aligned and vectors never cross a channel boundary, else 1.
int choose_vec(const Shape& shape, DType dtype, std::initializer_list<const void*> ptrs);

ReducePlan make_reduce_plan(const Shape& shape, int vec);
// `blocks_per_sm`: resident blocks of the kernel that will run the plan (one wave).
ApplyPlan make_apply_plan(const Shape& shape, int vec, int blocks_per_sm);

// Workspace of a reduction: counters then partial states (`state_bytes` each),
// then `extra_vectors` acc-typed [C] arrays. Sized for the largest of the
// vector-width choices so that it does not depend on pointers.
size_t reduce_workspace_bytes(const Shape& shape, DType dtype, size_t state_bytes, int extra_vectors);
// Points plan.counters / plan.partials into `workspace`; returns the extra arrays' base.
char* bind_workspace(ReducePlan& plan, void* workspace, size_t state_bytes);

}  // namespace cudak
}  // namespace bnfused
