// Backward reduction of the two-pass path: the reduction kernels running
// GradSumOp (grad_sum_op.cuh).
#include "grad_sum_op.cuh"
#include "kernels.h"
#include "launch_common.h"
#include "reduce_ncs.cuh"
#include "reduce_nsc.cuh"
#include "static_switch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, int V, Activation ACT>
void launch(const BackwardParams& p, const ReducePlan& plan, void* dx_coefs, cudaStream_t stream) {
  const GradSumOp<T, V, ACT> op = make_grad_sum_op<T, V, ACT>(p, dx_coefs);
  if (plan.nsc) {
    launch_kernel(reduce_nsc_kernel<GradSumOp<T, V, ACT>>, dim3(plan.tiles, plan.splits), kThreads, 0, stream,
                  op, plan);
  } else {
    launch_kernel(reduce_ncs_kernel<GradSumOp<T, V, ACT>>, dim3(static_cast<unsigned>(plan.C), plan.splits),
                  kThreads, 0, stream, op, plan);
  }
  check_launch("backward reduction");
}

}  // namespace

void launch_backward_reduce(const BackwardParams& p, const ReducePlan& plan, void* dx_coefs,
                            cudaStream_t stream) {
  DTYPE_SWITCH(p.dtype, T, [&] {
    ACTIVATION_SWITCH(p.activation, ACT, [&] {
      if (plan.vec == 1) return launch<T, 1, ACT>(p, plan, dx_coefs, stream);
      if (plan.vec != kVec<T>) throw std::runtime_error("bnfused: bad vector width");
      return launch<T, kVec<T>, ACT>(p, plan, dx_coefs, stream);
    });
  });
}

}  // namespace cudak
}  // namespace bnfused
