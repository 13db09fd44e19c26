// Backward passes: per-channel sums of g and g * (x - mean) (one read of dy,
// x [, residual or mask]) and the elementwise dx / dresidual pass.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_segments(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                        const GradSumsOut& out, int64_t item0, int64_t item1) {
  using A = acc_t<T>;
  constexpr int64_t kChunk = 1024;
  A g[kChunk], xm[kChunk];
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  for (int64_t item = item0; item < item1; ++item) {
    const int64_t c = item / pl.blocks, b = item % pl.blocks;
    const int64_t j0 = b * pl.block_len, j1 = min64(pl.n, j0 + pl.block_len);
    const auto kc = k.offset(c);
    double sg = 0, sgx = 0;
    for (int64_t j = j0; j < j1; j += kChunk) {
      const int64_t len = min64(kChunk, j1 - j);
      for (int64_t q = 0; q < len;) {
        const int64_t jj = j + q, seg = jj / pl.S, s = jj - seg * pl.S;
        const int64_t m = min64(pl.S - s, len - q);
        grad_piece<T, kAct, kSrc, 0>(t, (seg * pl.C + c) * pl.S + s, m, kc, slope, g + q, xm + q);
        q += m;
      }
      sg += double(lane_sum(g, len));
      sgx += double(lane_dot(g, xm, len));
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
  Scratch scratch(sizeof(A) * 4 * C);
  A* g = scratch.as<A>();
  A* xm = g + C;
  A* tg = xm + C;
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
      for (int64_t q = 0; q < rows; ++q) {
        grad_piece<T, kAct, kSrc, 1>(t, (r + q) * C, C, k, slope, g, xm);
        for (int64_t c = 0; c < C; ++c) {
          tg[c] += g[c];
          tgx[c] += g[c] * xm[c];
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        sg[c] += double(tg[c]);
        sgx[c] += double(tgx[c]);
      }
    }
  }
}

template <typename T, Activation kAct, GradSrc kSrc>
void backward_apply_range(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                          int64_t i0, int64_t i1) {
  using A = acc_t<T>;
  A g[kApplyBlock], xm[kApplyBlock];
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<A>(coefs);
  const A slope = static_cast<A>(p.activation_param);
  T* dx = static_cast<T*>(p.dx);
  T* dres = static_cast<T*>(p.dresidual);
  const bool training = p.training;
  for (int64_t i = i0; i < i1;) {
    int64_t m;
    int64_t c;
    if (pl.rows) {
      c = i % pl.C;
      m = min64(min64(pl.C - c, i1 - i), kApplyBlock);
      grad_piece<T, kAct, kSrc, 1>(t, i, m, k.offset(c), slope, g, xm);
    } else {
      const int64_t seg = i / pl.S;
      c = seg % pl.C;
      m = min64(min64((seg + 1) * pl.S - i, i1 - i), kApplyBlock);
      grad_piece<T, kAct, kSrc, 0>(t, i, m, k.offset(c), slope, g, xm);
    }
    if (dres)
      for (int64_t e = 0; e < m; ++e) dres[i + e] = store<T>(g[e]);
    if (dx) {
      const auto kc = k.offset(c);
      T* out = dx + i;
      if (pl.rows && training) {
        for (int64_t e = 0; e < m; ++e)
          out[e] = store<T>(kc.dx_scale[e] * (g[e] - kc.mean_g[e] - xm[e] * kc.q[e]));
      } else if (pl.rows) {
        for (int64_t e = 0; e < m; ++e) out[e] = store<T>(kc.dx_scale[e] * g[e]);
      } else if (training) {
        const A s = kc.dx_scale[0], mg = kc.mean_g[0], q = kc.q[0];
        for (int64_t e = 0; e < m; ++e) out[e] = store<T>(s * (g[e] - mg - xm[e] * q));
      } else {
        const A s = kc.dx_scale[0];
        for (int64_t e = 0; e < m; ++e) out[e] = store<T>(s * g[e]);
      }
    }
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
  template <Activation kAct, GradSrc kSrc>
  static void run(const BackwardParams& p, const Plan& pl, const BackwardCoefs& k, int64_t i0,
                  int64_t i1) {
    backward_apply_range<T, kAct, kSrc>(p, pl, k, i0, i1);
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
