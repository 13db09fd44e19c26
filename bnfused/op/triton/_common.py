"""Triton device helpers shared by the forward and backward kernels."""

from __future__ import annotations

import triton
import triton.language as tl

from .. import contract

# The contract's activation codes, as constexprs the kernels can branch on.
IDENTITY: tl.constexpr = tl.constexpr(contract.IDENTITY)
RELU: tl.constexpr = tl.constexpr(contract.RELU)
LEAKY_RELU: tl.constexpr = tl.constexpr(contract.LEAKY_RELU)
SILU: tl.constexpr = tl.constexpr(contract.SILU)


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as an fp32 pair (hi + lo), rebuilt in ACC (exact enough for fp64)."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _rsqrt(v, ACC: tl.constexpr):
    """Correctly rounded 1/sqrt(v) (the fast approximate rsqrt is not used)."""
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(v)
    else:
        return tl.div_rn(1.0, tl.sqrt_rn(v))


@triton.jit
def _activate(z, param, ACTIVATION: tl.constexpr):
    """act(z) for the activation codes above."""
    if ACTIVATION == RELU:
        return tl.where(z <= 0, 0.0, z)  # keeps NaN, as torch.relu does
    elif ACTIVATION == LEAKY_RELU:
        return tl.where(z > 0, z, z * param)
    elif ACTIVATION == SILU:
        return z / (1.0 + tl.exp(-z))
    else:
        return z


@triton.jit
def _passes(z, ACTIVATION: tl.constexpr):
    """Whether the gradient passes at slope 1, as torch decides it (also the mask bit):
    relu stops it where z <= 0, so NaN passes; leaky_relu passes it where z > 0."""
    if ACTIVATION == RELU:
        return (z > 0) | (z != z)
    else:
        return z > 0


@triton.jit
def _grad_through(dy, z, positive, param, ACTIVATION: tl.constexpr):
    """dy * act'(z): from ``positive`` (the mask bit) for relu-like activations, from ``z``
    for silu. Relu selects, so a stopped relu passes an exact 0 even where dy is Inf or NaN,
    as torch's threshold_backward does."""
    if ACTIVATION == RELU:
        return tl.where(positive, dy, 0.0)
    elif ACTIVATION == LEAKY_RELU:
        return tl.where(positive, dy, dy * param)
    else:
        s = 1.0 / (1.0 + tl.exp(-z))
        return dy * (s * (1.0 + z * (1.0 - s)))


@triton.jit
def _running_update(running, batch, keep, momentum):
    """One step of a running statistic, as torch: keep * running + momentum * batch, keep
    = 1 - momentum (contract.running_update; csrc/contract_math.h for the C++ kernels)."""
    return running * keep + batch * momentum


@triton.jit
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) summaries; empty parts (count 0) are no-ops.

    An infinite mean merges as a weighted sum (Inf - Inf would make it NaN), so a
    channel holding +Inf gets the +Inf mean of torch's sum, and NaN where both signs meet.
    """
    count = count_a + count_b
    frac = count_b / tl.maximum(count, 1.0)
    delta = mean_b - mean_a
    finite = (tl.abs(mean_a) < float("inf")) & (tl.abs(mean_b) < float("inf"))
    mean = tl.where(finite, mean_a + delta * frac, mean_a * (1.0 - frac) + mean_b * frac)
    m2 = m2_a + m2_b + delta * delta * count_a * frac
    return count, mean, m2


@triton.jit
def _byte_tile(numel, C, stride_c, BLOCK_B: tl.constexpr, INDEX_64: tl.constexpr):
    """The elementwise tile of this program: BLOCK_B mask bytes x 8 elements.

    Returns (byte (BLOCK_B,), bit (8,), memory-order index i (BLOCK_B, 8), in-bounds ok,
    channel c of each element)."""
    byte = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    if INDEX_64:
        byte = byte.to(tl.int64)
    bit = tl.arange(0, 8)
    i = byte[:, None] * 8 + bit[None, :]
    ok = i < numel
    c = (i // stride_c) % C
    return byte, bit, i, ok, c
