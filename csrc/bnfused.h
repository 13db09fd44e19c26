// Kernel API of bnfused: raw pointers, sizes and flags; no torch headers.
//
// The binding layer (csrc/binding.cpp) checks tensors, allocates outputs and
// fills these structs; the kernels in csrc/cpu and csrc/cuda only read them.
//
// Tensors are viewed as (N, C, S) where S is the product of the spatial dims
// (1 for 2-D input), stored either as NCS (contiguous) or NSC (channels_last).
// "acc" is the accumulation type: double for fp64 input, float otherwise.
// Per-channel vectors (weight, bias, running stats, saved stats, grads of
// weight/bias) are always acc-typed: the binding converts them when the user
// passes another dtype, so kernels never see mixed parameter types.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bnfused {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class Activation : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kSilu = 3 };
enum class Layout : int { kNCS = 0, kNSC = 1 };

struct Shape {
  int64_t N = 0;  // batch
  int64_t C = 0;  // channels
  int64_t S = 1;  // product of spatial sizes
  Layout layout = Layout::kNCS;
  int64_t numel() const { return N * C * S; }
  int64_t per_channel() const { return N * S; }  // reduction size n
};

// Bytes of the activation bit mask for `numel` elements: one bit per element
// in memory order, bit (i % 8) of byte (i / 8), rounded up to whole 32-bit words.
inline int64_t mask_bytes(int64_t numel) { return (numel + 31) / 32 * 4; }

struct ForwardParams {
  Shape shape;
  DType dtype = DType::kFloat32;
  const void* x = nullptr;         // [N,C,S] dtype, layout
  const void* residual = nullptr;  // nullable, [N,C,S] dtype, layout
  void* y = nullptr;               // [N,C,S] dtype, layout
  const void* weight = nullptr;    // nullable, [C] acc
  const void* bias = nullptr;      // nullable, [C] acc
  void* running_mean = nullptr;    // nullable, [C] acc, updated in place when training
  void* running_var = nullptr;     // nullable, [C] acc, updated in place (unbiased var)
  void* save_mean = nullptr;       // [C] acc out: mean used to normalize
  void* save_invstd = nullptr;     // [C] acc out: 1/sqrt(var + eps) used to normalize
  void* save_mean_lo = nullptr;    // nullable [C] acc out (training): batch mean - save_mean
  uint8_t* mask = nullptr;         // nullable out: mask_bytes(numel) bytes, bit = (pre-activation > 0)
  bool training = true;            // true: batch statistics; false: running statistics
  double momentum = 0.1;
  double eps = 1e-5;
  Activation activation = Activation::kIdentity;
  double activation_param = 0.0;  // negative slope of leaky_relu
  void* workspace = nullptr;      // scratch of forward_workspace_bytes(shape, dtype) bytes (CUDA)
};

struct BackwardParams {
  Shape shape;
  DType dtype = DType::kFloat32;
  const void* dy = nullptr;           // [N,C,S] dtype, layout of x
  const void* x = nullptr;            // [N,C,S] dtype, layout
  const void* weight = nullptr;       // nullable, [C] acc (null = ones)
  const void* bias = nullptr;         // nullable, [C] acc (null = zeros)
  const void* residual = nullptr;     // nullable, [N,C,S]: only to recompute the pre-activation
  const void* save_mean = nullptr;    // [C] acc
  const void* save_invstd = nullptr;  // [C] acc
  // nullable [C] acc: the forward's save_mean_lo. With batch statistics the kernels
  // normalize with save_mean + save_mean_lo, the mean the forward used (it matters for
  // fp32 data whose mean is 1e4 std or more, where save_mean's rounding shows).
  const void* save_mean_lo = nullptr;
  const uint8_t* mask = nullptr;  // nullable: bit mask written by the forward
  void* dx = nullptr;             // nullable out, [N,C,S] dtype, layout
  void* dweight = nullptr;        // nullable out, [C] acc
  void* dbias = nullptr;          // nullable out, [C] acc
  void* dresidual = nullptr;      // nullable out, [N,C,S] dtype, layout: grad of the pre-activation
  bool training = true;           // statistics came from the batch (adds the mean/var terms)
  double eps = 1e-5;
  Activation activation = Activation::kIdentity;
  double activation_param = 0.0;
  void* workspace = nullptr;  // scratch of backward_workspace_bytes(shape, dtype) bytes (CUDA)
};

// Every buffer of a params struct, in one list: for_each_buffer(p, f) calls
// f(name, pointer, extent, role, required) with `pointer` a reference to the member, so
// the binding and the emulator's guarded copies (csrc/emulator/launch_emulated.cpp)
// walk the same buffers and none can be left out. `required`: null is not allowed.
enum class Extent : int { kData, kChannel, kMask, kWorkspace };  // numel, C acc, mask, scratch
enum class Role : int { kInput, kOutput, kInOut };

