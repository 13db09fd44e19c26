// forward_cpu: batch statistics (one pass over x) or the running ones, the
// running-stat update, saved statistics, then one normalize pass.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/channel_vectors.h"
#include "cpu/cpu_common.h"

namespace bnfused {
namespace {

using cpu::Plan;

// Per-channel fp64 mean and biased variance of x (deterministic for a given shape).
void batch_stats(const ForwardParams& p, const Plan& pl, const cpu::KernelTable& kernels,
                 std::vector<double>& mean, std::vector<double>& var) {
  const int64_t C = pl.C;
  double* shift = cpu::host_scratch(static_cast<size_t>((2 * pl.blocks + 1) * C));
  double* bmean = shift + C;
  double* bm2 = bmean + pl.blocks * C;
  for (int64_t c = 0; c < C; ++c)
    shift[c] = cpu::element_as_double(p.x, p.dtype, pl.rows ? c : c * pl.S);
  const cpu::StatsOut out{bmean, bm2, shift};
  const int64_t item_elems = pl.rows ? pl.block_len * C : pl.block_len;
  at::parallel_for(0, pl.items(), cpu::max64(1, 65536 / item_elems), [&](int64_t a, int64_t b) {
    kernels.stats(p, pl, out, a, b);
  });
  // Chan merge of the blocks in block order. Every channel has the same count per
  // block, so the weights are per block and the channel loop vectorizes.
  // Parallel only when the merge is large enough to pay for waking the threads.
  at::parallel_for(0, C, cpu::max64(256, (int64_t(1) << 18) / pl.blocks), [&](int64_t c0, int64_t c1) {
    double* m = mean.data();
    double* m2 = var.data();
    for (int64_t c = c0; c < c1; ++c) m[c] = m2[c] = 0;
    double na = 0;
    for (int64_t b = 0; b < pl.blocks; ++b) {
      const double nb = double(pl.block_count(b)), n = na + nb, f_mean = nb / n, f_m2 = na * nb / n;
      const double* bm = bmean + b * C;
      const double* bq = bm2 + b * C;
      for (int64_t c = c0; c < c1; ++c) {
        const double delta = bm[c] - m[c];
        m[c] += delta * f_mean;
        m2[c] += bq[c] + delta * delta * f_m2;
      }
      na = n;
    }
    for (int64_t c = c0; c < c1; ++c) {
      m[c] += shift[c];
      m2[c] /= na;
    }
  });
}

void update_running(const ForwardParams& p, const Plan& pl, bool dbl,
                    const std::vector<double>& mean, const std::vector<double>& var) {
  const double m = p.momentum, n = double(pl.n);
  for (int64_t c = 0; c < pl.C; ++c) {
    const double rm = cpu::acc_get(p.running_mean, dbl, c);
    const double rv = cpu::acc_get(p.running_var, dbl, c);
    cpu::acc_put(p.running_mean, dbl, c, (1 - m) * rm + m * mean[c]);
    cpu::acc_put(p.running_var, dbl, c, (1 - m) * rv + m * (var[c] * n / (n - 1)));
  }
}

}  // namespace

void forward_cpu(const ForwardParams& p) {
  Plan pl = cpu::make_plan(p.shape);
  const int64_t elem = cpu::dtype_bytes(p.dtype);
  const int64_t tensors = 2 + (p.residual != nullptr);  // x [, residual], y
  pl.stream = cpu::stream_aligned(pl, p.y, elem) && cpu::stream_outputs(tensors * pl.numel() * elem);
  const cpu::KernelTable& kernels = cpu::kernels();
  const int64_t C = pl.C;
  const bool dbl = p.dtype == DType::kFloat64;

  std::vector<double> mean(C), var(C);
  if (p.training) {
    batch_stats(p, pl, kernels, mean, var);
    if (p.running_mean && p.running_var) update_running(p, pl, dbl, mean, var);
  } else {
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = cpu::acc_get(p.running_mean, dbl, c);
      var[c] = cpu::acc_get(p.running_var, dbl, c);
    }
  }

  // Rows layouts whose three per-channel vectors would fill over half of L1 (C > 1365
  // floats) normalize as x * alpha + (beta - mean * alpha) when every |mean| <= 4 std:
  // one FMA, two vectors, rounding within a few ulps of the centered form (measured
  // 6.6e-7 against float64 at |mean| = 3.3 std; torch: 9.7e-6). Otherwise, and with
  // smaller C where it measured no faster, (x - mean) * alpha + beta loses nothing.
  std::vector<double> invstd(C);
  bool centered = !pl.rows || C * (dbl ? 8 : 4) * 3 <= 16384;
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = 1.0 / std::sqrt(var[c] + p.eps);
    if (!(std::abs(mean[c]) * invstd[c] <= 4.0)) centered = true;
  }
  cpu::AccBuffer mean_acc(C, dbl), alpha(C, dbl), beta(C, dbl);
  for (int64_t c = 0; c < C; ++c) {
    const double a = invstd[c] * cpu::acc_get_or(p.weight, dbl, c, 1.0);
    const double bias = cpu::acc_get_or(p.bias, dbl, c, 0.0);
    cpu::acc_put(p.save_mean, dbl, c, mean[c]);
    cpu::acc_put(p.save_invstd, dbl, c, invstd[c]);
    alpha.set(c, a);
    // Centered: the rounding error of the acc-typed mean moves into beta.
    mean_acc.set(c, mean[c]);
    beta.set(c, centered ? bias - (mean[c] - mean_acc.get(c)) * a : bias - mean[c] * a);
  }
  const cpu::ForwardCoefs coefs{centered ? mean_acc.data() : nullptr, alpha.data(), beta.data()};

  const int64_t numel = pl.numel();
  cpu::advise_huge_pages(p.y, numel * elem);
  const int64_t blocks = cpu::ceil_div(numel, cpu::kApplyBlock);
  at::parallel_for(0, blocks, 16, [&](int64_t a, int64_t b) {
    kernels.forward_apply(p, pl, coefs, a * cpu::kApplyBlock,
                          cpu::min64(numel, b * cpu::kApplyBlock));
  });
  if (p.mask) {
    const int64_t used = cpu::ceil_div(numel, 8);
    std::memset(p.mask + used, 0, static_cast<size_t>(mask_bytes(numel) - used));
  }
}

}  // namespace bnfused
