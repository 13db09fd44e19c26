// What differs between the two builds of the kernel sources: nvcc (real GPU)
// and the host compiler against csrc/cuda/emulation (kernels run on the CPU).
//   launch_kernel(kernel, grid, block, smem, stream, args...)  the one launch site
//   BNF_SHARED(type, name[, [extent]])  a __shared__ declaration inside a kernel
//   note_load / note_store(ptr, bytes)  global accesses the emulator counts
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#if defined(__CUDACC__)

#define BNF_SHARED(TYPE, NAME, ...) __shared__ alignas(16) TYPE NAME __VA_ARGS__

namespace bnfused {
namespace cudak {

template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}

__device__ __forceinline__ void note_load(const void*, size_t) {}
__device__ __forceinline__ void note_store(const void*, size_t) {}

}  // namespace cudak
}  // namespace bnfused

#else  // the emulated build: the emulation headers provide all three

namespace bnfused {
namespace cudak {
using ::bnfemu::launch_kernel;
using ::bnfemu::note_load;
using ::bnfemu::note_store;
}  // namespace cudak
}  // namespace bnfused

#endif
