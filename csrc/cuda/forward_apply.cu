// Forward elementwise pass: y = act((x - mean) * invstd * w + b [+ residual]),
// the activation mask when requested, and in eval mode save_mean/save_invstd.
#include "activation.cuh"
#include "apply_common.cuh"
#include "kernels.h"
#include "launch_common.h"
#include "static_switch.h"

namespace bnfused {
namespace cudak {
namespace {

template <typename T>
struct ForwardApplyArgs {
  using A = acc_t<T>;
  const T* __restrict__ x;         // [N,C,S]
  const T* __restrict__ residual;  // [N,C,S] or null
  T* __restrict__ y;               // [N,C,S]
  uint32_t* __restrict__ mask;     // [ceil(numel / 32)] words or null
  AffineSource<A> affine;          // mean_lo: the stats pass's, null in eval
  A* __restrict__ save_mean;       // [C], written here only in eval mode (else null)
  A* __restrict__ save_invstd;     // [C], idem
  int64_t C, numel;
  A slope;
};

template <typename T, int V, bool kNscVec, Activation ACT>
__global__ void __launch_bounds__(kThreads, kForwardApplyBlocksPerSm)
    forward_apply_kernel(ForwardApplyArgs<T> a, ApplyPlan plan) {
  using A = acc_t<T>;
  constexpr int P = kNscVec ? V : 1;  // distinct channels per vector
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int lane = threadIdx.x & 31;

  if (a.save_mean != nullptr) {
    for (int64_t c = tid; c < a.C; c += stride) {
      a.save_mean[c] = a.affine.mean[c];
      a.save_invstd[c] = a.affine.invstd(c);
    }
  }

  int64_t cached = -1;
  A mean[P], scale[P], shift[P];
  // Loop bound is per warp (v - lane) so that all lanes take part in the mask shuffles.
  for (int64_t v = tid; v - lane < plan.vecs; v += stride) {
    uint32_t bits = 0;
    if (v < plan.vecs) {
      const int64_t c = vector_channel<kNscVec, V>(plan, v);
      if (c != cached) {
#pragma unroll
        for (int j = 0; j < P; ++j) a.affine.load_centered(c + j, mean[j], scale[j], shift[j]);
        cached = c;
      }
      const int64_t off = v * V;
      const Vec<T, V> xv = load_vec<T, V>(a.x, off);
      Vec<T, V> rv;
      if (a.residual != nullptr) rv = load_vec<T, V>(a.residual, off);
      Vec<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int pj = kNscVec ? j : 0;
        A z = (to_acc(xv.v[j]) - mean[pj]) * scale[pj] + shift[pj];
        if (a.residual != nullptr) z += to_acc(rv.v[j]);
        bits |= static_cast<uint32_t>(passes<ACT>(z)) << j;
        out.v[j] = from_acc<T>(activate<ACT>(z, a.slope));
      }
      store_vec<T, V>(a.y, off, out);
    }
    if (a.mask != nullptr) store_mask_bits<V>(a.mask, (v - lane) * V, bits, a.numel);
  }
}

template <typename T, int V, bool kNscVec>
void launch(const ForwardParams& p, const ApplyPlan& plan, const void* mean_lo, cudaStream_t stream) {
  using A = acc_t<T>;
  const bool eval = !p.training;
  ForwardApplyArgs<T> a;
  a.x = static_cast<const T*>(p.x);
  a.residual = static_cast<const T*>(p.residual);
  a.y = static_cast<T*>(p.y);
  a.mask = reinterpret_cast<uint32_t*>(p.mask);
  a.affine = AffineSource<A>{static_cast<const A*>(eval ? p.running_mean : p.save_mean),
                             static_cast<const A*>(eval ? p.running_var : p.save_invstd),
                             static_cast<const A*>(p.weight),
                             static_cast<const A*>(p.bias),
                             static_cast<A>(p.eps),
                             eval,
                             eval ? nullptr : static_cast<const A*>(mean_lo)};
  a.save_mean = eval ? static_cast<A*>(p.save_mean) : nullptr;
  a.save_invstd = eval ? static_cast<A*>(p.save_invstd) : nullptr;
  a.C = p.shape.C;
  a.numel = p.shape.numel();
  a.slope = static_cast<A>(p.activation_param);
  ACTIVATION_SWITCH(p.activation, ACT, [&] {
    launch_kernel(forward_apply_kernel<T, V, kNscVec, ACT>, plan.blocks, kThreads, 0, stream, a, plan);
  });
  check_launch("forward normalize");
}

}  // namespace

void launch_forward_apply(const ForwardParams& p, const ApplyPlan& plan, const void* mean_lo,
                          cudaStream_t stream) {
  DTYPE_SWITCH(p.dtype, T, [&] {
    if (plan.vec == 1) return launch<T, 1, false>(p, plan, mean_lo, stream);
    if (plan.vec != kVec<T>) throw std::runtime_error("bnfused: bad vector width");
    if (plan.nsc_vec) return launch<T, kVec<T>, true>(p, plan, mean_lo, stream);
    return launch<T, kVec<T>, false>(p, plan, mean_lo, stream);
  });
}

}  // namespace cudak
}  // namespace bnfused
