#include "plan.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "launch_common.h"

namespace bnfused {
namespace cudak {
namespace {

constexpr int kMaxSplits = 512;
constexpr int64_t kMinVecsPerBlock = 4 * kThreads;  // NCS: at least 4 vectors per thread
constexpr size_t kAlign = 256;

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count_of_device() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) throw std::runtime_error("bnfused: cudaGetDevice failed");
  static int cache[64] = {0};
  if (device < 64 && cache[device] > 0) return cache[device];
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0)
    throw std::runtime_error("bnfused: cannot query the SM count");
  if (device < 64) cache[device] = sms;
  return sms;
}

int elem_bytes(DType t) {
  switch (t) {
    case DType::kFloat64:
      return 8;
    case DType::kFloat32:
      return 4;
    default:
      return 2;
  }
}

int acc_bytes(DType t) { return t == DType::kFloat64 ? 8 : 4; }

}  // namespace

bool rows_of_channels(const Shape& s) { return s.layout == Layout::kNSC || s.S == 1; }

int choose_vec(const Shape& shape, DType dtype, std::initializer_list<const void*> ptrs) {
  const int vec = 16 / elem_bytes(dtype);
  const int64_t run =
      rows_of_channels(shape) ? shape.C : shape.S;  // contiguous elements of a channel row/plane
  if (run % vec != 0) return 1;
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return vec;
}

namespace {
// The plan's geometry without the splits: tiles of an NSC reduction.
ReducePlan reduce_geometry(const Shape& shape, int vec) {
  ReducePlan plan;
  plan.nsc = rows_of_channels(shape);
  plan.vec = vec;
  plan.C = shape.C;
  if (plan.nsc) {
    plan.row_vecs = shape.C / vec;
    plan.rows = shape.N * shape.S;
    plan.tile_vcols = static_cast<int>(std::min<int64_t>(plan.row_vecs, 32));
    plan.lanes = kThreads / plan.tile_vcols;
    plan.tiles = static_cast<int>(ceil_div(plan.row_vecs, plan.tile_vcols));
  } else {
    if (shape.C > INT32_MAX) throw std::runtime_error("bnfused: too many channels for the CUDA kernels");
    plan.plane_vecs = shape.S / vec;
    plan.channel_vecs = shape.N * plan.plane_vecs;
    plan.plane_div = FastDivmod(plan.plane_vecs, plan.channel_vecs);
  }
  return plan;
}

// Sets chunk and splits for `splits` wanted, dropping splits that would be empty after
// rounding the chunk.
void set_splits(ReducePlan& plan, int64_t splits) {
  const int64_t total = plan.nsc ? plan.rows : plan.channel_vecs;
  plan.chunk = ceil_div(total, std::max<int64_t>(1, splits));
  plan.splits = static_cast<int>(ceil_div(total, plan.chunk));
}
}  // namespace

ReducePlan make_reduce_plan(const Shape& shape, int vec) {
  ReducePlan plan = reduce_geometry(shape, vec);
  // Work for two waves of resident blocks.
  const int64_t target_blocks = 2 * kReduceBlocksPerSm * static_cast<int64_t>(sm_count_of_device());
  int64_t splits = 1;
  if (plan.nsc) {
    const int64_t by_work = std::max<int64_t>(1, plan.rows / (4 * plan.lanes));
    splits = std::min(ceil_div(target_blocks, plan.tiles), by_work);
  } else {
    const int64_t by_work = std::max<int64_t>(1, plan.channel_vecs / kMinVecsPerBlock);
    splits = std::min(ceil_div(target_blocks, shape.C), by_work);
  }
  set_splits(plan, std::max<int64_t>(1, std::min<int64_t>(splits, kMaxSplits)));
  return plan;
}

ReducePlan make_resident_plan(const Shape& shape, int vec, int items, int64_t target_blocks) {
  ReducePlan plan = reduce_geometry(shape, vec);
  // As many splits as the blocks held need, more while the target grid has room
  // (memory bandwidth needs every SM), but as the two-pass plans, at least 4 vectors
  // per thread each: the partials then stay a small fraction of the data.
  const int64_t groups = plan.nsc ? plan.tiles : plan.C;  // blocks per split
  const int64_t total = plan.nsc ? plan.rows : plan.channel_vecs;
  const int64_t per_item = plan.nsc ? plan.lanes : kThreads;  // rows or vectors per item of a block
  const int64_t needed = ceil_div(total, per_item * items);
  const int64_t spread =
      std::min(std::max<int64_t>(1, target_blocks / groups), std::max<int64_t>(1, total / (4 * per_item)));
  set_splits(plan, std::max(needed, spread));
  return plan;
}

