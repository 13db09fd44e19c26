// The op contract's arithmetic, written once for the CPU and CUDA kernels (host and
// device code, and the CUDA sources compiled for the emulator): each activation, the
// gradient through it and its mask bit; the running-statistics update.
//
// Scalars only. The CPU kernels' vector paths (cpu/forward_vec_impl.h,
// cpu/grad_piece_impl.h) restate the relu-like rules on GCC vectors, and
// tests/test_cpu_kernels.py checks them against these bit for bit.
//
// The CPU kernels include this before their per-instruction-set target pragmas, so
// every out-of-line copy is the same default-target code in every object.
#pragma once

#include <math.h>

#include "bnfused.h"

#if defined(__CUDACC__)
#define BNF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BNF_HOST_DEVICE inline
#endif

namespace bnfused {
namespace contract {

BNF_HOST_DEVICE float exp_acc(float v) { return expf(v); }
BNF_HOST_DEVICE double exp_acc(double v) { return exp(v); }

// act(z). NaN propagates through relu/leaky_relu as in torch (every comparison with
// NaN is false).
template <Activation ACT, typename A>
BNF_HOST_DEVICE A activate(A z, A slope) {
  if constexpr (ACT == Activation::kRelu) {
    return z < A(0) ? A(0) : z;
  } else if constexpr (ACT == Activation::kLeakyRelu) {
    return z > A(0) ? z : z * slope;
  } else if constexpr (ACT == Activation::kSilu) {
    return z / (A(1) + exp_acc(-z));
  } else {
    return z;
  }
}

// Whether the gradient passes at slope 1, as torch decides it: relu stops it where
// z <= 0 (threshold_backward), so NaN passes; leaky_relu passes it where z > 0, so NaN
// takes the negative slope. This is also the mask bit the forward stores.
template <Activation ACT, typename A>
BNF_HOST_DEVICE bool passes(A z) {
  if constexpr (ACT == Activation::kRelu) return !(z <= A(0));
  return z > A(0);
}

// The gradient through a piecewise-linear activation from its mask bit (or passes()):
// a select, not dy * 0, so a stopped relu passes an exact 0 even where dy is Inf or
// NaN, as torch's threshold_backward does.
template <Activation ACT, typename A>
BNF_HOST_DEVICE A grad_through_bit(A dy, bool pass, A slope) {
  if constexpr (ACT == Activation::kRelu) {
    return pass ? dy : A(0);
  } else if constexpr (ACT == Activation::kLeakyRelu) {
    return pass ? dy : dy * slope;
  } else {
    return dy;
  }
}

// dy * act'(z) at the pre-activation z.
template <Activation ACT, typename A>
BNF_HOST_DEVICE A grad_through(A dy, A z, A slope) {
  if constexpr (ACT == Activation::kSilu) {
    const A s = A(1) / (A(1) + exp_acc(-z));
    return dy * (s * (A(1) + z * (A(1) - s)));
  } else {
    return grad_through_bit<ACT>(dy, passes<ACT>(z), slope);
  }
}

// One step of the running statistics, as torch: (1 - momentum) * running + momentum *
// batch, with the unbiased batch variance m2 / (n - 1) for running_var. W is the
// precision the update is computed in (double on the CPU, the acc type on the GPU).
template <typename W>
BNF_HOST_DEVICE W running_update(W running, W batch, W momentum) {
  return (W(1) - momentum) * running + momentum * batch;
}

template <typename W>
BNF_HOST_DEVICE W unbiased_variance(W m2, W n) {
  return m2 / (n - W(1));
}

}  // namespace contract
}  // namespace bnfused
