// Backward passes: per-channel sums of g and g * (x - mean) (one read of dy,
// x [, residual or mask]) and the elementwise dx / dresidual pass. g is
// computed inline in both; float partial sums over short runs are merged in fp64.
// All but float64 take the vector paths of grad_vec_impl.h; the scalar loops
// here do float64, silu and the tails.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// g and x - mean of element o, scalar.
template <typename T, Activation kAct, GradSrc kSrc, typename A>
inline A grad_at(const BwdTensors<T>& t, int64_t o, A m, A al, A be, A slope, A& xm) {
  xm = load<A>(t.x[o]) - m;
  const A rv = kSrc == GradSrc::kRecomputeResidual ? load<A>(t.r[o]) : A(0);
  const int32_t kp = kSrc == GradSrc::kMask ? (t.mask[o >> 3] >> (o & 7)) & 1 : 0;
  return grad_value<kAct, kSrc>(load<A>(t.dy[o]), xm, rv, kp, al, be, slope);
}

// One channel's run [o, o + len), summed into kLanes<A> lanes (fixed order).
template <typename T, Activation kAct, GradSrc kSrc, typename A>
inline void run_sums(const BwdTensors<T>& t, int64_t o, int64_t len, A m, A al, A be, A slope, A sc,
                     A* __restrict lg, A* __restrict lgx) {
  constexpr int W = kLanes<A>;
  if constexpr (kVec<T, kAct>) {
    if (len >= kW) return run_sums_vec<T, kAct, kSrc>(t, o, len, m, al, be, slope, sc, lg, lgx);
  }
  for (int64_t i = 0, k = 0; i < len; ++i, k = (k + 1) % W) {
    A xm;
    const A g = grad_at<T, kAct, kSrc>(t, o + i, m, al, be, slope, xm);
    lg[k] += g;
    lgx[k] += g * (xm * sc);
  }
}

template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_segments(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                        const GradSumsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  constexpr int W = kLanes<A>;
  constexpr int64_t kFlush = 1024;  // elements summed in acc lanes before the fp64 merge
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  for (int64_t item = item0; item < item1; ++item) {
    const int64_t c = item / pl.blocks, b = item % pl.blocks;
    const int64_t j0 = b * pl.block_len, j1 = min64(pl.n, j0 + pl.block_len);
    const A m = k.mean[c], al = k.alpha[c], be = k.beta[c], sc = k.xscale[c];
    double sg = 0, sgx = 0;
    A lg[W] = {}, lgx[W] = {};
    int64_t pending = 0;
    for (int64_t j = j0; j < j1;) {
      const int64_t seg = j / pl.S, s = j - seg * pl.S;
      const int64_t len = min64(min64(pl.S - s, j1 - j), kFlush);
      run_sums<T, kAct, kSrc>(t, (seg * pl.C + c) * pl.S + s, len, m, al, be, slope, sc, lg, lgx);
      pending += len;
      j += len;
      if (pending >= kFlush || j >= j1) {
        sg += double(fold_lanes(lg));
        sgx += double(fold_lanes(lgx));
        for (int q = 0; q < W; ++q) lg[q] = lgx[q] = A(0);
        pending = 0;
      }
    }
    out.sum_g[b * pl.C + c] = sg;
    out.sum_gxm[b * pl.C + c] = sgx;
  }
}

// Segments with short planes (S <= kShortPlane), one block per channel: a run of
// channels walked plane by plane in memory order, each channel keeping its own
// lanes, flushed to fp64 every `flush` planes (a function of S only).
template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_planes(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                      const GradSumsOut& out, int64_t c0, int64_t c1) {
  using A = acc_t<T>;
  constexpr int W = kLanes<A>;
  const int64_t S = pl.S, C = pl.C, flush = max64(1, 1024 / S);
  const int64_t max_run = max64(1, 4096 / S);
  Scratch scratch(sizeof(A) * 2 * W * max_run);
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  for (int64_t cr = c0; cr < c1; cr += max_run) {
    const int64_t cn = min64(max_run, c1 - cr);
    A* lanes = scratch.as<A>();  // [cn][2][W]
    for (int64_t c = cr; c < cr + cn; ++c) out.sum_g[c] = out.sum_gxm[c] = 0;
    for (int64_t n0 = 0; n0 < pl.N; n0 += flush) {
      const int64_t n1 = min64(pl.N, n0 + flush);
      for (int64_t q = 0; q < 2 * W * cn; ++q) lanes[q] = A(0);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c = cr; c < cr + cn; ++c) {
          A* l = lanes + 2 * W * (c - cr);
          run_sums<T, kAct, kSrc>(t, (n * C + c) * S, S, k.mean[c], k.alpha[c], k.beta[c], slope, k.xscale[c],
                                  l, l + W);
        }
      for (int64_t c = cr; c < cr + cn; ++c) {
        A* l = lanes + 2 * W * (c - cr);
        out.sum_g[c] += double(fold_lanes(l));
        out.sum_gxm[c] += double(fold_lanes(l + W));
      }
    }
  }
}

