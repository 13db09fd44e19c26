// Backward elementwise pass: dresidual = g and
// dx = (g - mean_g - (x - mean) * proj) * invstd * w  (mean_g = proj = 0 for eval statistics).
#include "apply_common.cuh"
#include "grad_input.cuh"
#include "grad_sum_op.cuh"
#include "kernels.h"
#include "launch_common.h"
#include "static_switch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T, Activation ACT>
struct BackwardApplyArgs {
  using A = acc_t<T>;
  GradSource<T, ACT> src;
  AffineSource<A> affine;        // save_mean and the DxCoefs scale and shift, or the params'
  const A* __restrict__ mean_g;  // [C] or null
  const A* __restrict__ proj;    // [C] or null
  T* __restrict__ dx;            // [N,C,S] or null
  T* __restrict__ dresidual;     // [N,C,S] or null
};

template <typename T, int V, bool kNscVec, Activation ACT>
__global__ void __launch_bounds__(kThreads, kBackwardApplyBlocksPerSm)
    backward_apply_kernel(BackwardApplyArgs<T, ACT> a, ApplyPlan plan) {
  using A = acc_t<T>;
  constexpr int P = kNscVec ? V : 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t cached = -1;
  A mean[P], scale[P], shift[P], mg[P], pj[P];
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; v < plan.vecs; v += stride) {
    const int64_t c = vector_channel<kNscVec, V>(plan, v);
    if (c != cached) {
#pragma unroll
      for (int j = 0; j < P; ++j) {
        a.affine.load(c + j, mean[j], scale[j], shift[j]);
        mg[j] = a.mean_g != nullptr ? a.mean_g[c + j] : A(0);
        pj[j] = a.proj != nullptr ? a.proj[c + j] : A(0);
      }
      cached = c;
    }
    const int64_t off = v * V;
    const GradItem<T, V> it = a.src.template load<V>(off);
    Vec<T, V> dx, dres;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int q = kNscVec ? j : 0;
      const A xmu = to_acc(it.x.v[j]) - mean[q];
      const A g = a.src.grad(it, j, xmu, scale[q], shift[q]);
      dres.v[j] = from_acc<T>(g);
      // Eval statistics have no mean/variance terms: x - mean must not enter (NaN * 0).
      const A centered = a.proj != nullptr ? g - mg[q] - xmu * pj[q] : g;
      dx.v[j] = from_acc<T>(centered * scale[q]);
    }
    if (a.dx != nullptr) store_vec<T, V>(a.dx, off, dx);
    if (a.dresidual != nullptr) store_vec<T, V>(a.dresidual, off, dres);
  }
}

template <typename T, int V, bool kNscVec, Activation ACT>
void launch(const BackwardParams& p, const ApplyPlan& plan, const void* dx_coefs, cudaStream_t stream) {
  using A = acc_t<T>;
  BackwardApplyArgs<T, ACT> a;
  a.src = GradSource<T, ACT>{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                             static_cast<const T*>(p.residual), p.mask, static_cast<A>(p.activation_param)};
  const DxCoefs<A> coefs = DxCoefs<A>::at(const_cast<void*>(dx_coefs), p.shape.C);
  // With the reduction's coefficients the scale is taken as it is (stat = scale, no weight)
  // and the shift already holds the bias and the mean's low part.
  a.affine = coefs.scale != nullptr ? AffineSource<A>{static_cast<const A*>(p.save_mean),
                                                      coefs.scale,
                                                      nullptr,
                                                      coefs.shift,
                                                      static_cast<A>(p.eps),
                                                      false,
                                                      nullptr}
                                    : AffineSource<A>{static_cast<const A*>(p.save_mean),
                                                      static_cast<const A*>(p.save_invstd),
                                                      static_cast<const A*>(p.weight),
                                                      static_cast<const A*>(p.bias),
                                                      static_cast<A>(p.eps),
                                                      false,
                                                      nullptr};
  // dx's mean and variance terms only with batch statistics and a dx to write.
  const bool terms = p.training && p.dx != nullptr;
  a.mean_g = terms ? coefs.mean_g : nullptr;
  a.proj = terms ? coefs.proj : nullptr;
  a.dx = static_cast<T*>(p.dx);
  a.dresidual = static_cast<T*>(p.dresidual);
  launch_kernel(backward_apply_kernel<T, V, kNscVec, ACT>, plan.blocks, kThreads, 0, stream, a, plan);
  check_launch("backward elementwise");
}

}  // namespace

void launch_backward_apply(const BackwardParams& p, const ApplyPlan& plan, const void* dx_coefs,
                           cudaStream_t stream) {
  DTYPE_SWITCH(p.dtype, T, [&] {
    ACTIVATION_SWITCH(p.activation, ACT, [&] {
      if (plan.vec == 1) return launch<T, 1, false, ACT>(p, plan, dx_coefs, stream);
      if (plan.vec != kVec<T>) throw std::runtime_error("bnfused: bad vector width");
      if (plan.nsc_vec) return launch<T, kVec<T>, true, ACT>(p, plan, dx_coefs, stream);
      return launch<T, kVec<T>, false, ACT>(p, plan, dx_coefs, stream);
    });
  });
}

}  // namespace cudak
}  // namespace bnfused
