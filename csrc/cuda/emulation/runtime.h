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
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMultiProcessorCount = 16,
};

// The emulated device reports the SM count set by bnfemu::configure. Each SM
// count seen is presented as its own device ordinal, so per-device caches of
// the attribute stay right when a test changes it.
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);

namespace bnfemu {

// Whether the runtime would accept this launch (block <= 1024 threads, grid.y/z <= 65535, ...).
bool launch_config_valid(dim3 grid, dim3 block, size_t smem);
// Makes `err` what the next cudaGetLastError() returns.
void set_last_error(cudaError_t err);

// Runs `body` (one thread's call of the kernel) for every thread of every
// block. An invalid configuration is reported like the runtime does it, as
// the sticky error of cudaGetLastError(); a fault inside the kernel (divergent
// barrier, shuffle with exited lanes, deadlock) throws std::runtime_error.
void launch(const char* label, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

// kernel<<<grid, block, smem, stream>>>(args...) for the emulated build.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  launch(__PRETTY_FUNCTION__, grid, block, smem, [&] { std::apply(kernel, params); });
}

}  // namespace bnfemu
