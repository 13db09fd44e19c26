// Host-side helpers shared by the launch files.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace bnfused {
namespace cudak {

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("bnfused: CUDA kernel launch failed (") + what +
                             "): " + cudaGetErrorString(err));
}

// For the calls that return their error (cooperative launches, occupancy queries).
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("bnfused: CUDA ") + what + " failed: " + cudaGetErrorString(err));
}

// Resident blocks per SM of `kernel` at `threads` per block on the current device, from
// the occupancy API once per kernel and device (the query costs host time on every call
// of a small layer otherwise).
template <typename Kernel>
cudaError_t cached_occupancy(Kernel kernel, int threads, int* blocks) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> known;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const std::pair<const void*, int> key(reinterpret_cast<const void*>(kernel), device);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(key);
  if (it != known.end()) {
    *blocks = it->second;
    return cudaSuccess;
  }
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads, 0);
  if (err == cudaSuccess) known.emplace(key, *blocks);
  return err;
}

}  // namespace cudak
}  // namespace bnfused
