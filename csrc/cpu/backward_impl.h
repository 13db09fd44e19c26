// Backward passes: per-channel sums of g and g * (x - mean) (one read of dy,
// x [, residual or mask]) and the elementwise dx / dresidual pass. g is
// computed inline in both; float partial sums over short runs are merged in fp64.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// One row of C channels: tg[c] += g, tgx[c] += g * (x - mean).
template <typename T, Activation kAct, GradSrc kSrc, typename A>
inline void row_sums(const T* __restrict dy, const T* __restrict x, const T* __restrict r,
                     const int32_t* __restrict keep, int64_t C, const A* __restrict m,
                     const A* __restrict al, const A* __restrict be, A slope, A* __restrict tg,
                     A* __restrict tgx) {
  BNFUSED_IVDEP
  for (int64_t c = 0; c < C; ++c) {
    const A xm = load<A>(x[c]) - m[c];
    const A rv = kSrc == GradSrc::kRecomputeResidual ? load<A>(r[c]) : A(0);
    const int32_t kp = kSrc == GradSrc::kMask ? keep[c] : 0;
    const A g = grad_value<kAct, kSrc>(load<A>(dy[c]), xm, rv, kp, al[c], be[c], slope);
    tg[c] += g;
    tgx[c] += g * xm;
  }
}

// One channel's run of len elements, summed into kLanes<A> lanes (fixed order).
template <typename T, Activation kAct, GradSrc kSrc, typename A>
inline void run_sums(const T* __restrict dy, const T* __restrict x, const T* __restrict r,
                     const int32_t* __restrict keep, int64_t len, A m, A al, A be, A slope,
                     A* __restrict lg, A* __restrict lgx) {
  constexpr int W = kLanes<A>;
  A sg[W] = {}, sx[W] = {};
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float> && kAct != Activation::kSilu) {
    vf8 g0 = {}, g1 = {}, x0 = {}, x1 = {};
    const vf8 mv = splat(m), av = splat(al), bv = splat(be), sv = splat(slope);
    auto step = [&](int64_t j, vf8& gs, vf8& xs) {
      const vf8 xm = loadv(x + j) - mv;
      const vf8 rv = kSrc == GradSrc::kRecomputeResidual ? loadv(r + j) : vf8{};
      const vi8 kp = kSrc == GradSrc::kMask ? loadv(keep + j) : vi8{};
      const vf8 g = grad_vec<kAct, kSrc>(loadv(dy + j), xm, rv, kp, av, bv, sv);
      gs += g;
      xs += g * xm;
    };
    for (; i + 16 <= len; i += 16) step(i, g0, x0), step(i + 8, g1, x1);
    storev(sg, g0), storev(sg + 8, g1), storev(sx, x0), storev(sx + 8, x1);
  }
  auto one = [&](int64_t i, int k) {
    const A xm = load<A>(x[i]) - m;
    const A rv = kSrc == GradSrc::kRecomputeResidual ? load<A>(r[i]) : A(0);
    const int32_t kp = kSrc == GradSrc::kMask ? keep[i] : 0;
    const A g = grad_value<kAct, kSrc>(load<A>(dy[i]), xm, rv, kp, al, be, slope);
    sg[k] += g;
    sx[k] += g * xm;
  };
  for (; i + W <= len; i += W)
    for (int k = 0; k < W; ++k) one(i + k, k);
  for (int k = 0; i < len; ++i, ++k) one(i, k);
  for (int k = 0; k < W; ++k) {
    lg[k] += sg[k];
    lgx[k] += sx[k];
  }
}

