// Picks the kernel table for the running CPU once.
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_common.h"

namespace bnfused {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const KernelTable& select() {
  const char* isa = std::getenv("BNFUSED_CPU_ISA");
  const bool force_baseline = isa != nullptr && std::strcmp(isa, "baseline") == 0;
  if (!force_baseline && cpu_has_avx2() && kernels_avx2() != nullptr) return *kernels_avx2();
  return kernels_baseline();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable& table = select();
  return table;
}

}  // namespace cpu
}  // namespace bnfused
