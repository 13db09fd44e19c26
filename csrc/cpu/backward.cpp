// backward_cpu: one reduction pass for sum(g) and sum(g * (x - mean)) when
// they are needed, then one elementwise pass for dx and dresidual.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/channel_vectors.h"
#include "cpu/cpu_common.h"

namespace bnfused {

void backward_cpu(const BackwardParams& p) {
  cpu::Plan pl = cpu::make_plan(p.shape);
  // dy, x [, residual], dx [, dresidual]
  const int64_t tensors = 2 + (p.residual != nullptr) + (p.dx != nullptr) + (p.dresidual != nullptr);
  const int64_t elem = cpu::dtype_bytes(p.dtype);
  pl.stream = cpu::stream_aligned(pl, p.dx, elem) && cpu::stream_aligned(pl, p.dresidual, elem) &&
              cpu::stream_outputs(tensors * pl.numel() * elem);
  const cpu::KernelTable& kernels = cpu::kernels();
  const int64_t C = pl.C;
  const bool dbl = p.dtype == DType::kFloat64;

  cpu::AccBuffer mean(C, dbl), alpha(C, dbl), beta(C, dbl), k_g(C, dbl), k_x(C, dbl), k_c(C, dbl);
  std::vector<double> invstd(C), kg(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = cpu::acc_get(p.save_invstd, dbl, c);
    const double w = cpu::acc_get_or(p.weight, dbl, c, 1.0);
    kg[c] = w * invstd[c];
    mean.set(c, cpu::acc_get(p.save_mean, dbl, c));
    alpha.set(c, invstd[c] * w);
    beta.set(c, cpu::acc_get_or(p.bias, dbl, c, 0.0));
    k_g.set(c, kg[c]);
  }
  const cpu::BackwardCoefs coefs{mean.data(), alpha.data(), beta.data(),
                                 k_g.data(),  k_x.data(),   k_c.data()};

  const bool need_sums = (p.dx && p.training) || p.dweight || p.dbias;
  if (need_sums) {
    // Every block writes all of its partial sums: the scratch needs no zeroing.
    double* bsum_g = cpu::host_scratch(static_cast<size_t>(2 * pl.blocks * C));
    double* bsum_gxm = bsum_g + pl.blocks * C;
    const cpu::GradSumsOut out{bsum_g, bsum_gxm};
    const int64_t item_elems = pl.rows ? pl.block_len * C : pl.block_len;
    at::parallel_for(0, pl.items(), cpu::max64(1, 65536 / item_elems), [&](int64_t a, int64_t b) {
      kernels.grad_sums(p, pl, coefs, out, a, b);
    });
    // Block partials summed in block order, the channel loop innermost (vectorizes).
    for (int64_t b = 1; b < pl.blocks; ++b)
      for (int64_t c = 0; c < C; ++c) {
        bsum_g[c] += bsum_g[b * C + c];
        bsum_gxm[c] += bsum_gxm[b * C + c];
      }
    const double n = double(pl.n);
    for (int64_t c = 0; c < C; ++c) {
      const double sg = bsum_g[c], sgxm = bsum_gxm[c];
      if (p.dweight) cpu::acc_put(p.dweight, dbl, c, sgxm * invstd[c]);
      if (p.dbias) cpu::acc_put(p.dbias, dbl, c, sg);
      k_c.set(c, -kg[c] * (sg / n));
      k_x.set(c, -kg[c] * (invstd[c] * invstd[c] * sgxm / n));
    }
  }

  if (p.dx || p.dresidual) {
    const int64_t numel = pl.numel();
    cpu::advise_huge_pages(p.dx, numel * elem);
    cpu::advise_huge_pages(p.dresidual, numel * elem);
    const int64_t blocks = cpu::ceil_div(numel, cpu::kApplyBlock);
    at::parallel_for(0, blocks, 16, [&](int64_t a, int64_t b) {
      kernels.backward_apply(p, pl, coefs, a * cpu::kApplyBlock,
                             cpu::min64(numel, b * cpu::kApplyBlock));
    });
  }
}

}  // namespace bnfused