// Rows [r0, r0 + rows): tg[c] += sum g, tgx[c] += sum g * (x - mean) * xscale, scalar.
template <typename T, Activation kAct, GradSrc kSrc, typename A>
void rows_sums(const BwdTensors<T>& t, int64_t C, int64_t r0, int64_t rows, const BwdCoefPtrs<A>& k, A slope,
               A* __restrict tg, A* __restrict tgx) {
  for (int64_t q = r0; q < r0 + rows; ++q)
    for (int64_t c = 0; c < C; ++c) {
      A xm;
      const A g = grad_at<T, kAct, kSrc>(t, q * C + c, k.mean[c], k.alpha[c], k.beta[c], slope, xm);
      tg[c] += g;
      tgx[c] += g * (xm * k.xscale[c]);
    }
}

template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_rows(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                    const GradSumsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  const int64_t C = pl.C;
  const int64_t tile = max64(64, 4096 / C);  // rows summed in acc before adding to fp64
  Scratch scratch(sizeof(A) * 2 * C);
  A* tg = scratch.as<A>();
  A* tgx = tg + C;
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  for (int64_t b = item0; b < item1; ++b) {
    const int64_t r0 = b * pl.block_len, r1 = min64(pl.n, r0 + pl.block_len);
    double* sg = out.sum_g + b * C;
    double* sgx = out.sum_gxm + b * C;
    for (int64_t c = 0; c < C; ++c) sg[c] = sgx[c] = 0;
    for (int64_t r = r0; r < r1; r += tile) {
      const int64_t rows = min64(tile, r1 - r);
      for (int64_t c = 0; c < C; ++c) tg[c] = tgx[c] = A(0);
      if constexpr (kVec<T, kAct>) {
        if (C % kW == 0)
          rows_sums_vec<T, kAct, kSrc>(t, C, r, rows, k, slope, tg, tgx);
        else
          rows_sums<T, kAct, kSrc>(t, C, r, rows, k, slope, tg, tgx);
      } else {
        rows_sums<T, kAct, kSrc>(t, C, r, rows, k, slope, tg, tgx);
      }
      for (int64_t c = 0; c < C; ++c) {
        sg[c] += double(tg[c]);
        sgx[c] += double(tgx[c]);
      }
    }
  }
}

// dx = k_g * (g + k_x * (x - mean) + k_c) (training) or k_g * g, and dres = g.
template <typename T, Activation kAct, GradSrc kSrc, int kStride, bool kTrain, bool kDx, bool kDres,
          typename A>
inline void backward_piece(const T* __restrict dy, const T* __restrict x, const T* __restrict r,
                           const int32_t* __restrict keep, int64_t len, const A* __restrict m,
                           const A* __restrict al, const A* __restrict be, const A* __restrict kg,
                           const A* __restrict kx, const A* __restrict kc, A slope, T* __restrict dx,
                           T* __restrict dres) {
  BNFUSED_IVDEP
  for (int64_t i = 0; i < len; ++i) {
    const int64_t ci = i * kStride;
    const A xm = load<A>(x[i]) - m[ci];
    const A rv = kSrc == GradSrc::kRecomputeResidual ? load<A>(r[i]) : A(0);
    const int32_t kp = kSrc == GradSrc::kMask ? keep[i] : 0;
    const A g = grad_value<kAct, kSrc>(load<A>(dy[i]), xm, rv, kp, al[ci], be[ci], slope);
    if constexpr (kDres) dres[i] = store<T>(g);
    if constexpr (kDx) {
      if constexpr (kTrain)
        dx[i] = store<T>(kg[ci] * (g + kx[ci] * xm + kc[ci]));
      else
        dx[i] = store<T>(kg[ci] * g);
    }
  }
}

