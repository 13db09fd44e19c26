// Host-side helpers shared by the launch files.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

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

}  // namespace cudak
}  // namespace bnfused
