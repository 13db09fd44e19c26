// The CPU kernels' run-time settings, set once from Python before the first op.
#include <atomic>
#include <stdexcept>

#include "bnfused.h"
#include "cpu/cpu_common.h"

namespace bnfused {
namespace {

CpuSettings g_settings;
std::atomic<bool> g_in_use{false};

bool same(const CpuSettings& a, const CpuSettings& b) {
  return a.isa_cap == b.isa_cap && a.stream_bytes == b.stream_bytes && a.huge_pages == b.huge_pages;
}

}  // namespace

void configure_cpu(const CpuSettings& s) {
  if (s.isa_cap < 0 || s.isa_cap > 3)
    throw std::invalid_argument("bnfused: isa_cap must be 0..3 (baseline..avx512_bf16)");
  if (s.stream_bytes < -1) throw std::invalid_argument("bnfused: stream_bytes must be >= -1");
  if (g_in_use.load() && !same(s, g_settings))
    throw std::logic_error("bnfused: the CPU kernel settings cannot change after the first op");
  g_settings = s;
}

namespace cpu {

const CpuSettings& settings() {
  g_in_use.store(true);
  return g_settings;
}

}  // namespace cpu
}  // namespace bnfused
