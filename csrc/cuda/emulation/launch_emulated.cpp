// The CUDA entry points of bnfused.h run by the emulator, every buffer a
// guarded copy: an out-of-bounds write, a write into an input or an output
// left unwritten (it stays 0xFF: NaN) shows up in the result.
#include "launch_emulated.h"

#include "emulator.h"

namespace bnfused {
namespace {

size_t elem_bytes(DType t) {
  switch (t) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}
size_t acc_bytes(DType t) { return t == DType::kFloat64 ? 8 : 4; }

using bnfemu::GuardedBuffers;

}  // namespace

void forward_emulated(const ForwardParams& p) {
  GuardedBuffers g;
  ForwardParams q = p;
  const size_t data = static_cast<size_t>(p.shape.numel()) * elem_bytes(p.dtype);
  const size_t chan = static_cast<size_t>(p.shape.C) * acc_bytes(p.dtype);
  q.x = g.add("x", p.x, data, GuardedBuffers::kInput);
  q.residual = g.add("residual", p.residual, data, GuardedBuffers::kInput);
  q.y = g.add("y", p.y, data, GuardedBuffers::kOutput);
  q.weight = g.add("weight", p.weight, chan, GuardedBuffers::kInput);
  q.bias = g.add("bias", p.bias, chan, GuardedBuffers::kInput);
  q.running_mean = g.add("running_mean", p.running_mean, chan, GuardedBuffers::kInOut);
  q.running_var = g.add("running_var", p.running_var, chan, GuardedBuffers::kInOut);
  q.save_mean = g.add("save_mean", p.save_mean, chan, GuardedBuffers::kOutput);
  q.save_invstd = g.add("save_invstd", p.save_invstd, chan, GuardedBuffers::kOutput);
  q.mask = static_cast<uint8_t*>(
      g.add("mask", p.mask, mask_bytes(p.shape.numel()), GuardedBuffers::kOutput));
  q.workspace = g.add("workspace", p.workspace, forward_workspace_bytes_cuda(p.shape, p.dtype),
                      GuardedBuffers::kInOut);
  forward_cuda(q, nullptr);
  g.finish();
}

void backward_emulated(const BackwardParams& p) {
  GuardedBuffers g;
  BackwardParams q = p;
  const size_t data = static_cast<size_t>(p.shape.numel()) * elem_bytes(p.dtype);
  const size_t chan = static_cast<size_t>(p.shape.C) * acc_bytes(p.dtype);
  q.dy = g.add("grad_output", p.dy, data, GuardedBuffers::kInput);
  q.x = g.add("x", p.x, data, GuardedBuffers::kInput);
  q.weight = g.add("weight", p.weight, chan, GuardedBuffers::kInput);
  q.bias = g.add("bias", p.bias, chan, GuardedBuffers::kInput);
  q.residual = g.add("residual", p.residual, data, GuardedBuffers::kInput);
  q.save_mean = g.add("save_mean", p.save_mean, chan, GuardedBuffers::kInput);
  q.save_invstd = g.add("save_invstd", p.save_invstd, chan, GuardedBuffers::kInput);
  q.mask = static_cast<const uint8_t*>(
      g.add("mask", p.mask, mask_bytes(p.shape.numel()), GuardedBuffers::kInput));
  q.dx = g.add("dx", p.dx, data, GuardedBuffers::kOutput);
  q.dweight = g.add("dweight", p.dweight, chan, GuardedBuffers::kOutput);
  q.dbias = g.add("dbias", p.dbias, chan, GuardedBuffers::kOutput);
  q.dresidual = g.add("dresidual", p.dresidual, data, GuardedBuffers::kOutput);
  q.workspace = g.add("workspace", p.workspace, backward_workspace_bytes_cuda(p.shape, p.dtype),
                      GuardedBuffers::kInOut);
  backward_cuda(q, nullptr);
  g.finish();
}

}  // namespace bnfused
