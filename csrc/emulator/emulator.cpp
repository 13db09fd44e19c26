// The CUDA emulator: runs each block's threads as cooperative fibers on the
// calling OS thread. A fiber runs until it reaches __syncthreads, a warp
// shuffle, a grid sync or its end; so threads really interleave at those
// points, and a barrier or shuffle that cannot complete is diagnosed instead
// of hanging. A plain launch runs its blocks one after another; a cooperative
// launch keeps every block's fibers alive, running each block until all its
// threads wait at the grid sync, then releasing the whole grid.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "device.h"
#include "emulator.h"
#include "fiber.h"

namespace bnfemu {

const uint3* current_thread = nullptr;
const GridPos* current_grid = nullptr;
bool counting_traffic = false;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSharedLimit = 48 * 1024;  // static shared memory per block
constexpr size_t kSharedGuard = 16;         // guard bytes after each shared variable
constexpr unsigned char kPoison = 0xFF;     // NaN in every float type
constexpr unsigned char kGuard = 0xA5;
constexpr uint64_t kMaxBlocks = uint64_t(1) << 26;
// Stacks past the first kGuardedStacks (only cooperative launches use them) come in
// chunks of one mapping each: a guard page per stack would cost two memory maps per
// fiber, and the kernel's limit on maps (65530) is below the fibers of a large grid.
constexpr size_t kGuardedStacks = 1024;
constexpr size_t kStacksPerChunk = 256;
constexpr uint64_t kMaxCooperativeThreads = uint64_t(1) << 20;

enum class Wait { kNone, kBarrier, kShuffle, kGrid, kExited };

struct Thread {
  uint3 idx{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  Wait wait = Wait::kNone;
  SourceSite site;
  unsigned mask = 0;
  int src = 0;
  uint64_t value = 0, result = 0;
  uint64_t seq[3] = {0, 0, 0};  // accesses so far, by kind (see note_access)
  Fiber fiber;
};

struct Access {
  uint64_t key;     // warp, kind, per-lane sequence number
  uint64_t sector;  // 32-byte sector index
  uint64_t bytes;   // on the first sector of an access only
  bool operator<(const Access& o) const { return key != o.key ? key < o.key : sector < o.sector; }
};

struct SharedVar {
  const void* key;
  size_t offset, bytes;
};

struct Block {
  std::string label;
  const std::function<void()>* body = nullptr;
  GridPos pos{};
  std::vector<Thread> threads;
  int nthreads = 0, exited = 0, at_barrier = 0, at_grid = 0;
  bool cooperative = false;
  size_t first_stack = 0;            // stack_for(first_stack + thread) is each thread's stack
  std::vector<int> shuffle_arrived;  // per warp
  std::vector<unsigned char> shared;
  size_t shared_used = 0;
  std::vector<SharedVar> shared_vars;
  std::exception_ptr fault;
  Fiber scheduler;
  Thread* running = nullptr;
  std::vector<int> order;  // the order threads take turns in
  size_t turn = 0;         // position of the running thread in `order`
  std::vector<Access> accesses;
};

std::mutex g_mutex;  // one launch at a time; guards the settings and records
Settings g_settings;
std::vector<LaunchTraffic> g_traffic;
Block* g_block = nullptr;  // under g_mutex, as are current_thread and current_grid
std::vector<char*> g_stacks;

std::string where(const SourceSite& s) { return std::string(s.file_name()) + ":" + std::to_string(s.line()); }
bool same_site(const SourceSite& a, const SourceSite& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

[[noreturn]] void fail(const Block& b, const std::string& what) {
  const uint3 p = b.pos.block;
  throw std::runtime_error("bnfused emulator: kernel (" + b.label + ") block (" + std::to_string(p.x) + "," +
                           std::to_string(p.y) + "," + std::to_string(p.z) + "): " + what);
}

char* map_stacks(size_t count) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* mem = mmap(nullptr, count * kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("bnfused emulator: cannot map fiber stacks");
  mprotect(mem, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
  return static_cast<char*>(mem) + page;
}

char* stack_for(size_t i) {
  while (g_stacks.size() <= i) {
    if (g_stacks.size() < kGuardedStacks) {
      g_stacks.push_back(map_stacks(1));
    } else {
      char* chunk = map_stacks(kStacksPerChunk);
      for (size_t k = 0; k < kStacksPerChunk; ++k) g_stacks.push_back(chunk + k * kStackBytes);
    }
  }
  return g_stacks[i];
}

// The next thread in turn that can run, or nullptr.
Thread* next_runnable(Block& b) {
  const size_t n = b.order.size();
  for (size_t k = 1; k <= n; ++k) {
    const size_t pos = (b.turn + k) % n;
    Thread& t = b.threads[b.order[pos]];
    if (t.wait == Wait::kNone) {
      b.turn = pos;
      return &t;
    }
  }
  return nullptr;
}

// Passes the turn from `t` straight to the next runnable thread (the
// scheduler only when none is left or a fault stops the block).
void pass_turn(Block& b, Thread& t) {
  Thread* u = b.fault ? nullptr : next_runnable(b);
  if (u == nullptr) {
    fiber_switch(t.fiber, b.scheduler);
  } else if (u != &t) {
    b.running = u;
    current_thread = &u->idx;
    fiber_switch(t.fiber, u->fiber);
  }
}

void fiber_main() {
  Block& b = *g_block;
  try {
    (*b.body)();
  } catch (...) {
    if (!b.fault) b.fault = std::current_exception();
  }
  Thread& t = *b.running;
  t.wait = Wait::kExited;
  ++b.exited;
  pass_turn(b, t);  // never resumed: the block's next run starts this fiber afresh
}

void yield(Block& b, Thread& t) { pass_turn(b, t); }

std::string lane_list(const std::vector<int>& lanes) {
  std::string s;
  for (size_t i = 0; i < lanes.size(); ++i) s += (i ? "," : "") + std::to_string(lanes[i]);
  return s;
}

// Nothing can run, yet not every thread has finished: say why.
[[noreturn]] void diagnose(const Block& b) {
  for (int w = 0; w * 32 < b.nthreads; ++w) {
    const Thread* waiting = nullptr;
    std::vector<int> exited, at_barrier;
    for (int l = 0; l < 32 && w * 32 + l < b.nthreads; ++l) {
      const Thread& t = b.threads[w * 32 + l];
      if (t.wait == Wait::kShuffle && waiting == nullptr) waiting = &t;
    }
    if (waiting == nullptr) continue;
    for (int l = 0; l < 32 && w * 32 + l < b.nthreads; ++l) {
      const Thread& t = b.threads[w * 32 + l];
      if (!((waiting->mask >> l) & 1u)) continue;
      if (t.wait == Wait::kExited) exited.push_back(l);
      if (t.wait == Wait::kBarrier) at_barrier.push_back(l);
    }
    std::ostringstream msg;
    msg << "__shfl_xor_sync(mask 0x" << std::hex << waiting->mask << std::dec << ") at "
        << where(waiting->site) << " in warp " << w << ": ";
    if (!exited.empty())
      fail(b, msg.str() + "lanes " + lane_list(exited) +
                  " of the mask exited without joining it "
                  "(a shuffle in divergent code)");
    if (!at_barrier.empty())
      fail(b, "deadlock: " + msg.str() + "lanes " + lane_list(at_barrier) +
                  " of the mask wait at "
                  "__syncthreads instead");
    fail(b, "deadlock: " + msg.str() + "lanes of the mask wait at another shuffle");
  }
  for (const Thread& t : b.threads) {
    if (t.wait != Wait::kBarrier) continue;
    std::string gone;
    for (const Thread& u : b.threads)
      if (u.wait == Wait::kExited) {
        gone = std::to_string(u.linear);
        break;
      }
    fail(b, "__syncthreads at " + where(t.site) + " reached by " + std::to_string(b.at_barrier) + " of " +
                std::to_string(b.nthreads) + " threads; thread " + gone +
                " exited without reaching it (a barrier in divergent code)");
  }
  fail(b, "deadlock: no thread can proceed");
}

void release_barrier(Block& b) {
  const Thread& first = b.threads[0];
  for (const Thread& t : b.threads)
    if (!same_site(t.site, first.site))
      fail(b, "threads wait at different __syncthreads (" + where(first.site) + " and " + where(t.site) +
                  "): a barrier in divergent code");
  for (Thread& t : b.threads) t.wait = Wait::kNone;
  b.at_barrier = 0;
}

void complete_shuffle(Block& b, int warp, unsigned mask) {
  Thread* lanes = &b.threads[warp * 32];
  const Thread* first = nullptr;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const Thread& t = lanes[l];
    if (t.wait != Wait::kShuffle || t.mask != mask)
      fail(b, "lanes of warp " + std::to_string(warp) + " join shuffles with different masks");
    if (first == nullptr) first = &t;
    if (!same_site(t.site, first->site))
      fail(b, "lanes of warp " + std::to_string(warp) + " meet at different shuffles (" + where(first->site) +
                  " and " + where(t.site) + ")");
    if (!((mask >> t.src) & 1u))
      fail(b, "lane " + std::to_string(l) + " of warp " + std::to_string(warp) + " reads lane " +
                  std::to_string(t.src) + ", which is not in the shuffle's mask");
  }
  for (int l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) lanes[l].result = lanes[lanes[l].src].value;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) lanes[l].wait = Wait::kNone;
  b.shuffle_arrived[warp] = 0;
}

std::vector<uint64_t> visit_order(uint64_t count, BlockOrder order, uint64_t seed) {
  std::vector<uint64_t> ids(count);
  std::iota(ids.begin(), ids.end(), uint64_t(0));
  if (order == BlockOrder::kReversed) std::reverse(ids.begin(), ids.end());
  if (order == BlockOrder::kShuffled) {
    std::mt19937_64 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
  }
  return ids;
}

void account_traffic(Block& b, LaunchTraffic& rec) {
  std::sort(b.accesses.begin(), b.accesses.end());
  uint64_t block_bytes = 0;
  for (size_t i = 0; i < b.accesses.size();) {
    const uint64_t key = b.accesses[i].key;
    const uint64_t kind = (key >> 38) & 3u;
    AccessCounts& c = kind == 0 ? rec.load : kind == 1 ? rec.store : rec.l2;
    ++c.requests;
    uint64_t last = ~uint64_t(0);
    for (; i < b.accesses.size() && b.accesses[i].key == key; ++i) {
      c.bytes += b.accesses[i].bytes;
      block_bytes += b.accesses[i].bytes;
      if (b.accesses[i].sector != last) ++c.sectors;
      last = b.accesses[i].sector;
    }
  }
  rec.block_bytes_max = std::max(rec.block_bytes_max, block_bytes);
  b.accesses.clear();
}

void start_block(Block& b, uint64_t seed) {
  std::memset(b.shared.data(), kPoison, b.shared_used);
  b.shared_used = 0;
  b.shared_vars.clear();
  b.exited = b.at_barrier = b.at_grid = 0;
  std::fill(b.shuffle_arrived.begin(), b.shuffle_arrived.end(), 0);
  for (int i = 0; i < b.nthreads; ++i) {
    Thread& t = b.threads[i];
    t.wait = Wait::kNone;
    t.seq[0] = t.seq[1] = t.seq[2] = 0;
    // Stack tops a multiple of 4 KiB apart would share cache sets: skew them by cache lines.
    const size_t skew = (static_cast<size_t>(i) * 17 * 64) % (64 * 1024);
    fiber_init(t.fiber, stack_for(b.first_stack + i), kStackBytes - skew, fiber_main);
  }
  const std::vector<uint64_t> order = visit_order(b.nthreads, g_settings.block_order, seed);
  b.order.assign(order.begin(), order.end());
  b.turn = b.order.size() - 1;
}

// Runs the block's threads until every one has exited (true) or waits at the grid
// sync (false). Threads pass the turn among themselves; control comes back here
// when none can run.
bool run_until_blocked(Block& b) {
  g_block = &b;
  current_grid = &b.pos;
  for (;;) {
    Thread* t = next_runnable(b);
    if (t == nullptr) {
      if (b.exited == b.nthreads) return true;
      if (b.at_grid == b.nthreads) return false;
      if (b.at_grid > 0) {
        for (const Thread& u : b.threads)
          if (u.wait == Wait::kGrid)
            fail(b, "grid sync at " + where(u.site) + " reached by " + std::to_string(b.at_grid) +
                        " of the block's " + std::to_string(b.nthreads) + " threads; the others " +
                        (b.exited > 0 ? "exited" : "wait at __syncthreads or a shuffle") +
                        " (a grid sync in divergent code)");
      }
      diagnose(b);
    }
    b.running = t;
    current_thread = &t->idx;
    fiber_switch(b.scheduler, t->fiber);
    if (b.fault) std::rethrow_exception(b.fault);
  }
}

void check_shared_guards(const Block& b) {
  for (const SharedVar& var : b.shared_vars)
    for (size_t g = var.offset + var.bytes; g < var.offset + var.bytes + kSharedGuard; ++g)
      if (b.shared[g] != kGuard) fail(b, "write past the end of a __shared__ variable");
}

void run_block(Block& b, uint64_t seed) {
  start_block(b, seed);
  run_until_blocked(b);
  check_shared_guards(b);
}

std::string short_label(const char* pretty) {
  const char* p = std::strstr(pretty, "Params = {");
  if (p == nullptr) return pretty;
  p += std::strlen("Params = {");
  int depth = 1;
  const char* q = p;
  for (; *q && depth > 0; ++q) depth += (*q == '{') - (*q == '}');
  return std::string(p, q - 1);
}

}  // namespace

void* shared_memory(const void* key, size_t bytes) {
  Block& b = *g_block;
  for (const SharedVar& var : b.shared_vars)
    if (var.key == key) return b.shared.data() + var.offset;
  const size_t offset = (b.shared_used + 15) / 16 * 16;
  if (offset + bytes + kSharedGuard > b.shared.size())
    throw std::runtime_error("bnfused emulator: more than 48 KiB of static shared memory");
  b.shared_vars.push_back({key, offset, bytes});
  std::memset(b.shared.data() + offset + bytes, kGuard, kSharedGuard);
  b.shared_used = offset + bytes + kSharedGuard;
  return b.shared.data() + offset;
}

void syncthreads(const SourceSite& site) {
  Block& b = *g_block;
  Thread& t = *b.running;
  t.wait = Wait::kBarrier;
  t.site = site;
  if (++b.at_barrier == b.nthreads) {
    release_barrier(b);
    return;
  }
  yield(b, t);
}

void grid_sync(const SourceSite& site) {
  Block& b = *g_block;
  Thread& t = *b.running;
  if (!b.cooperative)
    fail(b, "grid sync at " + where(site) +
                " in a kernel not launched cooperatively (it would deadlock "
                "or fail on a GPU)");
  t.wait = Wait::kGrid;
  t.site = site;
  ++b.at_grid;
  yield(b, t);
}

namespace {
// The shuffle of the running thread, reading lane `src` of its warp.
uint64_t shuffle_from(unsigned mask, uint64_t bits, int src, const SourceSite& site) {
  Block& b = *g_block;
  Thread& t = *b.running;
  t.wait = Wait::kShuffle;
  t.site = site;
  t.mask = mask;
  t.value = bits;
  t.src = src;
  if (++b.shuffle_arrived[t.warp] == __builtin_popcount(mask)) {
    complete_shuffle(b, t.warp, mask);
  } else {
    yield(b, t);
  }
  return t.result;
}

void check_shuffle(const Block& b, const Thread& t, unsigned mask, int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(b, "shuffle width " + std::to_string(width) + " is not a power of two up to 32");
  if (!((mask >> t.lane) & 1u))
    fail(b, "lane " + std::to_string(t.lane) + " calls a shuffle whose mask excludes it");
  const int lanes = std::min(32, b.nthreads - t.warp * 32);
  if (lanes < 32 && (mask >> lanes) != 0) fail(b, "shuffle mask names lanes beyond the block's last thread");
}
}  // namespace

uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const SourceSite& site) {
  const Block& b = *g_block;
  const Thread& t = *b.running;
  check_shuffle(b, t, mask, width);
  const int src = t.lane ^ lane_mask;
  return shuffle_from(mask, bits, (src & ~(width - 1)) == (t.lane & ~(width - 1)) ? src : t.lane, site);
}

