// Launch functions of the kernel files, called by launch.cu with a plan from plan.cu.
#pragma once

#include <cuda_runtime.h>

#include "bnfused.h"
#include "reduce_plan.h"

namespace bnfused {
namespace cudak {

// Training: save_mean, save_invstd (and running stats) from x, and mean_lo ([C] acc):
// the batch mean minus save_mean, the rounding error of the saved mean.
void launch_forward_stats(const ForwardParams& p, const ReducePlan& plan, void* mean_lo, cudaStream_t stream);
// y (and mask) from x, residual and the statistics (batch or running ones, by p.training);
// mean_lo from launch_forward_stats in training, unused in eval.
void launch_forward_apply(const ForwardParams& p, const ApplyPlan& plan, const void* mean_lo,
                          cudaStream_t stream);
// Per-channel coefficients of dx that the backward reduction leaves for the elementwise
// pass: mean_g, proj, scale, shift (DxCoefs in grad_sum_op.cuh).
constexpr int kDxCoefs = 4;

// dweight, dbias and, when `dx_coefs` is non-null, the per-channel coefficients of the
// elementwise pass there (kDxCoefs arrays of [C] acc, see grad_sum_op.cuh).
void launch_backward_reduce(const BackwardParams& p, const ReducePlan& plan, void* dx_coefs,
                            cudaStream_t stream);
// dx and dresidual; null `dx_coefs` means eval statistics (no mean/variance terms), or no
// dx: the pass then takes its coefficients from the params.
void launch_backward_apply(const BackwardParams& p, const ApplyPlan& plan, const void* dx_coefs,
                           cudaStream_t stream);

// Persistent training paths (persistent.cuh), `plan` from make_resident_plan with
// resident_items(backward, plan.nsc, dtype, plan.vec): one cooperative launch each, which
// the runtime refuses for a grid larger than the co-resident blocks.
void launch_forward_persistent(const ForwardParams& p, const ReducePlan& plan, void* mean_lo,
                               cudaStream_t stream);
void launch_backward_persistent(const BackwardParams& p, const ReducePlan& plan, void* dx_coefs,
                                cudaStream_t stream);
// Resident blocks per SM of the persistent kernel these arguments would launch (the
// occupancy API: registers and shared memory of the compiled kernel).
int forward_persistent_blocks_per_sm(const ForwardParams& p, const ReducePlan& plan);
int backward_persistent_blocks_per_sm(const BackwardParams& p, const ReducePlan& plan);

}  // namespace cudak
}  // namespace bnfused
