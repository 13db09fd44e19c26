// Kernels compiled for x86-64 with AVX-512 (F, BW, VL, DQ) + FMA + F16C:
// 16-lane vectors, chosen at run time by kernels() when the CPU has them.
// Every header is included before the target pragma, so only the kernel
// bodies (namespace avx512) use these instructions.
#include "cpu/kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define BNFUSED_ISA avx512
#define BNFUSED_ISA_NAME "avx512"
#define BNFUSED_ISA_AVX2 1  // the target pragma defines neither macro
#define BNFUSED_ISA_AVX512 1
#include "cpu/kernels_all_impl.h"
#pragma GCC pop_options

namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx512() { return &avx512::kTable; }
}  // namespace cpu
}  // namespace bnfused
#else
namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx512() { return nullptr; }
}  // namespace cpu
}  // namespace bnfused
#endif
