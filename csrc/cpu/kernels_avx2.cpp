// Kernels compiled for x86-64 with AVX2 + FMA + F16C, chosen at run time by
// kernels() when the CPU has them. Every header is included before the target
// pragma, so only the kernel bodies (namespace avx2) use these instructions.
#include "cpu/kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define BNFUSED_ISA avx2
#define BNFUSED_ISA_NAME "avx2"
#define BNFUSED_ISA_AVX2 1  // the target pragma does not define __AVX2__
#include "cpu/kernels_all_impl.h"
#pragma GCC pop_options

namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx2() { return &avx2::kTable; }
}  // namespace cpu
}  // namespace bnfused
#else
namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace bnfused
#endif
