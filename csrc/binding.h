// The one layer that talks to torch: checks tensors, allocates outputs and
// fills the kernel structs of bnfused.h. Device-specific registration files
// (csrc/cpu/register_cpu.cpp, csrc/cuda/register_cuda.cpp) pass a launcher.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <tuple>

#include "bnfused.h"

namespace bnfused {

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Launchers receive filled params; `workspace_bytes` sizes scratch memory
// (zero-filled by the binding; nullptr means none is needed).
struct ForwardLauncher {
  std::function<void(const ForwardParams&)> run;
  std::function<size_t(const Shape&, DType)> workspace_bytes;
};
struct BackwardLauncher {
  std::function<void(const BackwardParams&)> run;
  std::function<size_t(const Shape&, DType)> workspace_bytes;
};

// set_cuda_path of the CUDA kernels, set by csrc/cuda/register_cuda.cpp when they are
// built (null otherwise), so that the module's configure_cuda needs no build flag.
extern void (*cuda_path_setter)(CudaPath);

ForwardResult forward_impl(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& running_mean,
                           const c10::optional<at::Tensor>& running_var,
                           const c10::optional<at::Tensor>& residual, bool training, double momentum,
                           double eps, int64_t activation, double activation_param,
                           const ForwardLauncher& launcher);

BackwardResult backward_impl(const at::Tensor& grad_output, const at::Tensor& input,
                             const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& save_mean, const at::Tensor& save_invstd,
                             const at::Tensor& mask, const c10::optional<at::Tensor>& residual, bool training,
                             double eps, int64_t activation, double activation_param,
                             std::array<bool, 4> output_mask, const c10::optional<at::Tensor>& save_mean_lo,
                             const BackwardLauncher& launcher);

// The op entry points of one device: `Launchers` has static `forward()` and
// `backward()` returning that device's launchers. Register with
//   m.impl("forward", &forward_op<Launchers>); m.impl("backward", &backward_op<Launchers>);
template <class Launchers>
ForwardResult forward_op(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
                         const c10::optional<at::Tensor>& running_var,
                         const c10::optional<at::Tensor>& residual, bool training, double momentum,
                         double eps, int64_t activation, double activation_param) {
  return forward_impl(input, weight, bias, running_mean, running_var, residual, training, momentum, eps,
                      activation, activation_param, Launchers::forward());
}

template <class Launchers>
BackwardResult backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                           const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                           const at::Tensor& save_mean, const at::Tensor& save_invstd, const at::Tensor& mask,
                           const c10::optional<at::Tensor>& residual, bool training, double eps,
                           int64_t activation, double activation_param, std::array<bool, 4> output_mask,
                           const c10::optional<at::Tensor>& save_mean_lo) {
  return backward_impl(grad_output, input, weight, bias, save_mean, save_invstd, mask, residual, training,
                       eps, activation, activation_param, output_mask, save_mean_lo, Launchers::backward());
}

}  // namespace bnfused
