// The CUDA entry points of bnfused.h run by the emulator, every buffer a
// guarded copy: an out-of-bounds write, a write into an input or an output
// left unwritten (it stays 0xFF: NaN) shows up in the result.
#include "launch_emulated.h"

#include <type_traits>

#include "emulator.h"

namespace bnfused {
namespace {

size_t elem_bytes(DType t) {
  switch (t) {
    case DType::kFloat64:
      return 8;
    case DType::kFloat32:
      return 4;
    default:
      return 2;
  }
}
size_t acc_bytes(DType t) { return t == DType::kFloat64 ? 8 : 4; }

using bnfemu::GuardedBuffers;

// Runs `launch` on guarded copies of every buffer of `p` (for_each_buffer: none is
// left out), then checks the guards and copies the outputs back.
template <typename Params>
void run_guarded(const Params& p, size_t workspace_bytes, void (*launch)(const Params&, void*)) {
  GuardedBuffers g;
  Params q = p;
  const size_t numel = static_cast<size_t>(q.shape.numel());
  for_each_buffer(q, [&](const char* name, auto& ptr, Extent extent, Role role, bool) {
    const size_t bytes = extent == Extent::kData      ? numel * elem_bytes(q.dtype)
                         : extent == Extent::kChannel ? static_cast<size_t>(q.shape.C) * acc_bytes(q.dtype)
                         : extent == Extent::kMask    ? static_cast<size_t>(mask_bytes(q.shape.numel()))
                                                      : workspace_bytes;
    const auto mode = role == Role::kInput    ? GuardedBuffers::kInput
                      : role == Role::kOutput ? GuardedBuffers::kOutput
                                              : GuardedBuffers::kInOut;
    ptr = static_cast<std::remove_reference_t<decltype(ptr)>>(g.add(name, ptr, bytes, mode));
  });
  launch(q, nullptr);
  // A graph replay keeps the workspace as the last launch left it.
  const int replays = bnfemu::settings().replays;
  if (replays > 0) {
    const auto first = g.results(q.workspace);
    for (int r = 1; r <= replays; ++r) {
      g.restore_inout(q.workspace);  // the running statistics the first launch started from
      launch(q, nullptr);
      g.expect_results(first, q.workspace, r);
    }
  }
  g.finish();
}

}  // namespace

void forward_emulated(const ForwardParams& p) {
  run_guarded(p, forward_workspace_bytes_cuda(p.shape, p.dtype), forward_cuda);
}

void backward_emulated(const BackwardParams& p) {
  run_guarded(p, backward_workspace_bytes_cuda(p.shape, p.dtype), backward_cuda);
}

}  // namespace bnfused