uint64_t shuffle_shift(unsigned mask, uint64_t bits, int delta, int width, const SourceSite& site) {
  const Block& b = *g_block;
  const Thread& t = *b.running;
  check_shuffle(b, t, mask, width);
  const int to = (t.lane & (width - 1)) + delta;
  return shuffle_from(mask, bits, to >= 0 && to < width ? t.lane + delta : t.lane, site);
}

void note_access(const void* p, size_t bytes, int kind) {
  Block& b = *g_block;
  Thread& t = *b.running;
  const uint64_t seq = t.seq[kind]++;
  const uint64_t key = (uint64_t(t.warp) << 40) | (uint64_t(kind) << 38) | seq;
  const uint64_t addr = reinterpret_cast<uintptr_t>(p);
  for (uint64_t s = addr >> 5; s <= (addr + bytes - 1) >> 5; ++s)
    b.accesses.push_back({key, s, s == addr >> 5 ? bytes : 0});
}

namespace {

// A block of `grid` with its threads laid out, its shared memory poisoned.
std::unique_ptr<Block> make_block(const std::string& label, const std::function<void()>& body, dim3 grid,
                                  dim3 block, bool cooperative, size_t first_stack) {
  auto b = std::make_unique<Block>();
  b->label = label;
  b->body = &body;
  b->pos.block_dim = block;
  b->pos.grid_dim = grid;
  b->cooperative = cooperative;
  b->first_stack = first_stack;
  b->nthreads = static_cast<int>(block.x * block.y * block.z);
  b->threads.resize(b->nthreads);
  for (int i = 0; i < b->nthreads; ++i) {
    Thread& t = b->threads[i];
    t.idx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
  }
  b->shuffle_arrived.assign((b->nthreads + 31) / 32, 0);
  b->shared.assign(kSharedLimit, kPoison);
  return b;
}

uint3 block_position(uint64_t id, dim3 grid) {
  return {static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
          static_cast<unsigned>(id / (uint64_t(grid.x) * grid.y))};
}

LaunchTraffic traffic_record(const std::string& label, dim3 grid, dim3 block, uint64_t blocks) {
  LaunchTraffic rec;
  rec.label = label;
  rec.grid = grid;
  rec.block = block;
  rec.sm_count = g_settings.sm_count;
  rec.blocks = blocks;
  return rec;
}

struct ResetCurrent {
  ~ResetCurrent() {
    g_block = nullptr;
    current_grid = nullptr;
    current_thread = nullptr;
  }
};

// Every block waits at the grid sync or has finished: check that all wait at the same
// one (a grid sync that some block never reaches hangs a GPU) and release them.
void release_grid(std::vector<std::unique_ptr<Block>>& blocks, const std::vector<bool>& done) {
  const Block* first = nullptr;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (done[i]) continue;
    if (first == nullptr) first = blocks[i].get();
    if (!same_site(blocks[i]->threads[0].site, first->threads[0].site))
      fail(*blocks[i], "blocks wait at different grid syncs (" + where(first->threads[0].site) + " and " +
                           where(blocks[i]->threads[0].site) + ")");
    for (const Thread& t : blocks[i]->threads)
      if (!same_site(t.site, first->threads[0].site))
        fail(*blocks[i], "threads wait at different grid syncs (" + where(first->threads[0].site) + " and " +
                             where(t.site) + ")");
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!done[i]) continue;
    fail(*blocks[i], "deadlock: the block finished while other blocks wait at the grid sync at " +
                         where(first->threads[0].site) + " (a grid sync some blocks skip)");
  }
  for (auto& b : blocks) {
    for (Thread& t : b->threads) t.wait = Wait::kNone;
    b->at_grid = 0;
  }
}

}  // namespace

