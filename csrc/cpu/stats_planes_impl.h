// Float batch statistics of a segments layout with short planes (S <= kShortPlane):
// the (n, c) planes are walked in memory order, a run of channels at a time,
// with kW-lane partial sums per channel (one load/store per plane, not per
// element). Tiles of planes are reduced two-pass (tile mean, then squared
// deviations from it) and merged into fp64 with Chan's formula.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

constexpr int64_t kShortPlane = 256;

// Lanes [0, rem) of p[0..kW) as a vector, zeros elsewhere (never reads past p + rem).
inline vf load_head(const float* p, int64_t rem) {
#if defined(BNFUSED_ISA_AVX512)
  return vf(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << rem) - 1), p));
#elif defined(BNFUSED_ISA_AVX2) || defined(__AVX2__)
  const vi keep = lane_index() < static_cast<int32_t>(rem);
  return vf(_mm256_maskload_ps(p, __m256i(keep)));
#else
  float tmp[kW] = {};
  for (int64_t k = 0; k < rem; ++k) tmp[k] = p[k];
  return loadv(tmp);
#endif
}

// Sum over one plane of S elements of f(x - shift) as kW lanes; tail lanes past S add 0.
template <bool kSquare>
inline vf plane_lanes(const float* __restrict p, int64_t S, vf shift, vf mu) {
  vf a = {}, b = {};
  int64_t i = 0;
  for (; i + 2 * kW <= S; i += 2 * kW) {
    const vf d0 = loadv(p + i) - shift - mu, d1 = loadv(p + i + kW) - shift - mu;
    if constexpr (kSquare)
      a += d0 * d0, b += d1 * d1;
    else
      a += d0, b += d1;
  }
  for (; i + kW <= S; i += kW) {
    const vf d = loadv(p + i) - shift - mu;
    a += kSquare ? d * d : d;
  }
  if (i < S) {
    const vf d = load_head(p + i, S - i) - shift - mu;
    const vf dz = lane_index() < static_cast<int32_t>(S - i) ? d : vf{};
    b += kSquare ? dz * dz : dz;
  }
  return a + b;
}

// Channels [c0, c1) over planes [n0, n1); results into out at index b * C + c.
inline void stats_planes_run(const float* x, const Plan& pl, const StatsOut& out, int64_t b, int64_t c0,
                             int64_t c1, int64_t n0, int64_t n1, float* scratch) {
  const int64_t C = pl.C, S = pl.S, cn = c1 - c0;
  vf* acc = reinterpret_cast<vf*>(scratch);  // [cn] kW-lane sums
  float* shift = scratch + kW * cn;
  float* tmean = shift + cn;
  double* mean = out.mean + b * C + c0;
  double* m2 = out.m2 + b * C + c0;
  for (int64_t c = 0; c < cn; ++c) shift[c] = static_cast<float>(out.shift[c0 + c]), mean[c] = m2[c] = 0;
  // Planes per tile: the tile stays in L2, and each channel sums <= 2048 values in float.
  const int64_t tile = max64(1, min64(32768 / (cn * S), 2048 / S));
  double cnt = 0;
  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int64_t t1 = min64(n1, t0 + tile);
    for (int64_t c = 0; c < cn; ++c) acc[c] = vf{};
    for (int64_t n = t0; n < t1; ++n) {
      const float* p = x + (n * C + c0) * S;
      for (int64_t c = 0; c < cn; ++c) acc[c] += plane_lanes<false>(p + c * S, S, splat(shift[c]), vf{});
    }
    const float inv = 1.0f / static_cast<float>((t1 - t0) * S);
    for (int64_t c = 0; c < cn; ++c) tmean[c] = sum_lanes(acc[c]) * inv, acc[c] = vf{};
    for (int64_t n = t0; n < t1; ++n) {
      const float* p = x + (n * C + c0) * S;
      for (int64_t c = 0; c < cn; ++c)
        acc[c] += plane_lanes<true>(p + c * S, S, splat(shift[c]), splat(tmean[c]));
    }
    const double nb = double((t1 - t0) * S), nt = cnt + nb, f_mean = nb / nt, f_m2 = cnt * nb / nt;
    for (int64_t c = 0; c < cn; ++c) {
      const double delta = double(tmean[c]) - mean[c];
      mean[c] += delta * f_mean;
      m2[c] += double(sum_lanes(acc[c])) + delta * delta * f_m2;
    }
    cnt = nt;
  }
}

// Items [item0, item1) (item = c * blocks + b), runs of channels sharing a block
// at a time; block boundaries are whole planes (make_plan).
inline void stats_planes(const ForwardParams& p, const Plan& pl, const StatsOut& out, int64_t item0,
                         int64_t item1) {
  const float* x = static_cast<const float*>(p.x);
  const int64_t S = pl.S, max_run = max64(1, 8192 / S);
  Scratch scratch(sizeof(float) * (kW + 2) * max_run + sizeof(vf));
  float* buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.ptr) + sizeof(vf) - 1) &
                                        ~uintptr_t(sizeof(vf) - 1));
  for (int64_t item = item0; item < item1;) {
    const int64_t c = item / pl.blocks, b = item % pl.blocks;
    // With one block per channel, consecutive items are consecutive channels.
    const int64_t run = pl.blocks == 1 ? min64(item1 - item, max_run) : 1;
    const int64_t j0 = b * pl.block_len, j1 = min64(pl.n, j0 + pl.block_len);
    stats_planes_run(x, pl, out, b, c, c + run, j0 / S, j1 / S, buf);
    item += run;
  }
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
