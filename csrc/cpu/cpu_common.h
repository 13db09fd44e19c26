// Shared by the CPU orchestration (forward.cpp, backward.cpp) and the kernel
// bodies compiled once per instruction set (kernels_*.cpp): the work split,
// the per-phase argument structs and the table of kernel entry points.
#pragma once

#include <cstdint>

#include "bnfused.h"

namespace bnfused {
namespace cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Chan et al. merge of block b's (count, mean, M2) into a's.
inline void chan_merge(double& na, double& mean, double& m2, double nb, double mean_b, double m2_b) {
  const double n = na + nb;
  const double delta = mean_b - mean;
  mean += delta * (nb / n);
  m2 += m2_b + delta * delta * (na * nb / n);
  na = n;
}

// How a tensor is walked. Memory is either "rows" (n rows of C channels: NSC,
// or any layout with S == 1) or "segments" (N*C runs of S elements of one
// channel: NCS, or any layout with C == 1). The reduction is split into
// `blocks` per channel (segments) or blocks of rows (rows); the split depends
// on the shape only, so the reduction order never depends on the thread count.
struct Plan {
  bool rows = false;
  int64_t N = 0, C = 0, S = 1;
  int64_t n = 0;          // elements per channel (= rows in rows mode)
  int64_t blocks = 1;     // reduction blocks (per channel for segments, of rows for rows)
  int64_t block_len = 0;  // channel elements (segments) or rows (rows) per block
  bool stream = false;    // elementwise outputs use streaming stores (stream_outputs)
  int64_t numel() const { return N * C * S; }
  int64_t items() const { return rows ? blocks : blocks * C; }
  // Elements (segments) or rows (rows) of block b: the same for every channel.
  int64_t block_count(int64_t b) const { return min64(n, (b + 1) * block_len) - b * block_len; }
};

inline int64_t dtype_bytes(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }

inline Plan make_plan(const Shape& s) {
  Plan p;
  p.C = s.C;
  p.n = s.N * s.S;
  if (s.S == 1 || (s.layout == Layout::kNSC && s.C > 1)) {
    p.rows = true;
    p.N = p.n;
    p.S = 1;
    // Blocks of >= 64K elements, at most 64 of them.
    p.blocks = max64(1, min64(64, p.n * p.C / 65536));
  } else {
    p.rows = false;
    p.N = s.C == 1 ? 1 : s.N;
    p.S = s.C == 1 ? p.n : s.S;
    // Enough items to balance threads when C is small; each block >= 8K elements.
    p.blocks = max64(1, min64(ceil_div(64, p.C), p.n / 8192));
  }
  p.block_len = ceil_div(p.n, p.blocks);
  // Short planes (segments): blocks of whole planes, so kernels can walk planes.
  if (!p.rows && p.S <= 256) p.block_len = ceil_div(p.block_len, p.S) * p.S;
  p.blocks = ceil_div(p.n, p.block_len);
  return p;
}

// Walks the flat elements of an elementwise pass in runs that share one channel
// (segments: S elements) or one row of channels (rows: C elements), from any
// start, with one division at the start rather than one per piece.
struct RunCursor {
  RunCursor(const Plan& pl, int64_t i)
      : rows_(pl.rows),
        C_(pl.C),
        run_(pl.rows ? pl.C : pl.S),
        off_(i % run_),
        c_(pl.rows ? 0 : (i / run_) % pl.C) {}
  // Channel of the next element; in rows layouts also its offset in the row.
  int64_t channel() const { return rows_ ? off_ : c_; }
  // Elements from i up to the end of the run or `end`, whichever is first.
  int64_t piece(int64_t i, int64_t end) const { return min64(run_ - off_, end - i); }
  // m <= piece(i, ...): stays within the current run.
  void advance(int64_t m) {
    off_ += m;
    if (off_ == run_) {
      off_ = 0;
      if (!rows_ && ++c_ == C_) c_ = 0;
    }
  }
  // Any m >= 0 (one division).
  void advance_by(int64_t m) {
    off_ += m;
    if (off_ >= run_) {
      if (!rows_) c_ = (c_ + off_ / run_) % C_;
      off_ %= run_;
    }
  }

