// Guarded copies of a launch's buffers (see emulator.h): the emulated
// backend's stand-in for what compute-sanitizer's memcheck finds on a GPU.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "emulator.h"

namespace bnfemu {
namespace {

constexpr size_t kGuardBytes = 256;
constexpr size_t kAlign = 256;  // cudaMalloc's alignment: copies keep the offset modulo it
constexpr unsigned char kGuard = 0xA5, kPoison = 0xFF;

}  // namespace

struct GuardedBuffers::Buffer {
  std::string name;
  void* original;
  size_t bytes;
  Mode mode;
  std::vector<unsigned char> storage;
  unsigned char* data;
};

GuardedBuffers::GuardedBuffers() = default;
GuardedBuffers::~GuardedBuffers() = default;

void* GuardedBuffers::add(const char* name, const void* data, size_t bytes, Mode mode) {
  if (data == nullptr) return nullptr;
  auto buf = std::make_unique<Buffer>();
  buf->name = name;
  buf->original = const_cast<void*>(data);
  buf->bytes = bytes;
  buf->mode = mode;
  buf->storage.assign(bytes + 2 * kGuardBytes + 2 * kAlign, kGuard);
  const uintptr_t base = reinterpret_cast<uintptr_t>(buf->storage.data()) + kGuardBytes;
  const uintptr_t aligned = (base + kAlign - 1) / kAlign * kAlign;
  buf->data = reinterpret_cast<unsigned char*>(aligned + reinterpret_cast<uintptr_t>(data) % kAlign);
  if (mode == kOutput) {
    std::memset(buf->data, kPoison, bytes);
  } else {
    std::memcpy(buf->data, data, bytes);
  }
  void* out = buf->data;
  buffers_.push_back(std::move(buf));
  return out;
}

std::vector<std::vector<unsigned char>> GuardedBuffers::results(const void* keep) const {
  std::vector<std::vector<unsigned char>> out;
  for (const auto& buf : buffers_)
    if (buf->mode != kInput && buf->data != keep) out.emplace_back(buf->data, buf->data + buf->bytes);
  return out;
}

void GuardedBuffers::restore_inout(const void* keep) {
  for (const auto& buf : buffers_)
    if (buf->mode == kInOut && buf->data != keep) std::memcpy(buf->data, buf->original, buf->bytes);
}

void GuardedBuffers::expect_results(const std::vector<std::vector<unsigned char>>& first, const void* keep,
                                    int replay) const {
  size_t k = 0;
  for (const auto& buf : buffers_) {
    if (buf->mode == kInput || buf->data == keep) continue;
    if (std::memcmp(first[k++].data(), buf->data, buf->bytes) != 0)
      throw std::runtime_error("bnfused emulator: replay " + std::to_string(replay) +
                               " on the same buffers wrote a different '" + buf->name +
                               "' than the first launch (state left in the workspace?)");
  }
}

void GuardedBuffers::finish() {
  for (const auto& buf : buffers_) {
    const unsigned char* lo = buf->storage.data();
    const unsigned char* hi = lo + buf->storage.size();
    for (const unsigned char* p = lo; p < buf->data; ++p)
      if (*p != kGuard)
        throw std::runtime_error("bnfused emulator: out-of-bounds write " + std::to_string(buf->data - p) +
                                 " bytes before '" + buf->name + "' (" + std::to_string(buf->bytes) +
                                 " bytes)");
    for (const unsigned char* p = buf->data + buf->bytes; p < hi; ++p)
      if (*p != kGuard)
        throw std::runtime_error("bnfused emulator: out-of-bounds write " +
                                 std::to_string(p - buf->data - buf->bytes) + " bytes after '" + buf->name +
                                 "' (" + std::to_string(buf->bytes) + " bytes)");
    if (buf->mode == kInput && std::memcmp(buf->data, buf->original, buf->bytes) != 0)
      throw std::runtime_error("bnfused emulator: the kernels wrote into the input '" + buf->name + "'");
  }
  for (const auto& buf : buffers_)
    if (buf->mode != kInput) std::memcpy(buf->original, buf->data, buf->bytes);
}

}  // namespace bnfemu
