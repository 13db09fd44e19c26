"""Backward kernels: one split reduction (sum g, sum g*xhat) + merge, then one elementwise pass.

``g = dy * act'(z)`` is the gradient of the pre-activation; ``act'`` comes from
the forward's bit mask when there is one, else from ``z`` recomputed from the
input (and residual). Index schemes as in :mod:`._forward`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import IDENTITY, _byte_tile, _grad_through, _passes, _scalar


@triton.jit
def _pre_activation_grad(
    dy,
    xhat,
    positive,
    res,
    w,
    b,
    param,
    ACTIVATION: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """g = dy * act'(z); ``positive`` is used when HAS_MASK, else z is rebuilt from xhat."""
    if ACTIVATION == IDENTITY:
        return dy
    else:
        z = xhat
        if not HAS_MASK:
            if HAS_W:
                z = z * w
            if HAS_B:
                z = z + b
            if HAS_RES:
                z = z + res
            positive = _passes(z, ACTIVATION)
        return _grad_through(dy, z, positive, param, ACTIVATION)


@triton.jit
def _centered(x, mean, lo, HAS_MEAN_LO: tl.constexpr):
    """x - (mean + lo): x - mean is exact near the mean, then the mean's low part."""
    if HAS_MEAN_LO:
        return (x - mean) - lo
    else:
        return x - mean


