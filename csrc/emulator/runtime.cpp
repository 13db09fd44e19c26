// The runtime API of the emulated device: its SM count as device attributes,
// launch limits and the sticky error of cudaGetLastError.
#include <mutex>
#include <utility>
#include <vector>

#include "device.h"
#include "emulator.h"

namespace bnfemu {
namespace {

std::mutex g_devices_mutex;
// (SM count, blocks per SM) of each device ordinal handed out.
std::vector<std::pair<int, int>> g_devices;
thread_local cudaError_t g_last_error = cudaSuccess;

}  // namespace

bool launch_config_valid(dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  return block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 &&
         block.z <= 64 && threads <= 1024 && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 &&
         grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535 && smem <= 48 * 1024;
}

void set_last_error(cudaError_t err) { g_last_error = err; }

int resident_blocks_per_sm() { return settings().blocks_per_sm; }

}  // namespace bnfemu

cudaError_t cudaGetDevice(int* device) {
  const bnfemu::Settings s = bnfemu::settings();
  const std::pair<int, int> wanted(s.sm_count, s.blocks_per_sm);
  const std::lock_guard<std::mutex> lock(bnfemu::g_devices_mutex);
  auto& known = bnfemu::g_devices;
  for (size_t i = 0; i < known.size(); ++i) {
    if (known[i] == wanted) {
      *device = static_cast<int>(i);
      return cudaSuccess;
    }
  }
  known.push_back(wanted);
  *device = static_cast<int>(known.size() - 1);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const std::lock_guard<std::mutex> lock(bnfemu::g_devices_mutex);
  if (device < 0 || static_cast<size_t>(device) >= bnfemu::g_devices.size()) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = bnfemu::g_devices[device].first;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaGetLastError() {
  const cudaError_t err = bnfemu::g_last_error;
  bnfemu::g_last_error = cudaSuccess;
  return err;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
  }
  return "unknown error";
}
