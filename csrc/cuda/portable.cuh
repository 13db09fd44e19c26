// What differs between the two builds of the kernel sources: nvcc (real GPU)
// and the host compiler against csrc/emulator (kernels run on the CPU).
//   launch_kernel(kernel, grid, block, smem, stream, args...)  the one launch site
//   launch_cooperative_kernel(...)      the same for a cooperative launch; returns the error
//   grid_sync()                         the barrier of every thread of a cooperative launch
//   BNF_SHARED(type, name[, [extent]])  a __shared__ declaration inside a kernel
//   note_load / note_store(ptr, bytes)  global accesses the emulator counts
//   load_channel_cg(ptr)                __ldcg of a per-channel value written earlier in the
//                                       same launch (C-sized: not counted as traffic)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)

#include <cooperative_groups.h>

#define BNF_SHARED(TYPE, NAME, ...) __shared__ alignas(16) TYPE NAME __VA_ARGS__

namespace bnfused {
namespace cudak {

template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}

// cudaLaunchCooperativeKernel takes the arguments' addresses; the runtime refuses a grid
// larger than the co-resident blocks (cudaErrorCooperativeLaunchTooLarge).
template <typename... Params, typename... Args>
inline cudaError_t launch_cooperative_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                             cudaStream_t stream, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  return std::apply(
      [&](auto&... p) {
        void* addresses[] = {static_cast<void*>(&p)...};
        return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, addresses,
                                           smem, stream);
      },
      params);
}

__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

template <typename T>
__device__ __forceinline__ T load_channel_cg(const T* p) {
  return __ldcg(p);
}

__device__ __forceinline__ void note_load(const void*, size_t) {}
__device__ __forceinline__ void note_store(const void*, size_t) {}

}  // namespace cudak
}  // namespace bnfused

#else  // the emulated build: the emulation headers provide these

namespace bnfused {
namespace cudak {
using ::bnfemu::launch_cooperative_kernel;
using ::bnfemu::launch_kernel;
using ::bnfemu::note_load;
using ::bnfemu::note_store;
inline void grid_sync(const ::bnfemu::SourceSite& site = ::bnfemu::SourceSite::current()) {
  ::bnfemu::grid_sync(site);
}
template <typename T>
inline T load_channel_cg(const T* p) {
  return *p;
}
}  // namespace cudak
}  // namespace bnfused

#endif
