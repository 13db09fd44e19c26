// Device side of the emulated CUDA: the qualifiers, thread and block indices,
// __syncthreads, the grid-wide barrier of cooperative launches and warp
// shuffles (all switch fibers), shared memory, fences, atomics and the
// arithmetic intrinsics the kernels use.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include "source_site.h"
#include <type_traits>

#include "runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

namespace bnfemu {

struct GridPos {
  uint3 block;
  dim3 block_dim, grid_dim;
};
// The running thread and block. Plain globals, not thread_local (whose access
// costs a call in a shared library): one launch runs at a time, under a lock.
extern const uint3* current_thread;
extern const GridPos* current_grid;
extern bool counting_traffic;

inline const uint3& thread_index() { return *current_thread; }
inline const uint3& block_index() { return current_grid->block; }
inline const dim3& block_dim() { return current_grid->block_dim; }
inline const dim3& grid_dim() { return current_grid->grid_dim; }

void syncthreads(const SourceSite& site);
// The barrier of every thread of a cooperative launch (cooperative_groups' grid.sync()).
void grid_sync(const SourceSite& site);
// Lane l reads lane l + delta of its `width`-lane segment, or its own value when that
// lane is outside the segment (__shfl_up_sync: delta < 0, __shfl_down_sync: delta > 0).
uint64_t shuffle_shift(unsigned mask, uint64_t bits, int delta, int width, const SourceSite& site);
uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const SourceSite& site);
// Storage of the __shared__ variable `key` in the running block (poisoned with 0xFF).
void* shared_memory(const void* key, size_t bytes);
// kind: 0 load, 1 store, 2 served by L2 (__ldcg loads and atomics: reduction partials, counters).
void note_access(const void* p, size_t bytes, int kind);

inline void note_load(const void* p, size_t bytes) {
  if (counting_traffic) note_access(p, bytes, 0);
}
inline void note_store(const void* p, size_t bytes) {
  if (counting_traffic) note_access(p, bytes, 1);
}

}  // namespace bnfemu

#define threadIdx (::bnfemu::thread_index())
#define blockIdx (::bnfemu::block_index())
#define blockDim (::bnfemu::block_dim())
#define gridDim (::bnfemu::grid_dim())
#define warpSize 32

// A __shared__ variable: one instance per block, shared by its threads.
#define BNF_SHARED(TYPE, NAME, ...)         \
  static char NAME##_bnf_key;               \
  using NAME##_bnf_type = TYPE __VA_ARGS__; \
  NAME##_bnf_type& NAME =                   \
      *static_cast<NAME##_bnf_type*>(::bnfemu::shared_memory(&NAME##_bnf_key, sizeof(NAME##_bnf_type)))

inline void __syncthreads(const bnfemu::SourceSite& site = bnfemu::SourceSite::current()) {
  bnfemu::syncthreads(site);
}

namespace bnfemu {
template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace bnfemu

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const bnfemu::SourceSite& site = bnfemu::SourceSite::current()) {
  return bnfemu::from_bits<T>(bnfemu::shuffle_xor(mask, bnfemu::to_bits(v), lane_mask, width, site));
}

// Lane l reads lane l - delta of its segment; the first `delta` lanes keep their own value.
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const bnfemu::SourceSite& site = bnfemu::SourceSite::current()) {
  return bnfemu::from_bits<T>(
      bnfemu::shuffle_shift(mask, bnfemu::to_bits(v), -static_cast<int>(delta), width, site));
}

// Lane l reads lane l + delta of its segment; the last `delta` lanes keep their own value.
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const bnfemu::SourceSite& site = bnfemu::SourceSite::current()) {
  return bnfemu::from_bits<T>(
      bnfemu::shuffle_shift(mask, bnfemu::to_bits(v), static_cast<int>(delta), width, site));
}

// One OS thread runs every block in turn: fences order nothing that is not already ordered.
inline void __threadfence() {}

template <typename T>
inline T atomicAdd(T* address, T v) {
  if (bnfemu::counting_traffic) bnfemu::note_access(address, sizeof(T), 2);
  const T old = *address;
  *address = old + v;
  return old;
}

template <typename T>
inline T atomicOr(T* address, T v) {
  if (bnfemu::counting_traffic) bnfemu::note_access(address, sizeof(T), 2);
  const T old = *address;
  *address = old | v;
  return old;
}

template <typename T>
inline T __ldcg(const T* p) {
  if (bnfemu::counting_traffic) bnfemu::note_access(p, sizeof(T), 2);
  return *p;
}

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
// IEEE division is correctly rounded, as the _rn reciprocals are.
inline float __frcp_rn(float v) { return 1.0f / v; }
inline double __drcp_rn(double v) { return 1.0 / v; }
