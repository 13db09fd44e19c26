// Backward reduction: per channel sum_g and sum_gxmu = sum(g * (x - mean)),
// then dweight = sum_gxmu * invstd, dbias = sum_g and the dx coefficients,
// written by the block that finishes each channel.
#include "apply_common.cuh"
#include "grad_input.cuh"
#include "kernels.h"
#include "launch_common.h"
#include "reduce_ncs.cuh"
#include "reduce_nsc.cuh"
#include "static_switch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, int V, Activation ACT>
struct GradSumOp {
  using A = acc_t<T>;
  using State = GradSums<A>;
  using Item = GradItem<T, V>;
  struct Chan { A mean, scale, shift; };
  static constexpr int kVec = V;
  static constexpr int kUnroll = V >= 4 ? 2 : 4;

  GradSource<T, ACT> src;
  AffineSource<A> affine;      // save_mean, save_invstd, weight, bias
  A* __restrict__ dweight;     // [C] or null
  A* __restrict__ dbias;       // [C] or null
  A* __restrict__ mean_g;      // [C] or null
  A* __restrict__ proj;        // [C] or null
  A n;

  __device__ __forceinline__ Chan channel(int64_t c) const {
    Chan ch;
    affine.load(c, ch.mean, ch.scale, ch.shift);
    return ch;
  }
  __device__ __forceinline__ Item load(int64_t off) const { return src.template load<V>(off); }

  __device__ __forceinline__ void accumulate_one(State& s, const Item& it, int j, const Chan& ch) const {
    const A xmu = to_acc(it.x.v[j]) - ch.mean;
    const A g = src.grad(it, j, xmu, ch.scale, ch.shift);
    s.g += g;
    s.gxmu += g * xmu;
  }
  __device__ __forceinline__ void accumulate(State& s, const Item& it, const Chan& ch) const {
#pragma unroll
    for (int j = 0; j < V; ++j) accumulate_one(s, it, j, ch);
  }

  __device__ __forceinline__ void finalize(int64_t c, const State& s) const {
    const A invstd = affine.stat[c];
    if (dweight != nullptr) dweight[c] = s.gxmu * invstd;
    if (dbias != nullptr) dbias[c] = s.g;
    if (mean_g != nullptr) {
      mean_g[c] = s.g / n;
      proj[c] = s.gxmu / n * invstd * invstd;
    }
  }
};

template <typename T, int V, Activation ACT>
void launch(const BackwardParams& p, const ReducePlan& plan, void* mean_g, void* proj,
            cudaStream_t stream) {
  using A = acc_t<T>;
  GradSumOp<T, V, ACT> op;
  op.src = GradSource<T, ACT>{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                              static_cast<const T*>(p.residual), p.mask,
                              static_cast<A>(p.activation_param)};
  op.affine = AffineSource<A>{static_cast<const A*>(p.save_mean), static_cast<const A*>(p.save_invstd),
                              static_cast<const A*>(p.weight), static_cast<const A*>(p.bias),
                              static_cast<A>(p.eps), false};
  op.dweight = static_cast<A*>(p.dweight);
  op.dbias = static_cast<A*>(p.dbias);
  op.mean_g = static_cast<A*>(mean_g);
  op.proj = static_cast<A*>(proj);
  op.n = static_cast<A>(p.shape.per_channel());
  if (plan.nsc) {
    launch_kernel(reduce_nsc_kernel<GradSumOp<T, V, ACT>>, dim3(plan.tiles, plan.splits), kThreads, 0, stream, op,
                  plan);
  } else {
    launch_kernel(reduce_ncs_kernel<GradSumOp<T, V, ACT>>, dim3(static_cast<unsigned>(plan.C), plan.splits), kThreads,
                  0, stream, op, plan);
  }
  check_launch("backward reduction");
}

}  // namespace

void launch_backward_reduce(const BackwardParams& p, const ReducePlan& plan, void* mean_g,
                            void* proj, cudaStream_t stream) {
  DTYPE_SWITCH(p.dtype, T, [&] {
    ACTIVATION_SWITCH(p.activation, ACT, [&] {
      if (plan.vec == 1) return launch<T, 1, ACT>(p, plan, mean_g, proj, stream);
      if (plan.vec != kVec<T>) throw std::runtime_error("bnfused: bad vector width");
      return launch<T, kVec<T>, ACT>(p, plan, mean_g, proj, stream);
    });
  });
}

}  // namespace cudak
}  // namespace bnfused
