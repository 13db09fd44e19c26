// Forward statistics (training) of the two-pass path: the reduction kernels
// running StatsOp (stats_op.cuh).
#include "kernels.h"
#include "launch_common.h"
#include "reduce_ncs.cuh"
#include "reduce_nsc.cuh"
#include "stats_op.cuh"
#include "static_switch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, int V>
void launch(const ForwardParams& p, const ReducePlan& plan, void* mean_lo, cudaStream_t stream) {
  const StatsOp<T, V> op = make_stats_op<T, V>(p, plan.nsc, mean_lo);
  if (plan.nsc) {
    launch_kernel(reduce_nsc_kernel<StatsOp<T, V>>, dim3(plan.tiles, plan.splits), kThreads, 0, stream, op,
                  plan);
  } else {
    launch_kernel(reduce_ncs_kernel<StatsOp<T, V>>, dim3(static_cast<unsigned>(plan.C), plan.splits),
                  kThreads, 0, stream, op, plan);
  }
  check_launch("forward statistics");
}

}  // namespace

void launch_forward_stats(const ForwardParams& p, const ReducePlan& plan, void* mean_lo,
                          cudaStream_t stream) {
  DTYPE_SWITCH(p.dtype, T, [&] {
    if (plan.vec == 1) return launch<T, 1>(p, plan, mean_lo, stream);
    if (plan.vec == kVec<T>) return launch<T, kVec<T>>(p, plan, mean_lo, stream);
    throw std::runtime_error("bnfused: bad vector width");
  });
}

}  // namespace cudak
}  // namespace bnfused
