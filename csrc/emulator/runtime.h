// Host side of the emulated CUDA runtime: launch geometry, streams, errors,
// device attributes, and the launch that runs a kernel on the emulator.
#pragma once

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMultiProcessorCount = 16,
};

// The emulated device reports the SM count and occupancy set by bnfemu::configure.
// Each (SM count, blocks per SM) pair seen is presented as its own device ordinal,
// so per-device caches of the attribute and the occupancy stay right when a test
// changes them.
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);

namespace bnfemu {

// Resident blocks per SM that the emulated occupancy API reports for every kernel
// (Settings::blocks_per_sm): the emulator knows no register counts.
int resident_blocks_per_sm();

// Whether the runtime would accept this launch (block <= 1024 threads, grid.y/z <= 65535, ...).
bool launch_config_valid(dim3 grid, dim3 block, size_t smem);
// Makes `err` what the next cudaGetLastError() returns.
void set_last_error(cudaError_t err);

// Runs `body` (one thread's call of the kernel) for every thread of every
// block. An invalid configuration is reported like the runtime does it, as
// the sticky error of cudaGetLastError(); a fault inside the kernel (divergent
// barrier, shuffle with exited lanes, deadlock) throws std::runtime_error.
void launch(const char* label, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

// A cooperative launch: every block co-scheduled, so that grid_sync() is a barrier over
// all of the grid's threads. A grid larger than the occupancy API's co-residency
// (resident_blocks_per_sm() x SMs) is refused with cudaErrorCooperativeLaunchTooLarge,
// returned as the runtime does, and nothing runs.
cudaError_t launch_cooperative(const char* label, dim3 grid, dim3 block, size_t smem,
                               const std::function<void()>& body);

// kernel<<<grid, block, smem, stream>>>(args...) for the emulated build.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  launch(__PRETTY_FUNCTION__, grid, block, smem, [&] { std::apply(kernel, params); });
}

// cudaLaunchCooperativeKernel(kernel, grid, block, args, smem, stream) for the emulated build.
template <typename... Params, typename... Args>
cudaError_t launch_cooperative_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  return launch_cooperative(__PRETTY_FUNCTION__, grid, block, smem, [&] { std::apply(kernel, params); });
}

}  // namespace bnfemu

template <typename... Params>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*)(Params...), int block_size,
                                                          size_t smem) {
  if (block_size < 1 || block_size > 1024 || smem > 48 * 1024) return cudaErrorInvalidValue;
  *blocks = bnfemu::resident_blocks_per_sm();
  return cudaSuccess;
}
