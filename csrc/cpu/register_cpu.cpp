// CPU implementation of the bnfused_C ops: the binding layer plus csrc/cpu kernels.
#include <torch/library.h>

#include "../binding.h"

namespace bnfused {
namespace {

struct CpuLaunchers {
  static ForwardLauncher forward() { return {forward_cpu, nullptr}; }
  static BackwardLauncher backward() { return {backward_cpu, nullptr}; }
};

}  // namespace

TORCH_LIBRARY_IMPL(bnfused_C, CPU, m) {
  m.impl("forward", &forward_op<CpuLaunchers>);
  m.impl("backward", &backward_op<CpuLaunchers>);
}

}  // namespace bnfused
