// Vector paths of the backward passes for float, bfloat16 and float16 storage
// (every activation but silu): 8 float lanes, with the mask bits expanded in
// registers (no unpacked copy).
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// Mask bits [idx, idx + 8) as lanes (all ones where set). Reads a second byte
// only when the bits straddle two, so it never reads past the last used byte.
inline vi8 mask_lanes(const uint8_t* __restrict mask, int64_t idx) {
  const uint8_t* p = mask + (idx >> 3);
  const int shift = static_cast<int>(idx & 7);
  const unsigned v = shift ? (unsigned(p[0]) | unsigned(p[1]) << 8) >> shift : unsigned(p[0]);
  const vi8 bits = {1, 2, 4, 8, 16, 32, 64, 128};
  return ((vi8{} + static_cast<int32_t>(v)) & bits) != 0;
}

inline int32_t mask_bit(const uint8_t* mask, int64_t idx) { return (mask[idx >> 3] >> (idx & 7)) & 1; }

// g = dy * act'(z) and xm = x - mean of the 8 elements at offset o (mask bit o).
template <typename T, Activation kAct, GradSrc kSrc>
inline void grad8(const BwdTensors<T>& t, int64_t o, vf8 m, vf8 al, vf8 be, vf8 sl, vf8& g,
                  vf8& xm) {
  xm = loadv(t.x + o) - m;
  vf8 rv = {};
  vi8 keep = {};
  if constexpr (kSrc == GradSrc::kRecomputeResidual) rv = loadv(t.r + o);
  if constexpr (kSrc == GradSrc::kMask) keep = mask_lanes(t.mask, o);
  g = grad_vec<kAct, kSrc>(loadv(t.dy + o), xm, rv, keep, al, be, sl);
}

// Rows [r0, r0 + rows) of C channels (C % 8 == 0): tg[c] += sum g, tgx[c] += sum g * xm.
// Four rows at a time when they are long (kRowGroupBytes), else one.
template <typename T, Activation kAct, GradSrc kSrc>
void rows_sums_vec(const BwdTensors<T>& t, int64_t C, int64_t r0, int64_t rows,
                   const BwdCoefPtrs<float>& k, float slope, float* __restrict tg,
                   float* __restrict tgx) {
  const vf8 sl = splat(slope);
  auto group = [&](int64_t first, int kRows) {
    for (int64_t c = 0; c < C; c += 8) {
      const vf8 m = loadv(k.mean + c), al = loadv(k.alpha + c), be = loadv(k.beta + c);
      vf8 gs = {}, xs = {};
      for (int u = 0; u < kRows; ++u) {
        vf8 g, xm;
        grad8<T, kAct, kSrc>(t, (first + u) * C + c, m, al, be, sl, g, xm);
        gs += g;
        xs += g * xm;
      }
      storev(tg + c, loadv(tg + c) + gs);
      storev(tgx + c, loadv(tgx + c) + xs);
    }
  };
  int64_t q = r0;
  if (C * 4 >= kRowGroupBytes)
    for (; q + 4 <= r0 + rows; q += 4) group(q, 4);
  for (; q < r0 + rows; ++q) group(q, 1);
}

// One channel's run [o, o + len) (segments), len >= 8: sums into lg[16], lgx[16].
// A ragged tail is done as the last 8 elements with the lanes already summed zeroed.
template <typename T, Activation kAct, GradSrc kSrc>
inline void run_sums_vec(const BwdTensors<T>& t, int64_t o, int64_t len, float m, float al,
                         float be, float slope, float* __restrict lg, float* __restrict lgx) {
  const vf8 mv = splat(m), av = splat(al), bv = splat(be), sv = splat(slope);
  vf8 g0 = loadv(lg), g1 = loadv(lg + 8), x0 = loadv(lgx), x1 = loadv(lgx + 8);
  int64_t i = 0;
  vf8 g, xm;
  for (; i + 16 <= len; i += 16) {
    grad8<T, kAct, kSrc>(t, o + i, mv, av, bv, sv, g, xm);
    g0 += g, x0 += g * xm;
    grad8<T, kAct, kSrc>(t, o + i + 8, mv, av, bv, sv, g, xm);
    g1 += g, x1 += g * xm;
  }
  if (i + 8 <= len) {
    grad8<T, kAct, kSrc>(t, o + i, mv, av, bv, sv, g, xm);
    g0 += g, x0 += g * xm;
    i += 8;
  }
  if (i < len) {
    const vi8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const vi8 fresh = lane >= static_cast<int32_t>(8 - (len - i));
    grad8<T, kAct, kSrc>(t, o + len - 8, mv, av, bv, sv, g, xm);
    g1 += fresh ? g : vf8{};
    x1 += fresh ? g * xm : vf8{};
  }
  storev(lg, g0), storev(lg + 8, g1), storev(lgx, x0), storev(lgx + 8, x1);
}