template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_segments(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                        const GradSumsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  constexpr int W = kLanes<A>;
  constexpr int64_t kFlush = 1024;  // elements summed in acc lanes before the fp64 merge
  int32_t keep[kSrc == GradSrc::kMask ? kMaskSub : 1];
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  for (int64_t item = item0; item < item1; ++item) {
    const int64_t c = item / pl.blocks, b = item % pl.blocks;
    const int64_t j0 = b * pl.block_len, j1 = min64(pl.n, j0 + pl.block_len);
    const A m = k.mean[c], al = k.alpha[c], be = k.beta[c];
    double sg = 0, sgx = 0;
    A lg[W] = {}, lgx[W] = {};
    int64_t pending = 0;
    for (int64_t j = j0; j < j1;) {
      const int64_t seg = j / pl.S, s = j - seg * pl.S;
      int64_t len = min64(pl.S - s, j1 - j);
      if constexpr (kSrc == GradSrc::kMask) len = min64(len, kMaskSub);
      len = min64(len, kFlush);
      const int64_t idx = (seg * pl.C + c) * pl.S + s;
      if constexpr (kSrc == GradSrc::kMask) unpack_bits(t.mask, idx, len, keep);
      run_sums<T, kAct, kSrc>(t.dy + idx, t.x + idx, kSrc == GradSrc::kRecomputeResidual ? t.r + idx : nullptr,
                              keep, len, m, al, be, slope, lg, lgx);
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

template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_rows(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                    const GradSumsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  const int64_t C = pl.C;
  const int64_t tile = max64(8, 4096 / C);  // rows summed in acc before adding to fp64
  Scratch scratch(sizeof(A) * 2 * C + sizeof(int32_t) * C);
  A* tg = scratch.as<A>();
  A* tgx = tg + C;
  int32_t* keep = reinterpret_cast<int32_t*>(tgx + C);
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
      for (int64_t q = 0; q < rows; ++q) {
        const int64_t off = (r + q) * C;
        if constexpr (kSrc == GradSrc::kMask) unpack_bits(t.mask, off, C, keep);
        row_sums<T, kAct, kSrc>(t.dy + off, t.x + off,
                                kSrc == GradSrc::kRecomputeResidual ? t.r + off : nullptr, keep, C,
                                k.mean, k.alpha, k.beta, slope, tg, tgx);
      }
      for (int64_t c = 0; c < C; ++c) {
        sg[c] += double(tg[c]);
        sgx[c] += double(tgx[c]);
      }
    }
  }
}

// dx = k_g * g + k_x * (x - mean) + k_c (training) or k_g * g, and dres = g.
template <typename T, Activation kAct, GradSrc kSrc, int kStride, bool kTrain, bool kDx,
          bool kDres, typename A>
inline void backward_piece(const T* __restrict dy, const T* __restrict x, const T* __restrict r,
                           const int32_t* __restrict keep, int64_t len, const A* __restrict m,
                           const A* __restrict al, const A* __restrict be,
                           const A* __restrict kg, const A* __restrict kx,
                           const A* __restrict kc, A slope, T* __restrict dx,
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
      if constexpr (kTrain) dx[i] = store<T>(kg[ci] * g + kx[ci] * xm + kc[ci]);
      else dx[i] = store<T>(kg[ci] * g);
    }
  }
}

template <typename T, Activation kAct, GradSrc kSrc, bool kTrain, bool kDx, bool kDres>
void backward_apply_range(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                          int64_t i0, int64_t i1) {
  using A = acc_t<T>;
  int32_t keep[kSrc == GradSrc::kMask ? kApplyBlock : 1];
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  T* dx = static_cast<T*>(p.dx);
  T* dres = static_cast<T*>(p.dresidual);
  for (int64_t i = i0; i < i1;) {
    const int64_t c = pl.rows ? i % pl.C : (i / pl.S) % pl.C;
    const int64_t run_end = pl.rows ? i - c + pl.C : (i / pl.S + 1) * pl.S;
    const int64_t m = min64(min64(run_end, i1) - i, kApplyBlock);
    if constexpr (kSrc == GradSrc::kMask) unpack_bits(t.mask, i, m, keep);
    const auto kc = k.offset(c);
    const T* r = kSrc == GradSrc::kRecomputeResidual ? t.r + i : nullptr;
    T* dxi = kDx ? dx + i : nullptr;
    T* dri = kDres ? dres + i : nullptr;
    if (pl.rows)
      backward_piece<T, kAct, kSrc, 1, kTrain, kDx, kDres>(t.dy + i, t.x + i, r, keep, m, kc.mean,
                                                           kc.alpha, kc.beta, kc.k_g, kc.k_x,
                                                           kc.k_c, slope, dxi, dri);
    else
      backward_piece<T, kAct, kSrc, 0, kTrain, kDx, kDres>(t.dy + i, t.x + i, r, keep, m, kc.mean,
                                                           kc.alpha, kc.beta, kc.k_g, kc.k_x,
                                                           kc.k_c, slope, dxi, dri);
    i += m;
  }
}

template <typename T> struct GradSumsOp {
  template <Activation kAct, GradSrc kSrc>
  static void run(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k,
                  const GradSumsOut& out, int64_t item0, int64_t item1) {
    if (pl.rows) grad_sums_rows<T, kAct, kSrc>(p, pl, k, out, item0, item1);
    else grad_sums_segments<T, kAct, kSrc>(p, pl, k, out, item0, item1);
  }
};

template <typename T> struct BackwardApplyOp {
  template <Activation kAct, GradSrc kSrc, bool kDx, bool kDres>
  static void outputs(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0,
                      int64_t i1) {
    if (p.training) backward_apply_range<T, kAct, kSrc, true, kDx, kDres>(p, pl, k, i0, i1);
    else backward_apply_range<T, kAct, kSrc, false, kDx, kDres>(p, pl, k, i0, i1);
  }
  template <Activation kAct, GradSrc kSrc>
  static void run(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0,
                  int64_t i1) {
    const bool dx = p.dx != nullptr, dres = p.dresidual != nullptr;
    if (dx && dres) outputs<kAct, kSrc, true, true>(p, pl, k, i0, i1);
    else if (dx) outputs<kAct, kSrc, true, false>(p, pl, k, i0, i1);
    else if (dres) outputs<kAct, kSrc, false, true>(p, pl, k, i0, i1);
  }
};

template <typename T>
void grad_sums(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k,
               const GradSumsOut& out, int64_t item0, int64_t item1) {
  dispatch_grad<GradSumsOp<T>>(p, p, pl, k, out, item0, item1);
}

template <typename T>
void backward_apply(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0,
                    int64_t i1) {
  dispatch_grad<BackwardApplyOp<T>>(p, p, pl, k, i0, i1);
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
