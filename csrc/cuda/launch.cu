// Entry points of the CUDA backend (bnfused.h): pick a plan per shape and run
// the passes on the given stream. No host synchronization, no allocation.
// Training runs the persistent kernel where the tensor fits in the co-resident
// blocks (x read once), else the two-pass kernels.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>

#include "bnfused.h"
#include "kernels.h"
#include "plan.h"
#include "reduce_state.cuh"

namespace bnfused {
namespace {

using cudak::GradSums;
using cudak::Welford;

size_t welford_bytes(DType t) {
  return t == DType::kFloat64 ? sizeof(Welford<double>) : sizeof(Welford<float>);
}
size_t grad_sums_bytes(DType t) {
  return t == DType::kFloat64 ? sizeof(GradSums<double>) : sizeof(GradSums<float>);
}

// Whether act'(z) comes from z recomputed out of x (no mask, an activation).
bool recomputes_z(const BackwardParams& p) {
  return p.mask == nullptr && p.activation != Activation::kIdentity;
}

std::atomic<int> g_cuda_path{static_cast<int>(CudaPath::kAuto)};

// Below this size both paths are bound by launch latency; the two-pass kernels then
// save the persistent kernel's grid syncs. (An estimate: benchmarks/gpu_check.sh
// times both paths.)
constexpr int64_t kPersistentMinBytes = 256 * 1024;

// Where the stats pass writes the mean's low part: the caller's save_mean_lo, else the
// workspace slot after the partials (`extra`, null when there is no workspace).
void* mean_lo_slot(const ForwardParams& p, char* extra) {
  if (extra == nullptr) throw std::runtime_error("bnfused: CUDA forward needs a workspace");
  return p.save_mean_lo != nullptr ? p.save_mean_lo : static_cast<void*>(extra);
}

int64_t elem_bytes(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }

// Whether the persistent kernel runs, and its plan: the path allows it and its grid fits
// the co-resident blocks as the occupancy API counts them for the kernel that would run.
template <typename Params, typename Occupancy>
bool choose_persistent(const Params& p, int vec, bool backward, Occupancy occupancy,
                       cudak::ReducePlan& plan) {
  const CudaPath path = cuda_path();
  if (path == CudaPath::kTwoPass) return false;
  if (path == CudaPath::kAuto && p.shape.numel() * elem_bytes(p.dtype) < kPersistentMinBytes) return false;
  const int items = cudak::resident_items(backward, cudak::rows_of_channels(p.shape), p.dtype, vec);
  plan = cudak::make_resident_plan(p.shape, vec, items, cudak::resident_target_blocks());
  const int64_t blocks = cudak::plan_blocks(plan);
  if (blocks > cudak::max_resident_blocks()) return false;
  return blocks <= static_cast<int64_t>(occupancy(plan)) * cudak::device_sm_count();
}

}  // namespace

void set_cuda_path(CudaPath path) {
  if (path != CudaPath::kAuto && path != CudaPath::kTwoPass && path != CudaPath::kPersistent)
    throw std::invalid_argument("bnfused: unknown CUDA path");
  g_cuda_path.store(static_cast<int>(path));
}

CudaPath cuda_path() { return static_cast<CudaPath>(g_cuda_path.load()); }

size_t forward_workspace_bytes_cuda(const Shape& shape, DType dtype) {
  if (shape.numel() == 0) return 0;
  return cudak::reduce_workspace_bytes(shape, dtype, welford_bytes(dtype), 1, false);  // + mean_lo
}

size_t backward_workspace_bytes_cuda(const Shape& shape, DType dtype) {
  if (shape.numel() == 0) return 0;
  return cudak::reduce_workspace_bytes(shape, dtype, grad_sums_bytes(dtype), cudak::kDxCoefs, true);
}

void forward_cuda(const ForwardParams& p, void* stream_ptr) {
  if (p.shape.numel() == 0) return;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.mask != nullptr && reinterpret_cast<uintptr_t>(p.mask) % 4 != 0)
    throw std::runtime_error("bnfused: the activation mask must be 4-byte aligned");
  if (!p.training && (p.running_mean == nullptr || p.running_var == nullptr))
    throw std::runtime_error("bnfused: eval mode needs running_mean and running_var");
  // The widest vector every buffer of the elementwise work allows; the statistics pass
  // reads x alone, so it may take a wider one.
  const int vec = cudak::choose_vec(p.shape, p.dtype, {p.x, p.residual, p.y});
  void* mean_lo = nullptr;
  if (p.training) {
    cudak::ReducePlan plan;
    const auto occupancy = [&](const cudak::ReducePlan& q) {
      return cudak::forward_persistent_blocks_per_sm(p, q);
    };
    if (choose_persistent(p, vec, false, occupancy, plan)) {
      mean_lo = mean_lo_slot(p, cudak::bind_workspace(plan, p.workspace, welford_bytes(p.dtype)));
      return cudak::launch_forward_persistent(p, plan, mean_lo, stream);
    }
    plan = cudak::make_reduce_plan(p.shape, cudak::choose_vec(p.shape, p.dtype, {p.x}));
    mean_lo = mean_lo_slot(p, cudak::bind_workspace(plan, p.workspace, welford_bytes(p.dtype)));
    cudak::launch_forward_stats(p, plan, mean_lo, stream);
  }
  cudak::launch_forward_apply(p, cudak::make_apply_plan(p.shape, vec, cudak::kForwardApplyBlocksPerSm),
                              mean_lo, stream);
}

