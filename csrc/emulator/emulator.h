// Control of the CUDA emulator from the host: settings, per-launch memory
// traffic, and guarded copies of the buffers a launch may touch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime.h"

namespace bnfemu {

enum class BlockOrder : int { kForward = 0, kReversed = 1, kShuffled = 2 };

struct Settings {
  int sm_count = 132;                             // what cudaDeviceGetAttribute reports (H100 SXM)
  BlockOrder block_order = BlockOrder::kForward;  // also the order threads start in a block
  uint64_t seed = 0;                              // of the shuffled order
  bool count_traffic = false;                     // record a LaunchTraffic per launch
  int blocks_per_sm = 2;                          // what the occupancy API reports for every kernel
  // Launches of each bnfused op run again this many times on the same buffers, as a
  // captured CUDA graph replays them: the workspace is not zeroed again, outputs are not
  // poisoned again, and each replay must reproduce the first launch's bits.
  int replays = 0;
};

Settings settings();
void configure(const Settings& s);

// Global-memory traffic of one launch, counted per warp-wide request: the k-th
// access of each lane of a warp is one request; `sectors` are the distinct
// 32-byte sectors a request touches (what Nsight Compute reports).
struct AccessCounts {
  uint64_t requests = 0, bytes = 0, sectors = 0;
};
struct LaunchTraffic {
  std::string label;  // the kernel's parameter types
  dim3 grid, block;
  int sm_count = 0;
  AccessCounts load, store, l2;  // l2: __ldcg loads and atomics (in neither load nor store)
  uint64_t block_bytes_max = 0;  // bytes of the busiest block
  uint64_t blocks = 0;
};
// The launches recorded since the last call (recording needs count_traffic).
std::vector<LaunchTraffic> take_traffic();

// Copies of the buffers of a launch, each between guard bytes and at the
// original's alignment modulo 256, so that a write out of bounds is caught.
// Outputs start poisoned (0xFF: NaN in every float type); finish() checks the
// guards and that inputs are unchanged, then copies outputs back.
class GuardedBuffers {
 public:
  enum Mode { kInput, kOutput, kInOut };
  GuardedBuffers();
  ~GuardedBuffers();
  // The copy to hand to the kernels in place of `data` (nullptr stays nullptr).
  void* add(const char* name, const void* data, size_t bytes, Mode mode);
  // For a replay: the results of the launch so far (every buffer the kernels write but
  // `keep`), and the inputs-and-outputs back to what add() copied in, except `keep`.
  std::vector<std::vector<unsigned char>> results(const void* keep) const;
  void restore_inout(const void* keep);
  // Throws, naming the buffer and the replay, where a result differs from `first`.
  void expect_results(const std::vector<std::vector<unsigned char>>& first, const void* keep,
                      int replay) const;
  void finish();

 private:
  struct Buffer;
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

}  // namespace bnfemu
