// Host side of the persistent kernels (persistent.cuh), shared by the forward and the
// backward: the dtype / activation / vector-width switch and the cooperative launch.
#pragma once

#include <stdexcept>

#include "launch_common.h"
#include "persistent.cuh"
#include "static_switch.h"

namespace bnfused {
namespace cudak {

// Launches the persistent kernel of `op` for `plan`, or with `blocks_per_sm` non-null
// only asks the occupancy API how many of its blocks an SM holds.
template <class Op>
cudaError_t run_persistent(const Op& op, const ReducePlan& plan, cudaStream_t stream, int* blocks_per_sm) {
  auto* kernel = plan.nsc ? persistent_nsc_kernel<Op> : persistent_ncs_kernel<Op>;
  if (blocks_per_sm != nullptr) return cached_occupancy(kernel, kThreads, blocks_per_sm);
  const dim3 grid(plan.nsc ? static_cast<unsigned>(plan.tiles) : static_cast<unsigned>(plan.C), plan.splits);
  return launch_cooperative_kernel(kernel, grid, kThreads, 0, stream, op, plan);
}

// run_persistent for the op OpFor<T, V, ACT>::make(p, extra) that `p` and `plan` select
// (`extra`: the pass's workspace vectors, null for an occupancy query).
template <template <typename, int, Activation> class OpFor, class Params>
cudaError_t dispatch_persistent(const Params& p, const ReducePlan& plan, void* extra, cudaStream_t stream,
                                int* blocks_per_sm) {
  cudaError_t err = cudaSuccess;
  DTYPE_SWITCH(p.dtype, T, [&] {
    ACTIVATION_SWITCH(p.activation, ACT, [&] {
      if (plan.vec == 1) {
        err = run_persistent(OpFor<T, 1, ACT>::make(p, plan, extra), plan, stream, blocks_per_sm);
      } else if (plan.vec == kVec<T>) {
        err = run_persistent(OpFor<T, kVec<T>, ACT>::make(p, plan, extra), plan, stream, blocks_per_sm);
      } else {
        throw std::runtime_error("bnfused: bad vector width");
      }
    });
  });
  return err;
}

}  // namespace cudak
}  // namespace bnfused
