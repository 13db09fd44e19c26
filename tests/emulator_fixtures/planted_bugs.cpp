// Planted-bug kernels (see planted_bugs.h), written as CUDA device code.
#include "planted_bugs.h"

#include <cuda_runtime.h>

#include <stdexcept>

#include "portable.cuh"
#include "emulator.h"

namespace bnfused {
namespace planted {
namespace {

using cudak::grid_sync;
using cudak::launch_cooperative_kernel;
using cudak::launch_kernel;
constexpr int kThreads = 256;

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("kernel launch failed: ") + cudaGetErrorString(err));
}

// Thread 0 sums what every thread wrote to shared memory; the bug: no barrier in between.
template <bool kFixed>
__global__ void block_sum_kernel(float* out) {
  BNF_SHARED(float, part, [kThreads]);
  part[threadIdx.x] = threadIdx.x + 1.0f;
  if constexpr (kFixed) __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < kThreads; ++i) s += part[i];
    *out = s;
  }
}

// Warp sum by butterfly shuffles; the bug: half the warp skips them.
template <bool kFixed>
__global__ void warp_sum_kernel(float* out) {
  float v = threadIdx.x + 1.0f;
  if (kFixed || (threadIdx.x & 31) < 16) {
    for (int m = 1; m < 32; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  }
  if (threadIdx.x == 0) *out = v;
}

// The bug: a barrier only half the block reaches.
template <bool kFixed>
__global__ void half_barrier_kernel(float* out) {
  if (kFixed || threadIdx.x < kThreads / 2) __syncthreads();
  if (threadIdx.x == 0) *out = 1.0f;
}

// The bug: half of warp 0 shuffles while everyone else waits at a barrier.
template <bool kFixed>
__global__ void deadlock_kernel(float* out) {
  float v = 1.0f;
  if (kFixed || threadIdx.x < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  if (threadIdx.x == 0) *out = v;
}

// Split sum with a last-block-finalizes counter; the bug: the counter is not
// reset, so the second launch on the same workspace never finalizes.
template <bool kFixed>
__global__ void split_sum_kernel(const float* x, float* partials, unsigned* counter, float* out) {
  BNF_SHARED(bool, is_last);
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < kThreads; ++i) s += x[blockIdx.x * kThreads + i];
    partials[blockIdx.x] = s;
    __threadfence();
    const unsigned prev = atomicAdd(counter, 1u);
    is_last = prev + 1 == gridDim.x;
    if (kFixed && is_last) *counter = 0u;
  }
  __syncthreads();
  if (is_last && threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) t += partials[b];
    *out = t;
  }
}

// y = 2x; the bug: `<=` writes one element past the end.
template <bool kFixed>
__global__ void scale_kernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (kFixed ? i < n : i <= n) y[i] = 2.0f * x[i];
}

// The bug: one store past the end of a __shared__ array.
template <bool kFixed>
__global__ void shared_overrun_kernel(float* out) {
  BNF_SHARED(float, part, [kThreads]);
  part[threadIdx.x + (kFixed ? 0 : 1)] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) *out = part[kThreads / 2];
}

// Every block publishes a value, then block 0 sums them all; the bug: no grid sync in
// between, so block 0 reads partials that other blocks have not written yet.
template <bool kFixed>
__global__ void grid_sum_kernel(float* partials, float* out) {
  if (threadIdx.x == 0) partials[blockIdx.x] = blockIdx.x + 1.0f;
  if constexpr (kFixed) grid_sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) s += partials[b];
    *out = s;
  }
}

// The bug: odd blocks return before the grid sync that the others wait at.
template <bool kFixed>
__global__ void skipped_grid_sync_kernel(float* out) {
  if (!kFixed && blockIdx.x % 2 == 1) return;
  grid_sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = 1.0f;
}

// The bug: half of each block's threads exit before the grid sync.
template <bool kFixed>
__global__ void divergent_grid_sync_kernel(float* out) {
  if (!kFixed && threadIdx.x >= kThreads / 2) return;
  grid_sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = 1.0f;
}

template <bool kFixed>
__global__ void noop_kernel(float* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) *out = 1.0f;
}

// One float result in a guarded output.
template <class Launch>
double one_result(Launch launch) {
  float out = 0.0f;
  bnfemu::GuardedBuffers g;
  float* o = static_cast<float*>(g.add("out", &out, sizeof(out), bnfemu::GuardedBuffers::kOutput));
  launch(o);
  check_launch();
  g.finish();
  return out;
}

void check_cooperative(cudaError_t err) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cooperative launch failed: ") + cudaGetErrorString(err));
}