// Sums of g and g * xm over one plane [o, o + S), S >= 8, as 8 lanes; a ragged
// tail is the last 8 elements with the lanes already summed zeroed.
template <typename T, Activation kAct, GradSrc kSrc>
inline void plane_grad_lanes(const BwdTensors<T>& t, int64_t o, int64_t S, vf8 m, vf8 al,
                             vf8 be, vf8 sl, vf8& gs, vf8& xs) {
  vf8 g, xm;
  int64_t i = 0;
  for (; i + 8 <= S; i += 8) {
    grad8<T, kAct, kSrc>(t, o + i, m, al, be, sl, g, xm);
    gs += g, xs += g * xm;
  }
  if (i < S) {
    const vi8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const vi8 fresh = lane >= static_cast<int32_t>(8 - (S - i));
    grad8<T, kAct, kSrc>(t, o + S - 8, m, al, be, sl, g, xm);
    gs += fresh ? g : vf8{};
    xs += fresh ? g * xm : vf8{};
  }
}

// grad_sums_planes in vectors, 8 <= S <= kShortPlane: channels [c0, c1) walked
// plane by plane in memory order, each with one pair of 8-lane sums, flushed
// to fp64 every `flush` planes (a function of S only).
template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_planes_vec(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                          const GradSumsOut& out, int64_t c0, int64_t c1) {
  const int64_t S = pl.S, C = pl.C, flush = max64(1, 1024 / S);
  const int64_t max_run = max64(1, 4096 / S);
  Scratch scratch(sizeof(vf8) * 2 * max_run + 32);
  vf8* lanes = reinterpret_cast<vf8*>((reinterpret_cast<uintptr_t>(scratch.ptr) + 31) & ~uintptr_t(31));
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<float>(coefs);
  const vf8 sl = splat(static_cast<float>(p.activation_param));
  for (int64_t cr = c0; cr < c1; cr += max_run) {
    const int64_t cn = min64(max_run, c1 - cr);
    for (int64_t c = cr; c < cr + cn; ++c) out.sum_g[c] = out.sum_gxm[c] = 0;
    for (int64_t n0 = 0; n0 < pl.N; n0 += flush) {
      const int64_t n1 = min64(pl.N, n0 + flush);
      for (int64_t q = 0; q < 2 * cn; ++q) lanes[q] = vf8{};
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c = cr; c < cr + cn; ++c) {
          vf8* l = lanes + 2 * (c - cr);
          plane_grad_lanes<T, kAct, kSrc>(t, (n * C + c) * S, S, splat(k.mean[c]), splat(k.alpha[c]),
                                       splat(k.beta[c]), sl, l[0], l[1]);
        }
      for (int64_t c = cr; c < cr + cn; ++c) {
        out.sum_g[c] += double(sum_lanes(lanes[2 * (c - cr)]));
        out.sum_gxm[c] += double(sum_lanes(lanes[2 * (c - cr) + 1]));
      }
    }
  }
}

// dx (and dres) of [o, o + len), len >= 8: coefficients per element (kStride 1,
// rows) or one channel's (kStride 0). A ragged tail is done as the last 8
// elements again: the overlap is rewritten with the same values.
template <typename T, Activation kAct, GradSrc kSrc, int kStride, bool kTrain, bool kDx, bool kDres>
inline void backward_piece_vec(const BwdTensors<T>& t, int64_t o, int64_t len,
                               const BwdCoefPtrs<float>& k, float slope, T* __restrict dx,
                               T* __restrict dres, bool stream) {
  const vf8 sl = splat(slope);
  auto coef = [](const float* a, int64_t i) { return kStride ? loadv(a + i) : splat(a[0]); };
  auto eight = [&](int64_t i) {
    vf8 g, xm;
    grad8<T, kAct, kSrc>(t, o + i, coef(k.mean, i), coef(k.alpha, i), coef(k.beta, i), sl, g, xm);
    if constexpr (kDres) store_out(dres + o + i, g, stream);
    if constexpr (kDx) {
      if constexpr (kTrain)
        store_out(dx + o + i, coef(k.k_g, i) * g + coef(k.k_x, i) * xm + coef(k.k_c, i), stream);
      else store_out(dx + o + i, coef(k.k_g, i) * g, stream);
    }
  };
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) eight(i);
  if (i < len) eight(len - 8);
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
