// Element math shared by the kernel bodies: dtype conversion, activations,
// fixed-order lane reductions, mask bits and scratch memory. Lives in the
// instruction-set namespace BNFUSED_ISA; include kernel_prelude.h first.
#pragma once

namespace bnfused {
namespace cpu {
namespace BNFUSED_ISA {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

template <typename A, typename T>
inline A load(T v) {
  return static_cast<A>(v);
}
template <typename T, typename A>
inline T store(A v) {
  return static_cast<T>(v);
}

// Activations, their gradients and mask bits: the contract's (contract_math.h).
using contract::activate;
using contract::grad_through;
using contract::grad_through_bit;
using contract::passes;

// Sums in 64 bytes of independent lanes (vectorizes without reassociation
// flags) folded in a fixed order: results are deterministic.
template <typename A>
constexpr int kLanes = static_cast<int>(64 / sizeof(A));

template <typename A>
inline A fold_lanes(A* acc) {
  for (int w = kLanes<A> / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}

template <typename A>
inline A lane_sum(const A* v, int64_t n) {
  constexpr int W = kLanes<A>;
  A acc[W] = {};
  int64_t i = 0;
  for (; i + W <= n; i += W)
    for (int k = 0; k < W; ++k) acc[k] += v[i + k];
  for (int k = 0; i < n; ++i, ++k) acc[k] += v[i];
  return fold_lanes(acc);
}

template <typename A>
inline A lane_sq_dev(const A* v, int64_t n, A m) {
  constexpr int W = kLanes<A>;
  A acc[W] = {};
  int64_t i = 0;
  for (; i + W <= n; i += W)
    for (int k = 0; k < W; ++k) acc[k] += (v[i + k] - m) * (v[i + k] - m);
  for (int k = 0; i < n; ++i, ++k) acc[k] += (v[i] - m) * (v[i] - m);
  return fold_lanes(acc);
}

template <typename A>
inline A lane_dot(const A* a, const A* b, int64_t n) {
  constexpr int W = kLanes<A>;
  A acc[W] = {};
  int64_t i = 0;
  for (; i + W <= n; i += W)
    for (int k = 0; k < W; ++k) acc[k] += a[i + k] * b[i + k];
  for (int k = 0; i < n; ++i, ++k) acc[k] += a[i] * b[i];
  return fold_lanes(acc);
}

// Lets the vectorizer ignore possible aliasing of the (restrict) pointers in a loop.
#define BNFUSED_IVDEP _Pragma("GCC ivdep")

// kW-lane float vectors (GCC vector extensions) for the vector paths: 16 lanes
// (zmm) in the avx512 build, 8 (ymm) in the avx2 build, 8 as pairs of SSE
// registers in the baseline one.
#if defined(BNFUSED_ISA_AVX512)
constexpr int kW = 16;
#else
constexpr int kW = 8;
#endif
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));
typedef uint32_t vu __attribute__((vector_size(4 * kW)));
typedef uint16_t vh __attribute__((vector_size(2 * kW)));  // kW bfloat16 / float16
inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vi loadv(const int32_t* p) {
  vi v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float a) { return vf{} + a; }

// {0, 1, ..., kW - 1}
inline vi lane_index() {
  vi v;
  for (int k = 0; k < kW; ++k) v[k] = k;
  return v;
}

// The lanes of v added in a fixed order (pairwise halves).
inline float sum_lanes(vf v) {
  float a[kW];
  storev(a, v);
  for (int w = kW / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) a[k] += a[k + w];
  return a[0];
}

// Storage types the vector paths serve (float lanes); float64 and silu take
// the scalar loops.
template <typename T, Activation kAct>
constexpr bool kVec = !std::is_same_v<T, double> && kAct != Activation::kSilu;

// kW bfloat16 / float16 values as float lanes, and back with round-to-nearest-even
// (bit for bit what c10::BFloat16 and c10::Half conversions give).
inline vf loadv(const c10::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu w = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

inline vh to_bf16_exact(vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof u);
  vu r = (u + (((u >> 16) & 1) + 0x7FFFu)) >> 16;
  r = (v != v) ? vu{} + 0x7FC0u : r;  // NaN -> canonical quiet NaN, as c10
  return __builtin_convertvector(r, vh);
}

inline vh to_bf16(vf v) {
#if defined(BNFUSED_ISA_AVX512_BF16)
  // vcvtneps2bf16 rounds to nearest even like c10 but flushes denormal inputs
  // and keeps NaN payloads: those lanes (vfpclassps: QNaN 0x01, denormal 0x20,
  // SNaN 0x80) take the integer path.
  if (__builtin_expect(_mm512_fpclass_ps_mask(__m512(v), 0xA1) == 0, 1)) {
    const __m256bh h = _mm512_cvtneps_pbh(__m512(v));
    vh r;
    std::memcpy(&r, &h, sizeof r);
    return r;
  }
#endif
  return to_bf16_exact(v);
}

inline vf loadv(const c10::Half* p) {
#if defined(BNFUSED_ISA_AVX512)
  // The maskz forms: the plain ones start from an undefined vector GCC 12 warns about.
  return vf(_mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(BNFUSED_ISA_AVX2) || defined(__F16C__)
  return vf(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  float f[kW];
  for (int k = 0; k < kW; ++k) f[k] = static_cast<float>(p[k]);
  return loadv(f);
#endif
}

inline vh to_half(vf v) {
#if defined(BNFUSED_ISA_AVX512)
  return vh(_mm512_maskz_cvtps_ph(0xFFFF, __m512(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(BNFUSED_ISA_AVX2) || defined(__F16C__)
  return vh(_mm256_cvtps_ph(__m256(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  c10::Half h[kW];
  for (int k = 0; k < kW; ++k) h[k] = c10::Half(v[k]);
  vh r;
  std::memcpy(&r, h, sizeof r);
  return r;
#endif
}

// Output stores of the elementwise passes. Streaming (non-temporal) stores skip
// the read-for-ownership of the destination line and leave the caches to the
// inputs; they need the vector's own alignment, so unaligned addresses take a
// plain store. stream_fence() orders them before the pass ends.
inline void store_out(float* p, vf v, bool stream) {
#if defined(BNFUSED_ISA_AVX512)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 63) == 0) return _mm512_stream_ps(p, __m512(v));
#elif defined(BNFUSED_ISA_AVX2) || defined(__AVX2__)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 31) == 0) return _mm256_stream_ps(p, __m256(v));
#elif defined(__SSE2__)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
    const __m128 lo = {v[0], v[1], v[2], v[3]}, hi = {v[4], v[5], v[6], v[7]};
    _mm_stream_ps(p, lo);
    return _mm_stream_ps(p + 4, hi);
  }
#endif
  storev(p, v);
}

inline void store_out16(void* p, vh h, bool stream) {
#if defined(BNFUSED_ISA_AVX512)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 31) == 0)
    return _mm256_stream_si256(static_cast<__m256i*>(p), __m256i(h));
#elif defined(__SSE2__) || defined(BNFUSED_ISA_AVX2)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 15) == 0)
    return _mm_stream_si128(static_cast<__m128i*>(p), __m128i(h));
#endif
  std::memcpy(p, &h, sizeof h);
}
inline void store_out(c10::BFloat16* p, vf v, bool stream) { store_out16(p, to_bf16(v), stream); }
inline void store_out(c10::Half* p, vf v, bool stream) { store_out16(p, to_half(v), stream); }

inline void stream_fence(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// Float overloads: 4 * kW lanes in four independent vectors (lane k sums
// elements k mod 4 kW), folded in a fixed order; four chains hide the add latency.
constexpr int kW4 = 4 * kW;
inline float fold4(const vf& a0, const vf& a1, const vf& a2, const vf& a3, const float* v, int64_t i,
                   int64_t n) {
  float acc[kW4];
  storev(acc, a0), storev(acc + kW, a1), storev(acc + 2 * kW, a2), storev(acc + 3 * kW, a3);
  for (int k = 0; i < n; ++i, ++k) acc[k] += v[i];
  for (int w = kW4 / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}

inline float lane_sum(const float* v, int64_t n) {
  vf a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + kW4 <= n; i += kW4) {
    a0 += loadv(v + i), a1 += loadv(v + i + kW);
    a2 += loadv(v + i + 2 * kW), a3 += loadv(v + i + 3 * kW);
  }
  return fold4(a0, a1, a2, a3, v, i, n);
}

inline float lane_sq_dev(const float* v, int64_t n, float m) {
  vf a0 = {}, a1 = {}, a2 = {}, a3 = {};
  const vf mv = splat(m);
  int64_t i = 0;
  for (; i + kW4 <= n; i += kW4) {
    const vf d0 = loadv(v + i) - mv, d1 = loadv(v + i + kW) - mv;
    const vf d2 = loadv(v + i + 2 * kW) - mv, d3 = loadv(v + i + 3 * kW) - mv;
    a0 += d0 * d0, a1 += d1 * d1, a2 += d2 * d2, a3 += d3 * d3;
  }
  float tail[kW4];
  const int64_t rest = n - i;
  for (int64_t k = 0; k < rest; ++k) tail[k] = (v[i + k] - m) * (v[i + k] - m);
  return fold4(a0, a1, a2, a3, tail, 0, rest);
}

// flags[i] (int32 0/1) -> bit i % 8 of out[i / 8]; the last partial byte is zero-padded.
inline void pack_bits(const int32_t* __restrict flags, int64_t len, uint8_t* __restrict out) {
  int64_t j = 0;
#if defined(BNFUSED_ISA_AVX2) || defined(__AVX2__)
  for (; (j + 1) * 8 <= len; ++j) {
    const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags + j * 8));
    out[j] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(f, 31))));
  }
#endif
  for (; j * 8 < len; ++j) {
    unsigned v = 0;
    for (int b = 0; b < 8 && j * 8 + b < len; ++b) v |= unsigned(flags[j * 8 + b] & 1) << b;
    out[j] = static_cast<uint8_t>(v);
  }
}

// Mask bits [idx, idx + len) as int32 0/1; whole bytes go through a constant-shift loop.
inline void unpack_bits(const uint8_t* __restrict mask, int64_t idx, int64_t len, int32_t* __restrict flags) {
  int64_t i = 0;
  for (; i < len && ((idx + i) & 7) != 0; ++i) flags[i] = (mask[(idx + i) >> 3] >> ((idx + i) & 7)) & 1;
  const uint8_t* bytes = mask + ((idx + i) >> 3);
  const int64_t whole = (len - i) >> 3;
  int32_t* f = flags + i;
  for (int64_t j = 0; j < whole; ++j)
    for (int b = 0; b < 8; ++b) f[j * 8 + b] = (int32_t(bytes[j]) >> b) & 1;
  for (i += whole * 8; i < len; ++i) flags[i] = (mask[(idx + i) >> 3] >> ((idx + i) & 7)) & 1;
}

// Rows walked four at a time are four interleaved streams; when a row is 512 B
// to 2 KB they share pages and the hardware prefetchers lose them (reads from
// memory ran at 40% of one stream). Then the group two ahead is prefetched.
inline bool rows_need_prefetch(int64_t row_bytes) { return row_bytes > 256 && row_bytes < 4096; }

// Columns [p, p + bytes) of the four rows eight to eleven rows after p's.
inline void prefetch_row_group(const void* p, int64_t row_bytes, int64_t bytes) {
  const char* base = static_cast<const char*>(p) + 8 * row_bytes;
  for (int u = 0; u < 4; ++u)
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(base + u * row_bytes + b);
}

// Backward sums walk rows of at least this many bytes four at a time, sharing
// each load and store of the per-channel accumulators; shorter rows one at a
// time. Four streams inside one page defeat the hardware prefetchers, and for
// these sums even prefetching them by hand stayed slower than one sequential
// stream with both cores reading from memory (C = 64..512: 1.5x the time).
constexpr int64_t kRowGroupBytes = 4096;

// Heap scratch without std containers (their instantiations would be shared across instruction sets).
struct Scratch {
  explicit Scratch(size_t bytes) : ptr(::operator new(bytes)) {}
  ~Scratch() { ::operator delete(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename A>
  A* as() {
    return static_cast<A*>(ptr);
  }
  void* ptr;
};

}  // namespace BNFUSED_ISA
}  // namespace cpu
}  // namespace bnfused