int64_t plan_blocks(const ReducePlan& plan) {
  return (plan.nsc ? int64_t(plan.tiles) : plan.C) * plan.splits;
}

int64_t resident_target_blocks() {
  return kPersistentBlocksPerSm * static_cast<int64_t>(sm_count_of_device());
}
int64_t max_resident_blocks() { return (2048 / kThreads) * static_cast<int64_t>(sm_count_of_device()); }
int device_sm_count() { return sm_count_of_device(); }

ApplyPlan make_apply_plan(const Shape& shape, int vec, int blocks_per_sm) {
  ApplyPlan plan;
  plan.vec = vec;
  plan.vecs = shape.numel() / vec;
  const bool nsc = rows_of_channels(shape);
  plan.nsc_vec = nsc && vec > 1;
  if (plan.nsc_vec) {
    plan.channel_div = FastDivmod(shape.C / vec, plan.vecs);
  } else {
    plan.inner_div = FastDivmod(nsc ? 1 : shape.S / vec, plan.vecs);
    plan.channel_div = FastDivmod(shape.C, plan.vecs);
  }
  const int64_t resident = blocks_per_sm * static_cast<int64_t>(sm_count_of_device());
  int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(plan.vecs, kThreads), resident));
  if (nsc) {
    // A grid stride that is a multiple of the row keeps each thread on fixed channels.
    const int64_t cols = shape.C / vec;
    int64_t g = cols, b = kThreads;
    while (b != 0) {
      const int64_t t = g % b;
      g = b;
      b = t;
    }
    const int64_t mult = cols / g;
    if (mult <= blocks) blocks = ceil_div(blocks, mult) * mult;
  }
  plan.blocks = static_cast<int>(blocks);
  return plan;
}

namespace {
size_t layout_bytes(const ReducePlan& plan, size_t state_bytes) {
  if (plan.splits <= 1) return 0;
  const int64_t counters = plan.nsc ? plan.tiles : plan.C;
  return round_up(counters * sizeof(unsigned), kAlign) +
         round_up(static_cast<size_t>(plan.splits) * plan.C * state_bytes, kAlign);
}
}  // namespace

size_t reduce_workspace_bytes(const Shape& shape, DType dtype, size_t state_bytes, int extra_vectors,
                              bool backward) {
  const int widest = 16 / elem_bytes(dtype);
  size_t bytes = 0;
  for (int vec : {1, widest}) {
    if (vec > 1 && (rows_of_channels(shape) ? shape.C : shape.S) % vec != 0) continue;
    bytes = std::max(bytes, layout_bytes(make_reduce_plan(shape, vec), state_bytes));
    const int items = resident_items(backward, rows_of_channels(shape), dtype, vec);
    const ReducePlan resident = make_resident_plan(shape, vec, items, resident_target_blocks());
    if (plan_blocks(resident) <= max_resident_blocks())
      bytes = std::max(bytes, layout_bytes(resident, state_bytes));
  }
  return bytes + round_up(static_cast<size_t>(extra_vectors) * shape.C * acc_bytes(dtype), kAlign);
}

char* bind_workspace(ReducePlan& plan, void* workspace, size_t state_bytes) {
  char* base = static_cast<char*>(workspace);
  const size_t bytes = layout_bytes(plan, state_bytes);
  if (bytes > 0) {
    if (base == nullptr) throw std::runtime_error("bnfused: CUDA kernels need a workspace");
    const int64_t counters = plan.nsc ? plan.tiles : plan.C;
    plan.counters = reinterpret_cast<unsigned*>(base);
    plan.partials = base + round_up(counters * sizeof(unsigned), kAlign);
  }
  return base == nullptr ? nullptr : base + bytes;
}

}  // namespace cudak
}  // namespace bnfused