@triton.jit
def _bn_backward_reduce_kernel(
    dy_ptr,  # (N, C, S) grad_output, x's strides
    x_ptr,  # (N, C, S) input, strides (stride_n, stride_c, stride_s)
    res_ptr,  # (N, C, S) residual, x's strides (unused unless HAS_RES and not HAS_MASK)
    mask_ptr,  # (mask_bytes,) uint8 forward bit mask (unused unless HAS_MASK)
    mean_ptr,  # (C,) ACC save_mean
    mean_lo_ptr,  # (C,) ACC batch mean - save_mean (unused unless HAS_MEAN_LO)
    invstd_ptr,  # (C,) ACC save_invstd
    w_ptr,  # (C,) weight (unused unless HAS_W)
    b_ptr,  # (C,) bias (unused unless HAS_B)
    sum_g_ptr,  # (SPLITS, C) out, ACC: sum of g over the split's rows
    sum_gx_ptr,  # (SPLITS, C) out, ACC: sum of g * xhat
    C,
    S,
    R,
    stride_n,
    stride_c,
    stride_s,
    tiles_per_split,
    param_hi,
    param_lo,
    ACTIVATION: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INDEX_64: tl.constexpr,
    HAS_MEAN_LO: tl.constexpr,
):
    split = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        split = split.to(tl.int64)
        c = c.to(tl.int64)
    c_ok = c < C
    param = _scalar(param_hi, param_lo, ACC)
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0).to(ACC)[None, :]
    lo = mean
    if HAS_MEAN_LO:
        lo = tl.load(mean_lo_ptr + c, mask=c_ok, other=0.0).to(ACC)[None, :]
    invstd = tl.load(invstd_ptr + c, mask=c_ok, other=0.0).to(ACC)[None, :]
    w = invstd
    b = invstd
    if HAS_W:
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(ACC)[None, :]
    if HAS_B:
        b = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(ACC)[None, :]
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_gx = tl.zeros([BLOCK_C], ACC)
    r_start = split * tiles_per_split * BLOCK_R
    for t in range(0, tiles_per_split):
        r = r_start + t * BLOCK_R + tl.arange(0, BLOCK_R)
        n = r // S
        off = (n * stride_n + (r - n * S) * stride_s)[:, None] + (c * stride_c)[None, :]
        ok = (r < R)[:, None] & c_ok[None, :]
        dy = tl.load(dy_ptr + off, mask=ok, other=0.0).to(ACC)
        xhat = (
            _centered(tl.load(x_ptr + off, mask=ok, other=0.0).to(ACC), mean, lo, HAS_MEAN_LO)
            * invstd
        )
        res = xhat
        positive = ok
        if HAS_RES and not HAS_MASK:
            res = tl.load(res_ptr + off, mask=ok, other=0.0).to(ACC)
        if HAS_MASK:
            byte = tl.load(mask_ptr + off // 8, mask=ok, other=0).to(tl.int32)
            positive = ((byte >> (off % 8).to(tl.int32)) & 1) != 0
        g = _pre_activation_grad(
            dy, xhat, positive, res, w, b, param, ACTIVATION, HAS_W, HAS_B, HAS_RES, HAS_MASK
        )
        g = tl.where(ok, g, 0.0)
        acc_g += tl.sum(g, axis=0)
        acc_gx += tl.sum(g * xhat, axis=0)
    tl.store(sum_g_ptr + split * C + c, acc_g, mask=c_ok)
    tl.store(sum_gx_ptr + split * C + c, acc_gx, mask=c_ok)


@triton.jit
def _bn_backward_merge_kernel(
    part_g_ptr,  # (SPLITS, C) ACC, from _bn_backward_reduce_kernel
    part_gx_ptr,  # (SPLITS, C) ACC
    sum_g_ptr,  # (C,) out, ACC: sum of g (= grad_bias)
    sum_gx_ptr,  # (C,) out, ACC: sum of g * xhat (= grad_weight)
    C,
    splits,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_gx = tl.zeros([BLOCK_C], ACC)
    for sp in range(0, splits):
        acc_g += tl.load(part_g_ptr + sp * C + c, mask=c_ok, other=0.0).to(ACC)
        acc_gx += tl.load(part_gx_ptr + sp * C + c, mask=c_ok, other=0.0).to(ACC)
    tl.store(sum_g_ptr + c, acc_g, mask=c_ok)
    tl.store(sum_gx_ptr + c, acc_gx, mask=c_ok)


@triton.jit
def _bn_backward_elementwise_kernel(
    dy_ptr,  # (numel,) grad_output in x's memory order
    x_ptr,  # (numel,) input in memory order
    res_ptr,  # (numel,) residual (unused unless HAS_RES and not HAS_MASK)
    mask_ptr,  # (mask_bytes,) uint8 forward bit mask (unused unless HAS_MASK)
    mean_ptr,  # (C,) ACC save_mean
    mean_lo_ptr,  # (C,) ACC batch mean - save_mean (unused unless HAS_MEAN_LO)
    invstd_ptr,  # (C,) ACC save_invstd
    w_ptr,  # (C,) weight (unused unless HAS_W)
    b_ptr,  # (C,) bias (unused unless HAS_B)
    sum_g_ptr,  # (C,) ACC sum of g (unused unless TRAINING)
    sum_gx_ptr,  # (C,) ACC sum of g * xhat (unused unless TRAINING)
    dx_ptr,  # (numel,) out, x's dtype (if WRITE_DX)
    dres_ptr,  # (numel,) out, x's dtype: g (if WRITE_DRES)
    numel,
    mask_bytes,
    C,
    stride_c,
    n_rows,
    param_hi,
    param_lo,
    ACTIVATION: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TRAINING: tl.constexpr,
    WRITE_DX: tl.constexpr,
    WRITE_DRES: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    INDEX_64: tl.constexpr,
    HAS_MEAN_LO: tl.constexpr,
):
    byte, bit, i, ok, c = _byte_tile(numel, C, stride_c, BLOCK_B, INDEX_64)
    mean = tl.load(mean_ptr + c, mask=ok, other=0.0).to(ACC)
    lo = mean
    if HAS_MEAN_LO:
        lo = tl.load(mean_lo_ptr + c, mask=ok, other=0.0).to(ACC)
    invstd = tl.load(invstd_ptr + c, mask=ok, other=0.0).to(ACC)
    w = invstd
    b = invstd
    if HAS_W:
        w = tl.load(w_ptr + c, mask=ok, other=0.0).to(ACC)
    if HAS_B:
        b = tl.load(b_ptr + c, mask=ok, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + i, mask=ok, other=0.0).to(ACC)
    xhat = _centered(tl.load(x_ptr + i, mask=ok, other=0.0).to(ACC), mean, lo, HAS_MEAN_LO) * invstd
    res = xhat
    positive = ok
    if HAS_RES and not HAS_MASK:
        res = tl.load(res_ptr + i, mask=ok, other=0.0).to(ACC)
    if HAS_MASK:
        mbyte = tl.load(mask_ptr + byte, mask=byte < mask_bytes, other=0).to(tl.int32)
        positive = ((mbyte[:, None] >> bit[None, :]) & 1) != 0
    g = _pre_activation_grad(
        dy,
        xhat,
        positive,
        res,
        w,
        b,
        _scalar(param_hi, param_lo, ACC),
        ACTIVATION,
        HAS_W,
        HAS_B,
        HAS_RES,
        HAS_MASK,
    )
    if WRITE_DRES:
        tl.store(dres_ptr + i, g, mask=ok)
    if WRITE_DX:
        scale = invstd
        if HAS_W:
            scale = invstd * w
        if TRAINING:
            count = tl.cast(n_rows, ACC)
            sum_g = tl.load(sum_g_ptr + c, mask=ok, other=0.0).to(ACC)
            sum_gx = tl.load(sum_gx_ptr + c, mask=ok, other=0.0).to(ACC)
            dx = (g - sum_g / count - xhat * sum_gx / count) * scale
        else:
            dx = g * scale
        tl.store(dx_ptr + i, dx, mask=ok)