template <typename T, Activation kAct, GradSrc kSrc, bool kTrain, bool kDx, bool kDres>
void backward_apply_range(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs, int64_t i0,
                          int64_t i1) {
  using A = acc_t<T>;
  int32_t keep[kSrc == GradSrc::kMask ? kApplyBlock : 1];
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  T* dx = static_cast<T*>(p.dx);
  T* dres = static_cast<T*>(p.dresidual);
  RunCursor run(pl, i0);
  int64_t i = i0;
  if constexpr (kVec<T, kAct>) {
    // Segments: vectors run across plane boundaries (as in the forward).
    if (!pl.rows && pl.S >= kW && i1 - i0 >= kW) {
      i = backward_planes_vec<T, kAct, kSrc, kTrain, kDx, kDres>(
          t, i, i1, run.channel(), i + run.piece(i, i + pl.S), pl.S, pl.C, k, slope, dx, dres, pl.stream);
      run.advance_by(i - i0);
    }
  }
  while (i < i1) {
    const int64_t c = run.channel(), len = run.piece(i, min64(i1, i + kApplyBlock));
    run.advance(len);
    const auto kc = k.offset(c);
    if constexpr (kVec<T, kAct>) {
      if (len >= kW) {
        if (pl.rows)
          backward_piece_vec<T, kAct, kSrc, 1, kTrain, kDx, kDres>(t, i, len, kc, slope, dx, dres, pl.stream);
        else
          backward_piece_vec<T, kAct, kSrc, 0, kTrain, kDx, kDres>(t, i, len, kc, slope, dx, dres, pl.stream);
        i += len;
        continue;
      }
    }
    if constexpr (kSrc == GradSrc::kMask) unpack_bits(t.mask, i, len, keep);
    const T* r = kSrc == GradSrc::kRecomputeResidual ? t.r + i : nullptr;
    T* dxi = kDx ? dx + i : nullptr;
    T* dri = kDres ? dres + i : nullptr;
    if (pl.rows)
      backward_piece<T, kAct, kSrc, 1, kTrain, kDx, kDres>(t.dy + i, t.x + i, r, keep, len, kc.mean, kc.alpha,
                                                           kc.beta, kc.k_g, kc.k_x, kc.k_c, slope, dxi, dri);
    else
      backward_piece<T, kAct, kSrc, 0, kTrain, kDx, kDres>(t.dy + i, t.x + i, r, keep, len, kc.mean, kc.alpha,
                                                           kc.beta, kc.k_g, kc.k_x, kc.k_c, slope, dxi, dri);
    i += len;
  }
  stream_fence(pl.stream);
}

template <typename T>
struct GradSumsOp {
  template <Activation kAct, GradSrc kSrc>
  static void run(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, const GradSumsOut& out,
                  int64_t item0, int64_t item1) {
    if (pl.rows)
      grad_sums_rows<T, kAct, kSrc>(p, pl, k, out, item0, item1);
    else if (pl.blocks == 1 && pl.S <= kShortPlane)
      planes<kAct, kSrc>(p, pl, k, out, item0, item1);
    else
      grad_sums_segments<T, kAct, kSrc>(p, pl, k, out, item0, item1);
  }
  template <Activation kAct, GradSrc kSrc>
  static void planes(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, const GradSumsOut& out,
                     int64_t c0, int64_t c1) {
    if constexpr (kVec<T, kAct>) {
      if (pl.S >= kW) return grad_sums_planes_vec<T, kAct, kSrc>(p, pl, k, out, c0, c1);
    }
    grad_sums_planes<T, kAct, kSrc>(p, pl, k, out, c0, c1);
  }
};

template <typename T>
struct BackwardApplyOp {
  template <Activation kAct, GradSrc kSrc, bool kDx, bool kDres>
  static void outputs(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0,
                      int64_t i1) {
    if (p.training)
      backward_apply_range<T, kAct, kSrc, true, kDx, kDres>(p, pl, k, i0, i1);
    else
      backward_apply_range<T, kAct, kSrc, false, kDx, kDres>(p, pl, k, i0, i1);
  }
  template <Activation kAct, GradSrc kSrc>
  static void run(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0, int64_t i1) {
    const bool dx = p.dx != nullptr, dres = p.dresidual != nullptr;
    if (dx && dres)
      outputs<kAct, kSrc, true, true>(p, pl, k, i0, i1);
    else if (dx)
      outputs<kAct, kSrc, true, false>(p, pl, k, i0, i1);
    else if (dres)
      outputs<kAct, kSrc, false, true>(p, pl, k, i0, i1);
  }
};

template <typename T>
void grad_sums(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, const GradSumsOut& out,
               int64_t item0, int64_t item1) {
  dispatch_grad<GradSumsOp<T>>(p, p, pl, k, out, item0, item1);
}

template <typename T>
void backward_apply(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0, int64_t i1) {
  dispatch_grad<BackwardApplyOp<T>>(p, p, pl, k, i0, i1);
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
