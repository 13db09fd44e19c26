// Vector paths of the backward passes for float, bfloat16 and float16 storage
// (every activation but silu): kW float lanes, with the mask bits expanded in
// registers (no unpacked copy).
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

// Mask bits [idx, idx + kW) as lanes (all ones where set). Reads one byte more
// only when the bits straddle bytes, so it never reads past the last used byte.
inline vi mask_lanes(const uint8_t* __restrict mask, int64_t idx) {
  const uint8_t* p = mask + (idx >> 3);
  const int shift = static_cast<int>(idx & 7);
  uint32_t v = p[0];
  for (int b = 1; b < kW / 8; ++b) v |= uint32_t(p[b]) << (8 * b);
  if (shift) v = (v | uint32_t(p[kW / 8]) << kW) >> shift;
  return ((vi{} + static_cast<int32_t>(v)) & ((vi{} + 1) << lane_index())) != 0;
}

inline int32_t mask_bit(const uint8_t* mask, int64_t idx) { return (mask[idx >> 3] >> (idx & 7)) & 1; }

// g = dy * act'(z) and xm = x - mean of the kW elements at offset o (mask bit o).
template <typename T, Activation kAct, GradSrc kSrc>
inline void grad_lanes(const BwdTensors<T>& t, int64_t o, vf m, vf al, vf be, vf sl, vf& g, vf& xm) {
  xm = loadv(t.x + o) - m;
  vf rv = {};
  vi keep = {};
  if constexpr (kSrc == GradSrc::kRecomputeResidual) rv = loadv(t.r + o);
  if constexpr (kSrc == GradSrc::kMask) keep = mask_lanes(t.mask, o);
  g = grad_vec<kAct, kSrc>(loadv(t.dy + o), xm, rv, keep, al, be, sl);
}

// kRows rows from `first` of C channels (C % kW == 0): tg[c] += sum g,
// tgx[c] += sum g * xm * xscale, each accumulator loaded and stored once per group.
template <typename T, Activation kAct, GradSrc kSrc, int kRows>
inline void rows_group_sums(const BwdTensors<T>& t, int64_t C, int64_t first, const BwdCoefPtrs<float>& k,
                            vf sl, float* __restrict tg, float* __restrict tgx) {
  for (int64_t c = 0; c < C; c += kW) {
    const vf m = loadv(k.mean + c), al = loadv(k.alpha + c), be = loadv(k.beta + c);
    const vf sc = loadv(k.xscale + c);
    vf gs = {}, xs = {};
    for (int u = 0; u < kRows; ++u) {
      vf g, xm;
      grad_lanes<T, kAct, kSrc>(t, (first + u) * C + c, m, al, be, sl, g, xm);
      gs += g;
      xs += g * (xm * sc);
    }
    storev(tg + c, loadv(tg + c) + gs);
    storev(tgx + c, loadv(tgx + c) + xs);
  }
}

// Rows [r0, r0 + rows) of C channels (C % kW == 0): four rows at a time when
// they are long (kRowGroupBytes), else one. The group size is a template
// argument: passed at run time, the one-row loop was compiled twice as slow
// wherever this function was not inlined.
template <typename T, Activation kAct, GradSrc kSrc>
void rows_sums_vec(const BwdTensors<T>& t, int64_t C, int64_t r0, int64_t rows, const BwdCoefPtrs<float>& k,
                   float slope, float* __restrict tg, float* __restrict tgx) {
  const vf sl = splat(slope);
  int64_t q = r0;
  if (C * 4 >= kRowGroupBytes)
    for (; q + 4 <= r0 + rows; q += 4) rows_group_sums<T, kAct, kSrc, 4>(t, C, q, k, sl, tg, tgx);
  for (; q < r0 + rows; ++q) rows_group_sums<T, kAct, kSrc, 1>(t, C, q, k, sl, tg, tgx);
}

