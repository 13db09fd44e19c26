// Batch statistics, one read of x. Segments layout (rows: stats_rows_impl.h):
// per block, chunks that fit in L1/L2 are reduced two-pass (chunk mean, then squared deviations from it) in
// the acc type and merged into fp64 (count, mean, M2) with Chan's formula. Values are shifted by one element
// of their channel first, so large means lose nothing.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// Channel c's elements [j, j + len) in segments memory, as acc values minus shift.
template <typename T, typename A>
inline void gather_segments(const T* x, const Plan& pl, int64_t c, int64_t j, int64_t len, A shift, A* out) {
  for (int64_t k = 0; k < len;) {
    const int64_t jj = j + k, seg = jj / pl.S, s = jj - seg * pl.S;
    const int64_t m = min64(pl.S - s, len - k);
    const T* src = x + (seg * pl.C + c) * pl.S + s;
    A* dst = out + k;
    BNFUSED_IVDEP
    for (int64_t i = 0; i < m; ++i) dst[i] = load<A>(src[i]) - shift;
    k += m;
  }
}

template <typename T>
void stats_segments(const ForwardParams& p, const Plan& pl, const StatsOut& out, int64_t item0,
                    int64_t item1) {
  using A = acc_t<T>;
  constexpr int64_t kChunk = 2048;
  A buf[kChunk];
  const T* x = static_cast<const T*>(p.x);
  for (int64_t item = item0; item < item1; ++item) {
    const int64_t c = item / pl.blocks, b = item % pl.blocks;
    const int64_t j0 = b * pl.block_len, j1 = min64(pl.n, j0 + pl.block_len);
    const A shift = static_cast<A>(out.shift[c]);
    double cnt = 0, mean = 0, m2 = 0;
    for (int64_t j = j0; j < j1; j += kChunk) {
      const int64_t len = min64(kChunk, j1 - j);
      gather_segments(x, pl, c, j, len, shift, buf);
      const A m = lane_sum(buf, len) / static_cast<A>(len);
      chan_merge(cnt, mean, m2, double(len), double(m), double(lane_sq_dev(buf, len, m)));
    }
    const int64_t o = b * pl.C + c;
    out.mean[o] = mean;
    out.m2[o] = m2;
  }
}

template <typename T>
void stats(const ForwardParams& p, const Plan& pl, const StatsOut& out, int64_t item0, int64_t item1) {
  if (pl.rows)
    stats_rows<T>(p, pl, out, item0, item1);
  else if (std::is_same_v<T, float> && pl.S <= kShortPlane)
    stats_planes(p, pl, out, item0, item1);
  else
    stats_segments<T>(p, pl, out, item0, item1);
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