template <bool F>
std::vector<double> run(const std::string& name) {
  const int resident = bnfemu::resident_blocks_per_sm() * bnfemu::settings().sm_count;
  if (name == "missing_grid_sync") {
    constexpr int kBlocks = 6;
    std::vector<float> partials(kBlocks, 0.0f);
    return {one_result([&](float* o) {
      bnfemu::GuardedBuffers g;
      auto* p = static_cast<float*>(
          g.add("partials", partials.data(), kBlocks * 4, bnfemu::GuardedBuffers::kOutput));
      check_cooperative(launch_cooperative_kernel(grid_sum_kernel<F>, kBlocks, kThreads, 0, nullptr, p, o));
      g.finish();
    })};
  }
  if (name == "skipped_grid_sync")
    return {one_result([](float* o) {
      check_cooperative(launch_cooperative_kernel(skipped_grid_sync_kernel<F>, 4, kThreads, 0, nullptr, o));
    })};
  if (name == "divergent_grid_sync")
    return {one_result([](float* o) {
      check_cooperative(launch_cooperative_kernel(divergent_grid_sync_kernel<F>, 3, kThreads, 0, nullptr, o));
    })};
  if (name == "grid_sync_without_cooperative_launch")
    return {one_result([](float* o) {
      if (F) {
        check_cooperative(
            launch_cooperative_kernel(skipped_grid_sync_kernel<true>, 2, kThreads, 0, nullptr, o));
      } else {
        launch_kernel(skipped_grid_sync_kernel<true>, 2, kThreads, 0, nullptr, o);
      }
    })};
  if (name == "cooperative_grid_too_large")
    return {one_result([&](float* o) {
      check_cooperative(
          launch_cooperative_kernel(noop_kernel<F>, F ? resident : resident + 1, 32, 0, nullptr, o));
    })};
  if (name == "missing_barrier")
    return {one_result([](float* o) { launch_kernel(block_sum_kernel<F>, 1, kThreads, 0, nullptr, o); })};
  if (name == "divergent_shuffle")
    return {one_result([](float* o) { launch_kernel(warp_sum_kernel<F>, 1, kThreads, 0, nullptr, o); })};
  if (name == "divergent_barrier")
    return {one_result([](float* o) { launch_kernel(half_barrier_kernel<F>, 1, kThreads, 0, nullptr, o); })};
  if (name == "deadlock")
    return {one_result([](float* o) { launch_kernel(deadlock_kernel<F>, 1, kThreads, 0, nullptr, o); })};
  if (name == "shared_overrun")
    return {
        one_result([](float* o) { launch_kernel(shared_overrun_kernel<F>, 1, kThreads, 0, nullptr, o); })};
  if (name == "block_too_large")
    return {one_result([](float* o) { launch_kernel(noop_kernel<F>, 1, F ? 1024 : 1025, 0, nullptr, o); })};
  if (name == "grid_y_too_large")
    return {one_result(
        [](float* o) { launch_kernel(noop_kernel<F>, dim3(1, F ? 65535 : 65536), 32, 0, nullptr, o); })};
  if (name == "counter_not_reset") {
    constexpr int kBlocks = 8;
    std::vector<float> x(kBlocks * kThreads), partials(kBlocks, 0.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) + 1.0f;
    unsigned counter = 0;  // zeroed once, as a captured CUDA graph's workspace would be
    std::vector<double> results;
    for (int launch = 0; launch < 2; ++launch) {
      results.push_back(one_result([&](float* o) {
        launch_kernel(split_sum_kernel<F>, kBlocks, kThreads, 0, nullptr, x.data(), partials.data(), &counter,
                      o);
      }));
    }
    return results;
  }
  if (name == "out_of_bounds_store") {
    constexpr int n = 1000;
    std::vector<float> x(n, 1.5f), y(n, 0.0f);
    bnfemu::GuardedBuffers g;
    auto* gx = static_cast<const float*>(g.add("x", x.data(), n * 4, bnfemu::GuardedBuffers::kInput));
    auto* gy = static_cast<float*>(g.add("y", y.data(), n * 4, bnfemu::GuardedBuffers::kOutput));
    launch_kernel(scale_kernel<F>, (n + kThreads - 1) / kThreads, kThreads, 0, nullptr, gx, gy, n);
    check_launch();
    g.finish();
    double s = 0.0;
    for (float v : y) s += v;
    return {s};
  }
  throw std::invalid_argument("unknown planted kernel '" + name + "'");
}

}  // namespace

std::vector<std::string> planted_names() {
  return {"missing_barrier",
          "divergent_shuffle",
          "divergent_barrier",
          "deadlock",
          "counter_not_reset",
          "out_of_bounds_store",
          "shared_overrun",
          "block_too_large",
          "grid_y_too_large",
          "missing_grid_sync",
          "skipped_grid_sync",
          "divergent_grid_sync",
          "grid_sync_without_cooperative_launch",
          "cooperative_grid_too_large"};
}

std::vector<double> run_planted(const std::string& name, bool fixed) {
  return fixed ? run<true>(name) : run<false>(name);
}

}  // namespace planted
}  // namespace bnfused