// One channel's run [o, o + len) (segments), len >= kW: sums into the 16 lanes
// lg[16], lgx[16] (kAcc vectors each). A ragged tail is done as the last kW
// elements with the lanes already summed zeroed.
template <typename T, Activation kAct, GradSrc kSrc>
inline void run_sums_vec(const BwdTensors<T>& t, int64_t o, int64_t len, float m, float al, float be,
                         float slope, float sc, float* __restrict lg, float* __restrict lgx) {
  constexpr int kAcc = 16 / kW;
  const vf mv = splat(m), av = splat(al), bv = splat(be), sv = splat(slope), cv = splat(sc);
  vf gs[kAcc], xs[kAcc];
  for (int j = 0; j < kAcc; ++j) gs[j] = loadv(lg + j * kW), xs[j] = loadv(lgx + j * kW);
  int64_t i = 0;
  vf g, xm;
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < kAcc; ++j) {
      grad_lanes<T, kAct, kSrc>(t, o + i + j * kW, mv, av, bv, sv, g, xm);
      gs[j] += g, xs[j] += g * (xm * cv);
    }
  if (kAcc > 1 && i + kW <= len) {
    grad_lanes<T, kAct, kSrc>(t, o + i, mv, av, bv, sv, g, xm);
    gs[0] += g, xs[0] += g * (xm * cv);
    i += kW;
  }
  if (i < len) {
    const vi fresh = lane_index() >= static_cast<int32_t>(kW - (len - i));
    grad_lanes<T, kAct, kSrc>(t, o + len - kW, mv, av, bv, sv, g, xm);
    gs[kAcc - 1] += fresh ? g : vf{};
    xs[kAcc - 1] += fresh ? g * (xm * cv) : vf{};
  }
  for (int j = 0; j < kAcc; ++j) storev(lg + j * kW, gs[j]), storev(lgx + j * kW, xs[j]);
}

// Sums of g and g * xm * sc over one plane [o, o + S), S >= kW, as kW lanes; a
// ragged tail is the last kW elements with the lanes already summed zeroed.
template <typename T, Activation kAct, GradSrc kSrc>
inline void plane_grad_lanes(const BwdTensors<T>& t, int64_t o, int64_t S, vf m, vf al, vf be, vf sl, vf sc,
                             vf& gs, vf& xs) {
  vf g, xm;
  int64_t i = 0;
  for (; i + kW <= S; i += kW) {
    grad_lanes<T, kAct, kSrc>(t, o + i, m, al, be, sl, g, xm);
    gs += g, xs += g * (xm * sc);
  }
  if (i < S) {
    const vi fresh = lane_index() >= static_cast<int32_t>(kW - (S - i));
    grad_lanes<T, kAct, kSrc>(t, o + S - kW, m, al, be, sl, g, xm);
    gs += fresh ? g : vf{};
    xs += fresh ? g * (xm * sc) : vf{};
  }
}

// grad_sums_planes in vectors, kW <= S <= kShortPlane: channels [c0, c1) walked
// plane by plane in memory order, each with one pair of kW-lane sums, flushed
// to fp64 every `flush` planes (a function of S only).
template <typename T, Activation kAct, GradSrc kSrc>
void grad_sums_planes_vec(const BackwardParams& p, const Plan& pl, const BackwardCoefs& coefs,
                          const GradSumsOut& out, int64_t c0, int64_t c1) {
  const int64_t S = pl.S, C = pl.C, flush = max64(1, 1024 / S);
  const int64_t max_run = max64(1, 4096 / S);
  Scratch scratch(sizeof(vf) * (2 * max_run + 1));
  vf* lanes = reinterpret_cast<vf*>((reinterpret_cast<uintptr_t>(scratch.ptr) + sizeof(vf) - 1) &
                                    ~uintptr_t(sizeof(vf) - 1));
  const BwdTensors<T> t(p);
  const auto k = bwd_coef_ptrs<float>(coefs);
  const vf sl = splat(static_cast<float>(p.activation_param));
  for (int64_t cr = c0; cr < c1; cr += max_run) {
    const int64_t cn = min64(max_run, c1 - cr);
    for (int64_t c = cr; c < cr + cn; ++c) out.sum_g[c] = out.sum_gxm[c] = 0;
    for (int64_t n0 = 0; n0 < pl.N; n0 += flush) {
      const int64_t n1 = min64(pl.N, n0 + flush);
      for (int64_t q = 0; q < 2 * cn; ++q) lanes[q] = vf{};
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c = cr; c < cr + cn; ++c) {
          vf* l = lanes + 2 * (c - cr);
          plane_grad_lanes<T, kAct, kSrc>(t, (n * C + c) * S, S, splat(k.mean[c]), splat(k.alpha[c]),
                                          splat(k.beta[c]), sl, splat(k.xscale[c]), l[0], l[1]);
        }
      for (int64_t c = cr; c < cr + cn; ++c) {
        out.sum_g[c] += double(sum_lanes(lanes[2 * (c - cr)]));
        out.sum_gxm[c] += double(sum_lanes(lanes[2 * (c - cr) + 1]));
      }
    }
  }
}

