// backward_cpu: one reduction pass for sum(g) and sum(g * (x - mean)) when
// they are needed, then one elementwise pass for dx and dresidual.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "cpu/channel_vectors.h"
#include "cpu/cpu_common.h"

namespace bnfused {
namespace {

// The power of two in (invstd / 2, invstd], at most 1 (1 when invstd is not finite or 0):
// the kernels sum g * (x - mean) * scale, exactly scaled and finite for any finite fp32
// data, where the unscaled sum overflows float32 at a spread near 3e37.
double sum_scale(double invstd) {
  if (!(invstd > 0.0 && invstd < 1.0)) return 1.0;
  int e;
  std::frexp(invstd, &e);
  return std::ldexp(1.0, e - 1);
}

// The backward's per-channel coefficients (cpu::BackwardCoefs), named slices of one
// reused host scratch block.
template <typename A>
struct ChannelVectors {
  A *alpha, *beta, *k_x, *k_c, *xscale;
  explicit ChannelVectors(int64_t C) {
    A* s = cpu::host_scratch<A, 1>(static_cast<size_t>(5 * C));
    alpha = s, beta = s + C, k_x = s + 2 * C, k_c = s + 3 * C, xscale = s + 4 * C;
  }
};

// Typed on the acc type A so the per-channel loops vectorize.
template <typename A>
void backward_typed(const BackwardParams& p, const cpu::Plan& pl, const cpu::KernelTable& kernels) {
  const int64_t C = pl.C;
  const A* save_mean = static_cast<const A*>(p.save_mean);
  const A* invstd = static_cast<const A*>(p.save_invstd);
  const A* weight = static_cast<const A*>(p.weight);
  const A* bias = static_cast<const A*>(p.bias);
  // With batch statistics the mean is save_mean + lo. The kernels subtract save_mean
  // (exact for x near the mean); lo enters the per-channel coefficients.
  const A* lo = p.training ? static_cast<const A*>(p.save_mean_lo) : nullptr;
  // alpha = invstd * weight, the forward's scale, is also dx's factor of g (k_g);
  // beta = bias - lo * alpha, so that z = (x - save_mean) * alpha + beta.
  ChannelVectors<A> v(C);
  for (int64_t c = 0; c < C; ++c) {
    const double alpha = (weight ? double(weight[c]) : 1.0) * double(invstd[c]);
    v.alpha[c] = A(alpha);
    v.xscale[c] = A(sum_scale(double(invstd[c])));
    const double b = bias ? double(bias[c]) : 0.0;
    v.beta[c] = A(lo && lo[c] != A(0) ? b - double(lo[c]) * alpha : b);
  }
  const cpu::BackwardCoefs coefs{save_mean, v.alpha, v.beta, v.alpha, v.k_x, v.k_c, v.xscale};

  const bool need_sums = (p.dx && p.training) || p.dweight || p.dbias;
  if (need_sums) {
    // Every block writes all of its partial sums: the scratch needs no zeroing.
    double* bsum_g = cpu::host_scratch<double>(static_cast<size_t>(2 * pl.blocks * C));
    double* bsum_gxm = bsum_g + pl.blocks * C;
    const cpu::GradSumsOut out{bsum_g, bsum_gxm};
    const int64_t item_elems = pl.rows ? pl.block_len * C : pl.block_len;
    at::parallel_for(0, pl.items(), cpu::max64(1, 65536 / item_elems),
                     [&](int64_t a, int64_t b) { kernels.grad_sums(p, pl, coefs, out, a, b); });
    // Block partials summed in block order, the channel loop innermost (vectorizes).
    for (int64_t b = 1; b < pl.blocks; ++b)
      for (int64_t c = 0; c < C; ++c) {
        bsum_g[c] += bsum_g[b * C + c];
        bsum_gxm[c] += bsum_gxm[b * C + c];
      }
    const double n = double(pl.n);
    A* dweight = static_cast<A*>(p.dweight);
    A* dbias = static_cast<A*>(p.dbias);
    // The kernels summed g * (x - save_mean); lo turns it into g * (x - mean), and
    // dx = k_g * (g + k_x * (x - save_mean) + k_c).
    for (int64_t c = 0; c < C; ++c) {
      const double sg = bsum_g[c], inv = double(invstd[c]), m_lo = lo ? double(lo[c]) : 0.0;
      // (A zero lo leaves the sums as they are, Inf and NaN included.)
      const double summed = bsum_gxm[c] / double(v.xscale[c]);  // exact: a power of two
      const double sgxm = m_lo != 0.0 ? summed - m_lo * sg : summed;
      const double kx = -(inv * inv * sgxm / n);
      if (dweight) dweight[c] = A(sgxm * inv);
      if (dbias) dbias[c] = A(sg);
      v.k_c[c] = A(m_lo != 0.0 ? -(sg / n) - kx * m_lo : -(sg / n));
      v.k_x[c] = A(kx);
    }
  }

  if (p.dx || p.dresidual) {
    const int64_t numel = pl.numel();
    const int64_t elem = cpu::dtype_bytes(p.dtype);
    cpu::advise_huge_pages(p.dx, numel * elem);
    cpu::advise_huge_pages(p.dresidual, numel * elem);
    const int64_t blocks = cpu::ceil_div(numel, cpu::kApplyBlock);
    at::parallel_for(0, blocks, 16, [&](int64_t a, int64_t b) {
      kernels.backward_apply(p, pl, coefs, a * cpu::kApplyBlock, cpu::min64(numel, b * cpu::kApplyBlock));
    });
  }
}

}  // namespace

void backward_cpu(const BackwardParams& p) {
  cpu::Plan pl = cpu::make_plan(p.shape);
  // dy, x [, residual], dx [, dresidual]
  const int64_t tensors = 2 + (p.residual != nullptr) + (p.dx != nullptr) + (p.dresidual != nullptr);
  const int64_t elem = cpu::dtype_bytes(p.dtype);
  pl.stream = cpu::stream_aligned(pl, p.dx, elem) && cpu::stream_aligned(pl, p.dresidual, elem) &&
              cpu::stream_outputs(tensors * pl.numel() * elem);
  if (p.dtype == DType::kFloat64)
    backward_typed<double>(p, pl, cpu::kernels());
  else
    backward_typed<float>(p, pl, cpu::kernels());
}

}  // namespace bnfused
