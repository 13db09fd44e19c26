// The AVX-512 kernels again with AVX512_BF16 (Zen 4, Cooper Lake, Sapphire
// Rapids and later): bfloat16 outputs round with vcvtneps2bf16 (to_bf16 in
// kernel_math.h), about 15% off a bf16 elementwise pass. Chosen at run time
// only when the CPU has the extension.
#include "cpu/kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 10)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#define BNFUSED_ISA avx512_bf16
#define BNFUSED_ISA_NAME "avx512_bf16"
#define BNFUSED_ISA_AVX2 1  // the target pragma defines none of these macros
#define BNFUSED_ISA_AVX512 1
#define BNFUSED_ISA_AVX512_BF16 1
#include "cpu/kernels_all_impl.h"
#pragma GCC pop_options

namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx512_bf16() { return &avx512_bf16::kTable; }
}  // namespace cpu
}  // namespace bnfused
#else
namespace bnfused {
namespace cpu {
const KernelTable* kernels_avx512_bf16() { return nullptr; }
}  // namespace cpu
}  // namespace bnfused
#endif
