// CPU implementation of the bnfused_C ops: the binding layer plus csrc/cpu kernels.
#include <torch/library.h>

#include <array>

#include "../binding.h"

namespace bnfused {
namespace {

ForwardResult forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& running_mean,
                      const c10::optional<at::Tensor>& running_var,
                      const c10::optional<at::Tensor>& residual, bool training, double momentum,
                      double eps, int64_t activation, double activation_param) {
  return forward_impl(input, weight, bias, running_mean, running_var, residual, training, momentum,
                      eps, activation, activation_param, ForwardLauncher{forward_cpu, nullptr});
}

BackwardResult backward(const at::Tensor& grad_output, const at::Tensor& input,
                        const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& save_mean,
                        const at::Tensor& save_invstd, const at::Tensor& mask,
                        const c10::optional<at::Tensor>& residual, bool training, double eps,
                        int64_t activation, double activation_param,
                        std::array<bool, 4> output_mask) {  // bool[4]: torch wants std::array
  return backward_impl(grad_output, input, weight, bias, save_mean, save_invstd, mask, residual,
                       training, eps, activation, activation_param,
                       c10::ArrayRef<bool>(output_mask.data(), output_mask.size()),
                       BackwardLauncher{backward_cpu, nullptr});
}

}  // namespace

TORCH_LIBRARY_IMPL(bnfused_C, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}

}  // namespace bnfused
