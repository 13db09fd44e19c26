// Persistent training backward (persistent.cuh): the gradient sums of GradSumOp
// (dweight, dbias and the dx coefficients), then dx and dresidual, in one
// cooperative launch that reads dy and x once.
#include "grad_sum_op.cuh"
#include "kernels.h"
#include "persistent_launch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, int V, Activation ACT>
struct BackwardResidentOp {
  using A = acc_t<T>;
  using Elem = T;
  using Reduce = GradSumOp<T, V, ACT>;
  using Item = typename Reduce::Item;
  static constexpr bool kBackward = true;
  static constexpr uint32_t* mask = nullptr;  // the backward writes no mask
  static constexpr int64_t numel = 0;
  struct Coef {
    A mean, scale, shift, mean_g, proj;
  };

  Reduce reduce;              // dy, x, mask or residual, saved stats, weight, bias, dweight, dbias
  T* __restrict__ dx;         // [N,C,S]
  T* __restrict__ dresidual;  // [N,C,S] or null

  // The op of a training backward; dx_coefs: the DxCoefs workspace vectors.
  static BackwardResidentOp make(const BackwardParams& p, const ReducePlan&, void* dx_coefs) {
    return {make_grad_sum_op<T, V, ACT>(p, dx_coefs), static_cast<T*>(p.dx), static_cast<T*>(p.dresidual)};
  }

  // The dx coefficients were written by other blocks of this launch: read through L2.
  __device__ __forceinline__ Coef coef(int64_t c) const {
    Coef k;
    k.mean = reduce.affine.mean[c];
    k.scale = load_channel_cg(reduce.dx.scale + c);
    k.shift = load_channel_cg(reduce.dx.shift + c);
    k.mean_g = load_channel_cg(reduce.dx.mean_g + c);
    k.proj = load_channel_cg(reduce.dx.proj + c);
    return k;
  }

  template <int P>
  __device__ __forceinline__ uint32_t apply(const Item& it, int64_t off, const Coef* coefs) const {
    Vec<T, V> dxv, dres;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const Coef& k = coefs[P == 1 ? 0 : j];
      const A xmu = to_acc(it.x.v[j]) - k.mean;
      const A g = reduce.src.grad(it, j, xmu, k.scale, k.shift);
      dres.v[j] = from_acc<T>(g);
      dxv.v[j] = from_acc<T>((g - k.mean_g - xmu * k.proj) * k.scale);
    }
    store_vec<T, V>(dx, off, dxv);
    if (dresidual != nullptr) store_vec<T, V>(dresidual, off, dres);
    return 0u;
  }
};

}  // namespace

int backward_persistent_blocks_per_sm(const BackwardParams& p, const ReducePlan& plan) {
  int blocks = 0;
  check_cuda(dispatch_persistent<BackwardResidentOp>(p, plan, nullptr, nullptr, &blocks),
             "occupancy of the persistent backward");
  return blocks;
}

void launch_backward_persistent(const BackwardParams& p, const ReducePlan& plan, void* dx_coefs,
                                cudaStream_t stream) {
  check_cuda(dispatch_persistent<BackwardResidentOp>(p, plan, dx_coefs, stream, nullptr),
             "persistent backward");
}

}  // namespace cudak
}  // namespace bnfused
