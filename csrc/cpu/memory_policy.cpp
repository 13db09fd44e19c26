// How the elementwise passes treat memory: the output size from which they
// use streaming stores (from the last-level cache size), and huge pages for
// large fresh outputs. Both are decided per call on the host.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/cpu_common.h"

namespace bnfused {
namespace cpu {
namespace {

// Size of the largest cache of CPU 0 from sysfs ("32768K"); sysconf where sysfs has
// none (it can report the whole package's L3 in a VM); 32 MB where neither answers.
int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string path = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) continue;
    long long v = 0;
    char unit = 0;
    if (std::fscanf(f, "%lld%c", &v, &unit) >= 1) {
      const int64_t bytes = v << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
      if (bytes > best) best = bytes;
    }
    std::fclose(f);
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  if (best == 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE) > 0 ? sysconf(_SC_LEVEL3_CACHE_SIZE) : 0;
#endif
  return best > 0 ? best : int64_t(32) << 20;
}

int64_t stream_threshold() {
  const int64_t bytes = settings().stream_bytes;
  return bytes >= 0 ? bytes : last_level_cache_bytes();
}

}  // namespace

bool stream_outputs(int64_t pass_bytes) {
  static const int64_t threshold = stream_threshold();
  return pass_bytes >= threshold;
}

void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = settings().huge_pages;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!enabled || p == nullptr || bytes < kHugePageOutputBytes) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (end > a) madvise(reinterpret_cast<void*>(a), end - a, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace bnfused
