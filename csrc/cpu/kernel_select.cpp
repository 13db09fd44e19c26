// Picks the kernel table for the running CPU once.
#include "bnfused.h"
#include "cpu/cpu_common.h"

namespace bnfused {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 10)
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

const KernelTable& select() {
  const int cap = settings().isa_cap;  // 0 baseline, 1 avx2, 2 avx512, 3 avx512_bf16
  if (cap >= 3 && cpu_has_avx512_bf16() && kernels_avx512_bf16() != nullptr) return *kernels_avx512_bf16();
  if (cap >= 2 && cpu_has_avx512() && kernels_avx512() != nullptr) return *kernels_avx512();
  if (cap >= 1 && cpu_has_avx2() && kernels_avx2() != nullptr) return *kernels_avx2();
  return kernels_baseline();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable& table = select();
  return table;
}

}  // namespace cpu

const char* cpu_kernel_isa() { return cpu::kernels().name; }

}  // namespace bnfused