// Backward coefficients as vectors: one channel's, kW channels' (rows), or two
// planes' blended per lane.
struct CoefVecs {
  vf m, al, be, kg, kx, kc;
  static CoefVecs of(const BwdCoefPtrs<float>& k, int64_t c) {
    return {splat(k.mean[c]), splat(k.alpha[c]), splat(k.beta[c]),
            splat(k.k_g[c]),  splat(k.k_x[c]),   splat(k.k_c[c])};
  }
  static CoefVecs load(const BwdCoefPtrs<float>& k, int64_t c) {
    return {loadv(k.mean + c), loadv(k.alpha + c), loadv(k.beta + c),
            loadv(k.k_g + c),  loadv(k.k_x + c),   loadv(k.k_c + c)};
  }
  // Lanes where `first` is set from a, the others from b.
  static CoefVecs blend(vi first, const CoefVecs& a, const CoefVecs& b) {
    return {first ? a.m : b.m,   first ? a.al : b.al, first ? a.be : b.be,
            first ? a.kg : b.kg, first ? a.kx : b.kx, first ? a.kc : b.kc};
  }
};

// dx = k_g * (g + k_x * xm + k_c) (training) or k_g * g, and dres = g, of the kW
// elements at i.
template <typename T, Activation kAct, GradSrc kSrc, bool kTrain, bool kDx, bool kDres>
inline void backward_lanes(const BwdTensors<T>& t, int64_t i, const CoefVecs& v, vf slope, T* __restrict dx,
                           T* __restrict dres, bool stream) {
  vf g, xm;
  grad_lanes<T, kAct, kSrc>(t, i, v.m, v.al, v.be, slope, g, xm);
  if constexpr (kDres) store_out(dres + i, g, stream);
  if constexpr (kDx) {
    if constexpr (kTrain)
      store_out(dx + i, v.kg * (g + v.kx * xm + v.kc), stream);
    else
      store_out(dx + i, v.kg * g, stream);
  }
}

// dx (and dres) of [o, o + len), len >= kW: coefficients per element (kStride 1,
// rows) or one channel's (kStride 0). A ragged tail is done as the last kW
// elements again: the overlap is rewritten with the same values.
template <typename T, Activation kAct, GradSrc kSrc, int kStride, bool kTrain, bool kDx, bool kDres>
inline void backward_piece_vec(const BwdTensors<T>& t, int64_t o, int64_t len, const BwdCoefPtrs<float>& k,
                               float slope, T* __restrict dx, T* __restrict dres, bool stream) {
  const vf sl = splat(slope);
  const CoefVecs channel = CoefVecs::of(k, 0);  // kStride 0
  auto lanes = [&](int64_t i) {
    backward_lanes<T, kAct, kSrc, kTrain, kDx, kDres>(t, o + i, kStride ? CoefVecs::load(k, i) : channel, sl,
                                                      dx, dres, stream);
  };
  int64_t i = 0;
  for (; i + kW <= len; i += kW) lanes(i);
  if (i < len) lanes(len - kW);
}

// backward_piece_vec over [i, end) of a segments layout with kW <= S, vectors
// running across plane boundaries (see forward_planes_vec): `c` and `next` (the
// end of c's plane) describe element i. Returns the first element not done.
template <typename T, Activation kAct, GradSrc kSrc, bool kTrain, bool kDx, bool kDres>
inline int64_t backward_planes_vec(const BwdTensors<T>& t, int64_t i, int64_t end, int64_t c, int64_t next,
                                   int64_t S, int64_t C, const BwdCoefPtrs<float>& k, float slope,
                                   T* __restrict dx, T* __restrict dres, bool stream) {
  const vf sl = splat(slope);
  const vi lanes = lane_index();
  CoefVecs cur = CoefVecs::of(k, c);
  for (; i + kW <= end; i += kW) {
    CoefVecs v = cur;
    if (i + kW > next) {  // the vector crosses into the next plane
      c = c + 1 == C ? 0 : c + 1;
      cur = CoefVecs::of(k, c);
      v = CoefVecs::blend(lanes < static_cast<int32_t>(next - i), v, cur);
      next += S;
    }
    backward_lanes<T, kAct, kSrc, kTrain, kDx, kDres>(t, i, v, sl, dx, dres, stream);
  }
  return i;
}

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
