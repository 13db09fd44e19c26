// CUDA implementation of the bnfused_C ops: the binding layer plus csrc/cuda
// kernels, always on the current stream of the input's device (the binding
// sets the device before a launcher runs).
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../binding.h"

namespace bnfused {
namespace {

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const bool path_setter_installed = (cuda_path_setter = set_cuda_path, true);

struct CudaLaunchers {
  static ForwardLauncher forward() {
    return {[](const ForwardParams& p) { forward_cuda(p, current_stream()); }, forward_workspace_bytes_cuda};
  }
  static BackwardLauncher backward() {
    return {[](const BackwardParams& p) { backward_cuda(p, current_stream()); },
            backward_workspace_bytes_cuda};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(bnfused_C, CUDA, m) {
  m.impl("forward", &forward_op<CudaLaunchers>);
  m.impl("backward", &backward_op<CudaLaunchers>);
}

}  // namespace bnfused
