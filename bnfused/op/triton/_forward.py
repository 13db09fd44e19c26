"""Forward kernels: per-channel statistics (split reduction + merge) and the fused normalize.

Index schemes. Reductions see the input as ``(N, C, S)`` with element
``(n, c, s)`` at ``n*stride_n + c*stride_c + s*stride_s`` and reduce over the
``R = N*S`` rows ``r = n*S + s``; NCHW and channels_last differ only in the
strides. Elementwise kernels walk the memory order ``i`` directly; the channel
of ``i`` is ``(i // stride_c) % C`` in both layouts. Every program of an
elementwise kernel covers whole mask bytes: a ``[BLOCK_B, 8]`` tile holds 8
consecutive memory-order elements per row, and row ``b`` is mask byte ``b``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import _activate, _byte_tile, _chan_merge, _passes, _rsqrt, _running_update, _scalar


@triton.jit
def _pivot(x_ptr, c, c_ok, S, R, stride_n, stride_c, stride_s, ACC: tl.constexpr):
    """Per-channel mean of the first (up to) 16 rows: a shift close to the channel mean."""
    r = tl.arange(0, 16)
    n = r // S
    off = (n * stride_n + (r - n * S) * stride_s)[:, None] + (c * stride_c)[None, :]
    ok = (r < R)[:, None] & c_ok[None, :]
    x = tl.load(x_ptr + off, mask=ok, other=0.0).to(ACC)
    return tl.sum(x, axis=0) / tl.cast(tl.minimum(R, 16), ACC)


@triton.jit
def _split_stats(
    x_ptr,
    pivot,
    c,
    c_ok,
    S,
    R,
    stride_n,
    stride_c,
    stride_s,
    r_start,
    tiles_per_split,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """(mean, M2) in ACC of x - pivot over this split's rows, per channel of the block."""
    pivot = pivot.to(ACC)
    count = tl.zeros([BLOCK_C], ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for t in range(0, tiles_per_split):
        r = r_start + t * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < R
        n = r // S
        off = (n * stride_n + (r - n * S) * stride_s)[:, None] + (c * stride_c)[None, :]
        ok = r_ok[:, None] & c_ok[None, :]
        x = tl.where(ok, tl.load(x_ptr + off, mask=ok, other=0.0).to(ACC) - pivot[None, :], 0.0)
        # Two-pass statistics of the tile, then Chan's merge into the running summary.
        tile_count = tl.sum(r_ok.to(ACC), axis=0)
        tile_mean = tl.sum(x, axis=0) / tl.maximum(tile_count, 1.0)
        d = tl.where(ok, x - tile_mean[None, :], 0.0)
        # Corrected two-pass: sum(d) is the rounding error of the first pass.
        corr = tl.sum(d, axis=0)
        tile_mean = tl.where(
            tl.abs(corr) < float("inf"), tile_mean + corr / tl.maximum(tile_count, 1.0), tile_mean
        )
        tile_m2 = tl.sum(d * d, axis=0) - corr * corr / tl.maximum(tile_count, 1.0)
        count, mean, m2 = _chan_merge(count, mean, m2, tile_count, tile_mean, tile_m2)
    return mean, m2


@triton.jit
def _bn_stats_partial_kernel(
    x_ptr,  # (N, C, S) input, strides (stride_n, stride_c, stride_s)
    pivot_ptr,  # (C,) out, ACC: the shift subtracted before summing
    mean_ptr,  # (SPLITS, C) out, float64: mean of each split's rows, minus the channel's pivot
    m2_ptr,  # (SPLITS, C) out, float64: sum of squared deviations from that mean
    C,
    S,
    R,
    stride_n,
    stride_c,
    stride_s,
    tiles_per_split,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    split = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        split = split.to(tl.int64)
        c = c.to(tl.int64)
    c_ok = c < C
    # Statistics of x - pivot, the pivot being the mean of the channel's first rows:
    # sums stay small and exact even when |mean| >> std. Every split computes the
    # same pivot; split 0 stores it for the merge.
    pivot = _pivot(x_ptr, c, c_ok, S, R, stride_n, stride_c, stride_s, ACC)
    pivot = tl.where(tl.abs(pivot) < float("inf"), pivot, 0.0)  # an Inf or NaN among the rows
    tl.store(pivot_ptr + c, pivot, mask=c_ok & (split == 0))
    r_start = split * tiles_per_split * BLOCK_R
    mean, m2 = _split_stats(
        x_ptr,
        pivot,
        c,
        c_ok,
        S,
        R,
        stride_n,
        stride_c,
        stride_s,
        r_start,
        tiles_per_split,
        ACC,
        BLOCK_R,
        BLOCK_C,
    )
    mean, m2 = mean.to(tl.float64), m2.to(tl.float64)
    if ACC != tl.float64:
        # fp32 overflows for a spread past about 1e18 (the squared deviations pass 3.4e38):
        # such a channel's rows of this split are taken again in float64. Rare, so the
        # common case keeps its single pass; channels holding Inf or NaN come out the same.
        redo = (tl.abs(mean) < float("inf")) & (tl.abs(m2) < float("inf"))
        redo = c_ok & ~redo
        if tl.max(redo.to(tl.int32), axis=0) > 0:
            mean64, m2_64 = _split_stats(
                x_ptr,
                pivot,
                c,
                c_ok,
                S,
                R,
                stride_n,
                stride_c,
                stride_s,
                r_start,
                tiles_per_split,
                tl.float64,
                BLOCK_R,
                BLOCK_C,
            )
            mean = tl.where(redo, mean64, mean)
            m2 = tl.where(redo, m2_64, m2)
    tl.store(mean_ptr + split * C + c, mean, mask=c_ok)
    tl.store(m2_ptr + split * C + c, m2, mask=c_ok)


@triton.jit
def _bn_stats_merge_kernel(
    pivot_ptr,  # (C,) ACC, from _bn_stats_partial_kernel
    part_mean_ptr,  # (SPLITS, C) float64, from _bn_stats_partial_kernel (pivot subtracted)
    part_m2_ptr,  # (SPLITS, C) float64
    save_mean_ptr,  # (C,) out, ACC: batch mean
    mean_lo_ptr,  # (C,) out, ACC: batch mean - save_mean (the rounding error of save_mean)
    save_invstd_ptr,  # (C,) out, ACC: 1 / sqrt(biased var + eps)
    running_mean_ptr,  # (C,) in/out, its own dtype (unused unless HAS_RUNNING)
    running_var_ptr,  # (C,) in/out, its own dtype: updated with the unbiased variance
    C,
    R,
    splits,
    rows_per_split,
    eps_hi,
    eps_lo,
    mom_hi,
    mom_lo,
    keep_hi,
    keep_lo,
    ACC: tl.constexpr,
    HAS_RUNNING: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Merged in float64 whatever ACC: the variance of fp32 data can pass fp32's range
    # (its inverse square root cannot), and this kernel only touches C values per split.
    F64: tl.constexpr = tl.float64
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    count = tl.zeros([BLOCK_C], F64)
    mean = tl.zeros([BLOCK_C], F64)
    m2 = tl.zeros([BLOCK_C], F64)
    for sp in range(0, splits):
        rows = tl.minimum(R - sp * rows_per_split, rows_per_split)
        part_count = tl.zeros([BLOCK_C], F64) + tl.cast(rows, F64)
        part_mean = tl.load(part_mean_ptr + sp * C + c, mask=c_ok, other=0.0)
        part_m2 = tl.load(part_m2_ptr + sp * C + c, mask=c_ok, other=0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, part_count, part_mean, part_m2)
    # A channel holding Inf has an infinite or NaN mean and, as in torch, a NaN variance.
    var = tl.where(tl.abs(mean) < float("inf"), m2 / count, float("nan"))
    # pivot + mean as a rounded sum and its error (Knuth's two-sum), then split into ACC
    # parts: when |mean| >> std one ulp of the mean is a visible error in y, so the
    # normalize kernel subtracts both parts.
    pivot = tl.load(pivot_ptr + c, mask=c_ok, other=0.0).to(F64)
    total = pivot + mean
    back = total - pivot
    err = (pivot - (total - back)) + (mean - back)
    hi = total.to(ACC)
    tl.store(save_mean_ptr + c, hi, mask=c_ok)
    lo = (total - hi.to(F64)) + err
    lo = tl.where(tl.abs(lo) < float("inf"), lo, 0.0)  # 0 where the mean is not finite
    tl.store(mean_lo_ptr + c, lo.to(ACC), mask=c_ok)
    invstd = _rsqrt(var + _scalar(eps_hi, eps_lo, F64), F64)
    tl.store(save_invstd_ptr + c, invstd.to(ACC), mask=c_ok)
    if HAS_RUNNING:
        momentum = _scalar(mom_hi, mom_lo, F64)
        keep = _scalar(keep_hi, keep_lo, F64)
        # n == 1 gives 0 * 1 / 0 = nan, as torch does.
        unbiased = var * count / (count - 1.0)
        rm = tl.load(running_mean_ptr + c, mask=c_ok, other=0.0)
        rv = tl.load(running_var_ptr + c, mask=c_ok, other=0.0)
        tl.store(
            running_mean_ptr + c,
            _running_update(rm.to(F64), total, keep, momentum).to(rm.dtype),
            mask=c_ok,
        )
        tl.store(
            running_var_ptr + c,
            _running_update(rv.to(F64), unbiased, keep, momentum).to(rv.dtype),
            mask=c_ok,
        )


@triton.jit
def _bn_eval_stats_kernel(
    running_mean_ptr,  # (C,) its own dtype
    running_var_ptr,  # (C,) its own dtype
    save_mean_ptr,  # (C,) out, ACC: running_mean
    save_invstd_ptr,  # (C,) out, ACC: 1 / sqrt(running_var + eps)
    C,
    eps_hi,
    eps_lo,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    rm = tl.load(running_mean_ptr + c, mask=c_ok, other=0.0).to(ACC)
    rv = tl.load(running_var_ptr + c, mask=c_ok, other=1.0).to(ACC)
    tl.store(save_mean_ptr + c, rm, mask=c_ok)
    tl.store(save_invstd_ptr + c, _rsqrt(rv + _scalar(eps_hi, eps_lo, ACC), ACC), mask=c_ok)


@triton.jit
def _bn_normalize_kernel(
    x_ptr,  # (numel,) input in memory order
    res_ptr,  # (numel,) residual in x's memory order (unused unless HAS_RES)
    y_ptr,  # (numel,) out, x's dtype
    mask_ptr,  # (mask_bytes,) out, uint8: bit i%8 of byte i//8 = _passes(z_i) (if WRITE_MASK)
    mean_ptr,  # (C,) ACC
    mean_lo_ptr,  # (C,) ACC: low part of the mean (unused unless HAS_MEAN_LO)
    invstd_ptr,  # (C,) ACC
    w_ptr,  # (C,) weight (unused unless HAS_W)
    b_ptr,  # (C,) bias (unused unless HAS_B)
    numel,
    mask_bytes,
    C,
    stride_c,
    param_hi,
    param_lo,
    ACTIVATION: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    WRITE_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    INDEX_64: tl.constexpr,
    HAS_MEAN_LO: tl.constexpr,
):
    byte, bit, i, ok, c = _byte_tile(numel, C, stride_c, BLOCK_B, INDEX_64)
    x = tl.load(x_ptr + i, mask=ok, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + c, mask=ok, other=0.0).to(ACC)
    invstd = tl.load(invstd_ptr + c, mask=ok, other=0.0).to(ACC)
    centered = x - mean
    if HAS_MEAN_LO:
        centered = centered - tl.load(mean_lo_ptr + c, mask=ok, other=0.0).to(ACC)
    z = centered * invstd
    if HAS_W:
        z = z * tl.load(w_ptr + c, mask=ok, other=0.0).to(ACC)
    if HAS_B:
        z = z + tl.load(b_ptr + c, mask=ok, other=0.0).to(ACC)
    if HAS_RES:
        z = z + tl.load(res_ptr + i, mask=ok, other=0.0).to(ACC)
    y = _activate(z, _scalar(param_hi, param_lo, ACC), ACTIVATION)
    tl.store(y_ptr + i, y, mask=ok)
    if WRITE_MASK:
        bits = tl.where(ok & _passes(z, ACTIVATION), 1, 0).to(tl.int32) << bit[None, :]
        tl.store(mask_ptr + byte, tl.sum(bits, axis=1).to(tl.uint8), mask=byte < mask_bytes)