void backward_cuda(const BackwardParams& p, void* stream_ptr) {
  if (p.shape.numel() == 0) return;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const void* residual = recomputes_z(p) ? p.residual : nullptr;
  const bool dx_needs_sums = p.training && p.dx != nullptr;
  // The reduction also leaves the elementwise pass its scale and shift with the mean's low
  // part; a dresidual alone then needs them when it recomputes the pre-activation.
  const bool needs_coefs =
      dx_needs_sums || (p.training && p.dresidual != nullptr && recomputes_z(p) && p.save_mean_lo != nullptr);
  // The widest vector every buffer of the elementwise work allows (the reduction, which
  // writes no tensor, may take a wider one).
  const int vec = cudak::choose_vec(p.shape, p.dtype, {p.dy, p.x, residual, p.dx, p.dresidual});
  void* dx_coefs = nullptr;
  if (dx_needs_sums) {
    cudak::ReducePlan plan;
    const auto occupancy = [&](const cudak::ReducePlan& q) {
      return cudak::backward_persistent_blocks_per_sm(p, q);
    };
    if (choose_persistent(p, vec, true, occupancy, plan)) {
      char* extra = cudak::bind_workspace(plan, p.workspace, grad_sums_bytes(p.dtype));
      if (extra == nullptr) throw std::runtime_error("bnfused: CUDA backward needs a workspace");
      return cudak::launch_backward_persistent(p, plan, extra, stream);
    }
  }
  if (p.dweight != nullptr || p.dbias != nullptr || needs_coefs) {
    cudak::ReducePlan plan =
        cudak::make_reduce_plan(p.shape, cudak::choose_vec(p.shape, p.dtype, {p.dy, p.x, residual}));
    char* extra = cudak::bind_workspace(plan, p.workspace, grad_sums_bytes(p.dtype));
    if (needs_coefs) {
      if (extra == nullptr) throw std::runtime_error("bnfused: CUDA backward needs a workspace");
      dx_coefs = extra;
    }
    cudak::launch_backward_reduce(p, plan, dx_coefs, stream);
  }
  if (p.dx != nullptr || p.dresidual != nullptr) {
    cudak::launch_backward_apply(p, cudak::make_apply_plan(p.shape, vec, cudak::kBackwardApplyBlocksPerSm),
                                 dx_coefs, stream);
  }
}

}  // namespace bnfused
