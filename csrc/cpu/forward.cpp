// forward_cpu: batch statistics (one pass over x) or the running ones, the
// running-stat update, saved statistics, then one normalize pass.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "contract_math.h"
#include "cpu/channel_vectors.h"
#include "cpu/cpu_common.h"

namespace bnfused {
namespace {

using cpu::Plan;

// A channel whose statistics came out non-finite, recomputed two-pass in fp64 element
// by element: finite data never overflows there (squares of fp32 values fit a double),
// and an infinite value gives the ±Inf (or NaN) mean of torch's sum. Only such channels
// pay for it.
void exact_channel_stats(const ForwardParams& p, int64_t c, double* mean, double* var) {
  const Shape& s = p.shape;
  const int64_t n = s.N * s.S;
  auto element = [&](int64_t i) {  // element i of channel c, i in [0, N * S)
    const int64_t idx = s.layout == Layout::kNSC ? i * s.C + c : ((i / s.S) * s.C + c) * s.S + i % s.S;
    return cpu::element_as_double(p.x, p.dtype, idx);
  };
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += element(i);
  const double m = sum / double(n);
  double m2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = element(i) - m;
    m2 += d * d;
  }
  *mean = m;
  *var = m2 / double(n);
}

// Per-channel fp64 mean and biased variance of x (deterministic for a given shape).
void batch_stats(const ForwardParams& p, const Plan& pl, const cpu::KernelTable& kernels, double* mean,
                 double* var) {
  const int64_t C = pl.C;
  double* shift = cpu::host_scratch<double>(static_cast<size_t>((2 * pl.blocks + 1) * C));
  double* bmean = shift + C;
  double* bm2 = bmean + pl.blocks * C;
  for (int64_t c = 0; c < C; ++c) shift[c] = cpu::element_as_double(p.x, p.dtype, pl.rows ? c : c * pl.S);
  const cpu::StatsOut out{bmean, bm2, shift};
  const int64_t item_elems = pl.rows ? pl.block_len * C : pl.block_len;
  at::parallel_for(0, pl.items(), cpu::max64(1, 65536 / item_elems),
                   [&](int64_t a, int64_t b) { kernels.stats(p, pl, out, a, b); });
  // Chan merge of the blocks in block order. Every channel has the same count per
  // block, so the weights are per block and the channel loop vectorizes.
  // Parallel only when the merge is large enough to pay for waking the threads.
  at::parallel_for(0, C, cpu::max64(256, (int64_t(1) << 18) / pl.blocks), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) mean[c] = var[c] = 0;
    double na = 0;
    for (int64_t b = 0; b < pl.blocks; ++b) {
      const double nb = double(pl.block_count(b)), n = na + nb, f_mean = nb / n, f_m2 = na * nb / n;
      const double* bm = bmean + b * C;
      const double* bq = bm2 + b * C;
      for (int64_t c = c0; c < c1; ++c) {
        const double delta = bm[c] - mean[c];
        mean[c] += delta * f_mean;
        var[c] += bq[c] + delta * delta * f_m2;
      }
      na = n;
    }
    for (int64_t c = c0; c < c1; ++c) {
      mean[c] += shift[c];
      var[c] /= na;
    }
    for (int64_t c = c0; c < c1; ++c)
      if (!std::isfinite(mean[c]) || !std::isfinite(var[c])) exact_channel_stats(p, c, &mean[c], &var[c]);
  });
}

// invstd = 1 / sqrt(var + eps), correctly rounded in fp64: on small inputs with
// thousands of channels this loop costs as much as the elementwise pass, so it
// is cloned for the wider vector units.
__attribute__((target_clones("avx512f", "avx2", "default"))) void inverse_std(const double* __restrict var,
                                                                              double eps, int64_t C,
                                                                              double* __restrict invstd) {
  for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
}

// Whether any |mean| exceeds 4 std (or is not finite). Counted in a double so
// the loop vectorizes.
bool any_far_mean(const double* __restrict mean, const double* __restrict invstd, int64_t C) {
  double far = 0;
  for (int64_t c = 0; c < C; ++c) far += std::abs(mean[c]) * invstd[c] <= 4.0 ? 0.0 : 1.0;
  return far != 0;
}

// Saved statistics and the coefficients of the normalize pass (see ForwardCoefs).
// Restrict-qualified so the loop vectorizes; weight and bias may be null.
template <typename A>
void normalize_coefs(const double* __restrict mean, const double* __restrict invstd,
                     const A* __restrict weight, const A* __restrict bias, int64_t C, bool centered,
                     A* __restrict save_mean, A* __restrict save_invstd, A* __restrict mean_acc,
                     A* __restrict alpha, A* __restrict beta) {
  for (int64_t c = 0; c < C; ++c) {
    const double a = invstd[c] * (weight ? double(weight[c]) : 1.0);
    const double b = bias ? double(bias[c]) : 0.0;
    const A m = A(mean[c]);
    save_mean[c] = mean_acc[c] = m;
    save_invstd[c] = A(invstd[c]);
    alpha[c] = A(a);
    // Centered: the rounding error of the acc-typed mean moves into beta.
    beta[c] = A(centered ? b - (mean[c] - double(m)) * a : b - mean[c] * a);
  }
}