 private:
  bool rows_;
  int64_t C_, run_, off_, c_;
};

// Per-block partial statistics, indexed [block * C + c]. Means and M2 are of
// d = x - shift[c] (shift = one element of the channel) for accuracy.
struct StatsOut {
  double* mean;
  double* m2;
  const double* shift;  // [C]
};

// Forward normalization: z = (x - mean) * alpha + beta, with mean the acc-rounded
// batch mean, alpha = invstd * weight and beta = bias - (exact mean - mean) * alpha,
// so one subtraction and one FMA per element keep the fp64 mean. All acc-typed [C].
// mean == nullptr (rows layouts, means near zero): z = x * alpha + beta, beta = bias - mean * alpha.
struct ForwardCoefs {
  const void* mean;
  const void* alpha;
  const void* beta;
};

// Backward: xm = x - mean, z = xm * alpha + beta (+ residual), g = dy * act'(z),
// dx = k_g * (g + k_x * xm + k_c) (training; k_x = k_c = 0 unused in eval).
// k_g = weight * invstd, k_x = -invstd^2 * sum(g * xm) / n, k_c = -sum(g) / n: k_g is
// applied last, as k_g * k_x (about weight / var) leaves float32's range for a spread
// past about 1e19, while k_x * xm stays near g's size.
struct BackwardCoefs {
  const void* mean;
  const void* alpha;
  const void* beta;
  const void* k_g;
  const void* k_x;
  const void* k_c;
  // A power of two near invstd (1 when std <= 1): the sums take g * (x - mean) * xscale,
  // scaled exactly, so that they stay finite for fp32 data near float32's largest values.
  const void* xscale;
};

// Per-block partial sums of g and g * (x - mean) * xscale, indexed [block * C + c].
struct GradSumsOut {
  double* sum_g;
  double* sum_gxm;
};

// Elementwise passes run on flat ranges that start at multiples of this
// (a multiple of 32, so threads never share a mask byte).
constexpr int64_t kApplyBlock = 2048;

struct KernelTable {
  const char* name;
  void (*stats)(const ForwardParams&, const Plan&, const StatsOut&, int64_t item0, int64_t item1);
  void (*forward_apply)(const ForwardParams&, const Plan&, const ForwardCoefs&, int64_t i0, int64_t i1);
  void (*grad_sums)(const BackwardParams&, const Plan&, const BackwardCoefs&, const GradSumsOut&,
                    int64_t item0, int64_t item1);
  void (*backward_apply)(const BackwardParams&, const Plan&, const BackwardCoefs&, int64_t i0, int64_t i1);
};

// Whether an elementwise pass that reads and writes `pass_bytes` in all should
// write its outputs with streaming stores: when the pass alone outgrows the
// last-level cache, the output lines it would keep there are evicted before
// anyone reads them, and plain stores also read every destination line first.
// BNFUSED_CPU_STREAM_BYTES replaces the cache size (0: always stream).
bool stream_outputs(int64_t pass_bytes);

// Outputs this large are fresh mappings under glibc's malloc (its mmap threshold
// is at most 32 MB), so the kernels' writes fault in every 4 KB page of them:
// on a 100 MB tensor that costs more than the pass itself. advise_huge_pages
// asks the kernel for transparent huge pages on the 2 MB-aligned interior (as
// torch does for all large allocations under THP_MEM_ALLOC_ENABLE=1), before
// the first write. A hint only; BNFUSED_CPU_HUGE_PAGES=0 turns it off.
constexpr int64_t kHugePageOutputBytes = int64_t(32) << 20;
void advise_huge_pages(void* p, int64_t bytes);

// Streaming stores pay only when every vector store of the pass uses them: a
// line written partly by a streaming and partly by a plain store (the
// unaligned head of a run) goes to memory as slow partial writes. So they are
// used only when the output is 64-byte aligned and runs (C channels in rows
// layouts, S elements in segments) are whole 64-byte lines, which keeps every
// vector store aligned for any vector width.
inline bool stream_aligned(const Plan& pl, const void* out, int64_t elem_bytes) {
  const int64_t run = pl.rows ? pl.C : pl.S;
  return out == nullptr || (reinterpret_cast<uintptr_t>(out) % 64 == 0 && run * elem_bytes % 64 == 0);
}

const KernelTable& kernels_baseline();
const KernelTable* kernels_avx2();         // nullptr when not built for this architecture
const KernelTable* kernels_avx512();       // likewise
const KernelTable* kernels_avx512_bf16();  // likewise
// The best table the running CPU supports, capped by settings().isa_cap (a capped set
// the CPU lacks falls back to the best below it).
const KernelTable& kernels();
// The settings passed by configure_cpu (defaults when none were); fixed from the first call.
const CpuSettings& settings();

}  // namespace cpu
}  // namespace bnfused
