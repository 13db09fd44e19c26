// CUDA implementation of the bnfused_C ops: the binding layer plus csrc/cuda
// kernels, always on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>

#include "../binding.h"

namespace bnfused {
namespace {

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

ForwardResult forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& running_mean,
                      const c10::optional<at::Tensor>& running_var,
                      const c10::optional<at::Tensor>& residual, bool training, double momentum,
                      double eps, int64_t activation, double activation_param) {
  const c10::cuda::CUDAGuard guard(input.device());
  ForwardLauncher launcher{[](const ForwardParams& p) { forward_cuda(p, current_stream()); },
                           forward_workspace_bytes_cuda};
  return forward_impl(input, weight, bias, running_mean, running_var, residual, training, momentum,
                      eps, activation, activation_param, launcher);
}

BackwardResult backward(const at::Tensor& grad_output, const at::Tensor& input,
                        const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& save_mean,
                        const at::Tensor& save_invstd, const at::Tensor& mask,
                        const c10::optional<at::Tensor>& residual, bool training, double eps,
                        int64_t activation, double activation_param,
                        std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  BackwardLauncher launcher{[](const BackwardParams& p) { backward_cuda(p, current_stream()); },
                            backward_workspace_bytes_cuda};
  return backward_impl(grad_output, input, weight, bias, save_mean, save_invstd, mask, residual,
                       training, eps, activation, activation_param, output_mask, launcher);
}

}  // namespace

TORCH_LIBRARY_IMPL(bnfused_C, CUDA, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}

}  // namespace bnfused