// save_mean_lo = mean - save_mean (0 where the mean is not finite), for the backward.
template <typename A>
void mean_low_parts(const double* __restrict mean, const A* __restrict save_mean, int64_t C,
                    A* __restrict save_mean_lo) {
  for (int64_t c = 0; c < C; ++c) {
    const double lo = mean[c] - double(save_mean[c]);
    save_mean_lo[c] = A(lo - lo == 0.0 ? lo : 0.0);
  }
}

// Everything per channel between the statistics and the normalize pass, typed on
// the acc type A so the channel loops vectorize (they cost as much as the
// elementwise pass on small inputs with many channels).
template <typename A>
void forward_typed(const ForwardParams& p, const Plan& pl, const cpu::KernelTable& kernels) {
  const int64_t C = pl.C;
  double* mean = cpu::host_scratch<double, 1>(static_cast<size_t>(3 * C));
  double* var = mean + C;
  double* invstd = var + C;
  A* running_mean = static_cast<A*>(p.running_mean);
  A* running_var = static_cast<A*>(p.running_var);
  if (p.training) {
    batch_stats(p, pl, kernels, mean, var);
    if (running_mean && running_var) {
      const double m = p.momentum, n = double(pl.n);
      for (int64_t c = 0; c < C; ++c) {
        running_mean[c] = A(contract::running_update(double(running_mean[c]), mean[c], m));
        running_var[c] = A(
            contract::running_update(double(running_var[c]), contract::unbiased_variance(var[c] * n, n), m));
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = double(running_mean[c]);
      var[c] = double(running_var[c]);
    }
  }

  // Rows layouts normalize as x * alpha + (beta - mean * alpha) when every |mean| <= 4 std:
  // one FMA and two coefficient vectors instead of a subtraction and three, 10-27% faster
  // on L3-resident channels_last tensors (C = 128..512), with rounding within a few ulps of
  // the centered form (6.6e-7 against float64 at |mean| = 3.3 std; torch: 9.7e-6).
  // Otherwise, and always in segments layouts (one channel per run, where the mean is a
  // broadcast register), (x - mean) * alpha + beta loses nothing.
  inverse_std(var, p.eps, C, invstd);
  const bool centered = !pl.rows || any_far_mean(mean, invstd, C);
  const A* weight = static_cast<const A*>(p.weight);
  const A* bias = static_cast<const A*>(p.bias);
  A* save_mean = static_cast<A*>(p.save_mean);
  A* save_invstd = static_cast<A*>(p.save_invstd);
  A* mean_acc = cpu::host_scratch<A, 2>(static_cast<size_t>(3 * C));
  A* alpha = mean_acc + C;
  A* beta = alpha + C;
  normalize_coefs<A>(mean, invstd, weight, bias, C, centered, save_mean, save_invstd, mean_acc, alpha, beta);
  if (p.save_mean_lo) mean_low_parts<A>(mean, save_mean, C, static_cast<A*>(p.save_mean_lo));
  const cpu::ForwardCoefs coefs{centered ? mean_acc : nullptr, alpha, beta};

  const int64_t numel = pl.numel();
  cpu::advise_huge_pages(p.y, numel * cpu::dtype_bytes(p.dtype));
  const int64_t blocks = cpu::ceil_div(numel, cpu::kApplyBlock);
  at::parallel_for(0, blocks, 16, [&](int64_t a, int64_t b) {
    kernels.forward_apply(p, pl, coefs, a * cpu::kApplyBlock, cpu::min64(numel, b * cpu::kApplyBlock));
  });
}

}  // namespace

void forward_cpu(const ForwardParams& p) {
  Plan pl = cpu::make_plan(p.shape);
  const int64_t elem = cpu::dtype_bytes(p.dtype);
  const int64_t tensors = 2 + (p.residual != nullptr);  // x [, residual], y
  pl.stream = cpu::stream_aligned(pl, p.y, elem) && cpu::stream_outputs(tensors * pl.numel() * elem);
  if (p.dtype == DType::kFloat64)
    forward_typed<double>(p, pl, cpu::kernels());
  else
    forward_typed<float>(p, pl, cpu::kernels());
  if (p.mask) {
    const int64_t numel = pl.numel();
    const int64_t used = cpu::ceil_div(numel, 8);
    std::memset(p.mask + used, 0, static_cast<size_t>(mask_bytes(numel) - used));
  }
}

}  // namespace bnfused
