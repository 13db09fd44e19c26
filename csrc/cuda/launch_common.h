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

}  // namespace cudak
}  // namespace bnfused