void launch(const char* label, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  if (!launch_config_valid(grid, block, smem)) {
    set_last_error(cudaErrorInvalidConfiguration);
    return;
  }
  const std::lock_guard<std::mutex> lock(g_mutex);
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  if (blocks > kMaxBlocks) throw std::runtime_error("bnfused emulator: grid too large to emulate");
  const std::unique_ptr<Block> b = make_block(short_label(label), body, grid, block, false, 0);
  LaunchTraffic rec = traffic_record(b->label, grid, block, blocks);
  const ResetCurrent reset;
  for (uint64_t id : visit_order(blocks, g_settings.block_order, g_settings.seed)) {
    b->pos.block = block_position(id, grid);
    run_block(*b, g_settings.seed + id);
    if (counting_traffic) account_traffic(*b, rec);
  }
  if (counting_traffic) g_traffic.push_back(rec);
}

cudaError_t launch_cooperative(const char* label, dim3 grid, dim3 block, size_t smem,
                               const std::function<void()>& body) {
  if (!launch_config_valid(grid, block, smem)) return cudaErrorInvalidConfiguration;
  const std::lock_guard<std::mutex> lock(g_mutex);
  const uint64_t count = uint64_t(grid.x) * grid.y * grid.z;
  if (count > uint64_t(g_settings.blocks_per_sm) * g_settings.sm_count)
    return cudaErrorCooperativeLaunchTooLarge;
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (count * nthreads > kMaxCooperativeThreads)
    throw std::runtime_error("bnfused emulator: cooperative grid too large to emulate");
  const std::string short_name = short_label(label);
  std::vector<std::unique_ptr<Block>> blocks;
  for (uint64_t id = 0; id < count; ++id) {
    blocks.push_back(make_block(short_name, body, grid, block, true, id * nthreads));
    blocks.back()->pos.block = block_position(id, grid);
  }
  LaunchTraffic rec = traffic_record(short_name, grid, block, count);
  const ResetCurrent reset;
  const std::vector<uint64_t> order = visit_order(count, g_settings.block_order, g_settings.seed);
  for (uint64_t id : order) start_block(*blocks[id], g_settings.seed + id);
  std::vector<bool> done(count, false);
  for (uint64_t finished = 0;;) {
    for (uint64_t id : order)
      if (!done[id] && run_until_blocked(*blocks[id])) {
        done[id] = true;
        ++finished;
        check_shared_guards(*blocks[id]);
        if (counting_traffic) account_traffic(*blocks[id], rec);
      }
    if (finished == count) break;
    release_grid(blocks, done);
  }
  if (counting_traffic) g_traffic.push_back(rec);
  return cudaSuccess;
}

Settings settings() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  return g_settings;
}

void configure(const Settings& s) {
  if (s.sm_count < 1) throw std::invalid_argument("bnfused emulator: sm_count must be at least 1");
  if (s.blocks_per_sm < 1) throw std::invalid_argument("bnfused emulator: blocks_per_sm must be at least 1");
  const std::lock_guard<std::mutex> lock(g_mutex);
  g_settings = s;
  counting_traffic = s.count_traffic;
  if (!s.count_traffic) g_traffic.clear();
}

std::vector<LaunchTraffic> take_traffic() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<LaunchTraffic> out;
  out.swap(g_traffic);
  return out;
}

}  // namespace bnfemu