template <typename F>
void for_each_buffer(ForwardParams& p, F&& f) {
  f("x", p.x, Extent::kData, Role::kInput, true);
  f("residual", p.residual, Extent::kData, Role::kInput, false);
  f("y", p.y, Extent::kData, Role::kOutput, true);
  f("weight", p.weight, Extent::kChannel, Role::kInput, false);
  f("bias", p.bias, Extent::kChannel, Role::kInput, false);
  f("running_mean", p.running_mean, Extent::kChannel, Role::kInOut, false);
  f("running_var", p.running_var, Extent::kChannel, Role::kInOut, false);
  f("save_mean", p.save_mean, Extent::kChannel, Role::kOutput, true);
  f("save_invstd", p.save_invstd, Extent::kChannel, Role::kOutput, true);
  f("save_mean_lo", p.save_mean_lo, Extent::kChannel, Role::kOutput, false);
  f("mask", p.mask, Extent::kMask, Role::kOutput, false);
  f("workspace", p.workspace, Extent::kWorkspace, Role::kInOut, false);
}

template <typename F>
void for_each_buffer(BackwardParams& p, F&& f) {
  f("grad_output", p.dy, Extent::kData, Role::kInput, true);
  f("x", p.x, Extent::kData, Role::kInput, true);
  f("weight", p.weight, Extent::kChannel, Role::kInput, false);
  f("bias", p.bias, Extent::kChannel, Role::kInput, false);
  f("residual", p.residual, Extent::kData, Role::kInput, false);
  f("save_mean", p.save_mean, Extent::kChannel, Role::kInput, true);
  f("save_invstd", p.save_invstd, Extent::kChannel, Role::kInput, true);
  f("save_mean_lo", p.save_mean_lo, Extent::kChannel, Role::kInput, false);
  f("mask", p.mask, Extent::kMask, Role::kInput, false);
  f("dx", p.dx, Extent::kData, Role::kOutput, false);
  f("dweight", p.dweight, Extent::kChannel, Role::kOutput, false);
  f("dbias", p.dbias, Extent::kChannel, Role::kOutput, false);
  f("dresidual", p.dresidual, Extent::kData, Role::kOutput, false);
  f("workspace", p.workspace, Extent::kWorkspace, Role::kInOut, false);
}

// Activation gradient without the output: with a mask, d act/dz = 1 where the
// bit is set, else the slope (0 for relu); without one the kernels recompute
// z = xhat * w + b (+ residual) from x.

// CPU kernels (csrc/cpu). Parallel over channels/blocks with the ATen thread pool.
void forward_cpu(const ForwardParams& p);
void backward_cpu(const BackwardParams& p);
// Instruction set of the CPU kernels chosen for this machine: "avx512_bf16", "avx512",
// "avx2" or "baseline".
const char* cpu_kernel_isa();
// Run-time settings of the CPU kernels. Python reads and validates the environment
// (bnfused/op/settings.py) and passes them down before the first op; the kernels
// read no environment variable.
struct CpuSettings {
  int isa_cap = 3;            // 0 baseline, 1 avx2, 2 avx512, 3 avx512_bf16 (the best there is)
  int64_t stream_bytes = -1;  // streaming stores for passes from this many bytes; -1: LLC size
  bool huge_pages = true;     // huge-page advice for large fresh outputs
};
// Throws std::invalid_argument for an out-of-range value, std::logic_error when the
// kernels already ran with different settings.
void configure_cpu(const CpuSettings& settings);

// CUDA kernels (csrc/cuda), launched on `stream` (a cudaStream_t).
// Scratch memory depends only on the shape, never on data.
//
// Training passes run either as two kernels (statistics or gradient sums, then the
// elementwise pass: x is read twice) or as one persistent cooperative kernel that
// holds its tile of x (and dy) on chip across a grid-wide sync (x is read once),
// when the whole tensor fits in the resident blocks. kAuto takes the persistent
// kernel for tensors from 256 KiB that fit (kPersistentMinBytes, csrc/cuda/launch.cu:
// below it both paths are bound by launch latency); the others force a path
// (persistent still needs the fit).
enum class CudaPath : int { kAuto = 0, kTwoPass = 1, kPersistent = 2 };
void set_cuda_path(CudaPath path);
CudaPath cuda_path();
size_t forward_workspace_bytes_cuda(const Shape& shape, DType dtype);
size_t backward_workspace_bytes_cuda(const Shape& shape, DType dtype);
void forward_cuda(const ForwardParams& p, void* stream);
void backward_cuda(const BackwardParams& p, void* stream);

}  // namespace bnfused
