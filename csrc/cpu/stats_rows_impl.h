// Batch statistics of a rows layout (n rows of C channels, row stride C), one
// read of x from memory, merged into fp64 (mean, M2) per block with Chan's
// formula. Values are taken relative to one element of their channel (shift)
// or to the block mean so far, so large means lose nothing.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// Tile mean and M2 (about the tile mean) of all channels of rows [x, x + rows * C).
// Rows are walked in memory order, four at a time: the per-channel accumulators
// are loaded and stored once per four rows, and x streams from memory.
template <typename T, typename A>
inline void tile_stats(const T* x, int64_t C, int64_t rows, const A* __restrict shift, A* __restrict tmean,
                       A* __restrict tm2) {
  for (int64_t c = 0; c < C; ++c) tmean[c] = tm2[c] = A(0);
  int64_t q = 0;
  for (; q + 4 <= rows; q += 4) {
    const T* __restrict x0 = x + q * C;
    const T* __restrict x1 = x0 + C;
    const T* __restrict x2 = x1 + C;
    const T* __restrict x3 = x2 + C;
    BNFUSED_IVDEP
    for (int64_t c = 0; c < C; ++c) {
      const A s = shift[c];
      tmean[c] +=
          ((load<A>(x0[c]) - s) + (load<A>(x1[c]) - s)) + ((load<A>(x2[c]) - s) + (load<A>(x3[c]) - s));
    }
  }
  for (; q < rows; ++q) {
    const T* __restrict row = x + q * C;
    BNFUSED_IVDEP
    for (int64_t c = 0; c < C; ++c) tmean[c] += load<A>(row[c]) - shift[c];
  }
  const A inv_rows = A(1) / static_cast<A>(rows);
  for (int64_t c = 0; c < C; ++c) tmean[c] *= inv_rows;
  for (q = 0; q + 4 <= rows; q += 4) {
    const T* __restrict x0 = x + q * C;
    const T* __restrict x1 = x0 + C;
    const T* __restrict x2 = x1 + C;
    const T* __restrict x3 = x2 + C;
    BNFUSED_IVDEP
    for (int64_t c = 0; c < C; ++c) {
      const A s = shift[c], m = tmean[c];
      const A d0 = load<A>(x0[c]) - s - m, d1 = load<A>(x1[c]) - s - m;
      const A d2 = load<A>(x2[c]) - s - m, d3 = load<A>(x3[c]) - s - m;
      tm2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (; q < rows; ++q) {
    const T* __restrict row = x + q * C;
    BNFUSED_IVDEP
    for (int64_t c = 0; c < C; ++c) {
      const A d = load<A>(row[c]) - shift[c] - tmean[c];
      tm2[c] += d * d;
    }
  }
}

// Sums of d = x - center and d^2 over rows [x, x + rows * C), added to s1, s2.
// One read of x; four rows share each load and store of the accumulators.
template <typename T, typename A>
inline void tile_centered_sums(const T* x, int64_t C, int64_t rows, const A* __restrict center,
                               A* __restrict s1, A* __restrict s2) {
  constexpr int64_t kCols = 256 / sizeof(T);  // four cache lines of each row per chunk
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T));
  const bool prefetch = rows_need_prefetch(row_bytes);
  int64_t q = 0;
  for (; q + 4 <= rows; q += 4) {
    for (int64_t c0 = 0; c0 < C; c0 += kCols) {
      const int64_t c1 = min64(C, c0 + kCols);
      const T* __restrict x0 = x + q * C;
      const T* __restrict x1 = x0 + C;
      const T* __restrict x2 = x1 + C;
      const T* __restrict x3 = x2 + C;
      if (prefetch) prefetch_row_group(x0 + c0, row_bytes, (c1 - c0) * sizeof(T));
      BNFUSED_IVDEP
      for (int64_t c = c0; c < c1; ++c) {
        const A k = center[c];
        const A d0 = load<A>(x0[c]) - k, d1 = load<A>(x1[c]) - k;
        const A d2 = load<A>(x2[c]) - k, d3 = load<A>(x3[c]) - k;
        s1[c] += (d0 + d1) + (d2 + d3);
        s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
      }
    }
  }
  for (; q < rows; ++q) {
    const T* __restrict row = x + q * C;
    BNFUSED_IVDEP
    for (int64_t c = 0; c < C; ++c) {
      const A d = load<A>(row[c]) - center[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// Per block: the first tile two-pass (tile_stats) gives a mean; later tiles are
// one pass of sums of deviations from the block mean so far (refreshed every
// tile), so M2 = sum d^2 - (sum d)^2 / k never cancels badly. Tiles merge into
// fp64 (mean, M2) with Chan's formula; means are relative to shift[c].
template <typename T>
void stats_rows(const ForwardParams& p, const Plan& pl, const StatsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  const int64_t C = pl.C;
  const int64_t first = max64(16, 4096 / C);  // rows of the two-pass first tile
  constexpr int64_t kTile = 64;               // rows per one-pass tile
  Scratch scratch(sizeof(A) * 4 * C);
  A* shift = scratch.as<A>();
  A* center = shift + C;  // shift + block mean so far, as one acc value
  A* s1 = center + C;
  A* s2 = s1 + C;
  for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<A>(out.shift[c]);
  const T* x = static_cast<const T*>(p.x);
  for (int64_t b = item0; b < item1; ++b) {
    const int64_t r0 = b * pl.block_len, r1 = min64(pl.n, r0 + pl.block_len);
    double* mean = out.mean + b * C;
    double* m2 = out.m2 + b * C;
    const int64_t rows0 = min64(first, r1 - r0);
    tile_stats(x + r0 * C, C, rows0, shift, s1, s2);
    for (int64_t c = 0; c < C; ++c) mean[c] = double(s1[c]), m2[c] = double(s2[c]);
    double cnt = double(rows0);
    for (int64_t r = r0 + rows0; r < r1; r += kTile) {
      const int64_t rows = min64(kTile, r1 - r);
      for (int64_t c = 0; c < C; ++c) {
        center[c] = static_cast<A>(out.shift[c] + mean[c]);
        s1[c] = s2[c] = A(0);
      }
      tile_centered_sums(x + r * C, C, rows, center, s1, s2);
      const double nb = double(rows), n = cnt + nb, f_mean = nb / n, f_m2 = cnt * nb / n;
      for (int64_t c = 0; c < C; ++c) {
        const double d1 = double(s1[c]);
        const double tmean = (double(center[c]) - out.shift[c]) + d1 / nb;
        const double delta = tmean - mean[c];
        mean[c] += delta * f_mean;
        m2[c] += (double(s2[c]) - d1 * d1 / nb) + delta * delta * f_m2;
      }
      cnt = n;
    }
  }
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
