// Kernels compiled for the build's default instruction set (runs everywhere).
#include "cpu/kernel_prelude.h"

#define BNFUSED_ISA baseline
#define BNFUSED_ISA_NAME "baseline"
#include "cpu/kernels_all_impl.h"

namespace bnfused {
namespace cpu {
const KernelTable& kernels_baseline() { return baseline::kTable; }
}  // namespace cpu
}  // namespace bnfused
