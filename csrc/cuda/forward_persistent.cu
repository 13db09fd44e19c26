// Persistent training forward (persistent.cuh): the statistics of StatsOp and
// y = act((x - mean) * invstd * w + b [+ residual]) with its mask in one
// cooperative launch that reads x once.
#include "activation.cuh"
#include "kernels.h"
#include "persistent_launch.h"
#include "stats_op.cuh"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, int V, Activation ACT>
struct ForwardResidentOp {
  using A = acc_t<T>;
  using Elem = T;
  using Reduce = StatsOp<T, V>;
  using Item = typename Reduce::Item;
  static constexpr bool kBackward = false;
  struct Coef {
    A mean, scale, shift;
  };

  Reduce reduce;                   // x, save_mean, save_invstd, mean_lo, running stats
  const T* __restrict__ residual;  // [N,C,S] or null
  T* __restrict__ y;               // [N,C,S]
  uint32_t* mask;                  // [ceil(numel / 32)] words or null
  int64_t numel;
  const A* __restrict__ weight;  // [C] or null
  const A* __restrict__ bias;    // [C] or null
  A slope;

  // The op of a training forward; mean_lo: save_mean_lo or the workspace slot.
  static ForwardResidentOp make(const ForwardParams& p, const ReducePlan& plan, void* mean_lo) {
    return {make_stats_op<T, V>(p, plan.nsc, mean_lo),
            static_cast<const T*>(p.residual),
            static_cast<T*>(p.y),
            reinterpret_cast<uint32_t*>(p.mask),
            p.shape.numel(),
            static_cast<const A*>(p.weight),
            static_cast<const A*>(p.bias),
            static_cast<A>(p.activation_param)};
  }

  // The saved statistics were written by other blocks of this launch: read through
  // L2 (load_channel_cg: __ldcg), never the non-coherent read-only path.
  __device__ __forceinline__ Coef coef(int64_t c) const {
    const A scale = load_channel_cg(reduce.save_invstd + c) * (weight != nullptr ? weight[c] : A(1));
    const A shift = bias != nullptr ? bias[c] : A(0);
    // x - mean is exact near the mean; shift absorbs the mean's rounding error.
    return {load_channel_cg(reduce.save_mean + c), scale,
            shift - load_channel_cg(reduce.mean_lo + c) * scale};
  }

  template <int P>
  __device__ __forceinline__ uint32_t apply(const Item& xv, int64_t off, const Coef* coefs) const {
    Vec<T, V> rv;
    if (residual != nullptr) rv = load_vec<T, V>(residual, off);
    Vec<T, V> out;
    uint32_t bits = 0;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const Coef& k = coefs[P == 1 ? 0 : j];
      A z = (to_acc(xv.v[j]) - k.mean) * k.scale + k.shift;
      if (residual != nullptr) z += to_acc(rv.v[j]);
      bits |= static_cast<uint32_t>(passes<ACT>(z)) << j;
      out.v[j] = from_acc<T>(activate<ACT>(z, slope));
    }
    store_vec<T, V>(y, off, out);
    return bits;
  }
};

}  // namespace

int forward_persistent_blocks_per_sm(const ForwardParams& p, const ReducePlan& plan) {
  int blocks = 0;
  check_cuda(dispatch_persistent<ForwardResidentOp>(p, plan, nullptr, nullptr, &blocks),
             "occupancy of the persistent forward");
  return blocks;
}

void launch_forward_persistent(const ForwardParams& p, const ReducePlan& plan, void* mean_lo,
                               cudaStream_t stream) {
  check_cuda(dispatch_persistent<ForwardResidentOp>(p, plan, mean_lo, stream, nullptr), "persistent forward");
}

}  // namespace cudak
}  // namespace bnfused
