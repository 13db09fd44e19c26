"""Host side of the Triton backend: checks, allocation and kernel launches for both ops."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
import triton

from .. import contract
from ..contract import IDENTITY, uses_mask
from . import _launch as L
from ._backward import (
    _bn_backward_elementwise_kernel,
    _bn_backward_merge_kernel,
    _bn_backward_reduce_kernel,
)
from ._forward import (
    _bn_eval_stats_kernel,
    _bn_normalize_kernel,
    _bn_stats_merge_kernel,
    _bn_stats_partial_kernel,
)

Tensor = torch.Tensor
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _device_guard(x: Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _vector(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous().view(-1)


def _check(x: Tensor) -> None:
    if x.dtype not in _DTYPES:
        raise NotImplementedError(
            f"bnfused triton backend: unsupported dtype {x.dtype}; "
            "expected float32, float64, float16 or bfloat16"
        )
    if x.dim() < 2:
        raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D input")


def _batch_stats(
    x: Tensor,
    geo: L.Geometry,
    save_mean: Tensor,
    save_invstd: Tensor,
    mean_lo: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    momentum: float,
    eps: float,
) -> None:
    """Writes save_mean, save_invstd and the mean's low part; updates running stats."""
    acc, dev = L.acc_type(x.dtype), x.device
    rl = L.reduce_launch(geo, dev)
    part_mean = torch.empty((rl.splits, geo.C), dtype=torch.float64, device=dev)
    part_m2 = torch.empty_like(part_mean)
    pivot = torch.empty_like(save_mean)
    _bn_stats_partial_kernel[rl.grid](
        x,
        pivot,
        part_mean,
        part_m2,
        geo.C,
        geo.S,
        geo.rows,
        geo.stride_n,
        geo.stride_c,
        geo.stride_s,
        rl.tiles_per_split,
        ACC=acc,
        BLOCK_R=rl.block_r,
        BLOCK_C=rl.block_c,
        INDEX_64=geo.index_64,
        num_warps=L.num_warps(dev, rl.block_r * rl.block_c),
    )
    has_running = running_mean is not None
    block_c = L.channel_block(geo.C, dev)
    _bn_stats_merge_kernel[(triton.cdiv(geo.C, block_c),)](
        pivot,
        part_mean,
        part_m2,
        save_mean,
        mean_lo,
        save_invstd,
        running_mean if has_running else save_mean,
        running_var if has_running else save_invstd,
        geo.C,
        geo.rows,
        rl.splits,
        rl.tiles_per_split * rl.block_r,
        *L.split_float(eps),
        *L.split_float(momentum),
        *L.split_float(1.0 - momentum),
        ACC=acc,
        HAS_RUNNING=has_running,
        BLOCK_C=block_c,
        num_warps=L.num_warps(dev, block_c),
    )


def forward(
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    residual: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    activation: int,
    activation_param: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward op (see :func:`bnfused.op.reference.forward`) with Triton kernels."""
    _check(input)
    x = contract.canonical(input)
    fmt = contract.memory_format(x)
    geo = L.geometry(x)
    dev, acc = x.device, contract.acc_dtype(x.dtype)
    write_mask = uses_mask(activation, residual is not None)
    mask_len = contract.mask_bytes(geo.numel) if write_mask else 0
    y = torch.empty_like(x, memory_format=fmt)
    mask = torch.empty(mask_len, dtype=torch.uint8, device=dev)
    save_mean = torch.empty(geo.C, dtype=acc, device=dev)
    save_invstd = torch.empty(geo.C, dtype=acc, device=dev)
    mean_lo = torch.empty(contract.mean_lo_length(geo.C, training), dtype=acc, device=dev)
    if geo.C == 0:
        return y, save_mean, save_invstd, mask, mean_lo
    rm, rv = _vector(running_mean), _vector(running_var)
    with _device_guard(x):
        if training and geo.numel == 0:  # empty batch: zero statistics, running stats untouched
            save_mean.zero_()
            mean_lo.zero_()
            save_invstd.fill_(eps).rsqrt_()
            return y, save_mean, save_invstd, mask, mean_lo
        block_c = L.channel_block(geo.C, dev)
        if training:
            _batch_stats(x, geo, save_mean, save_invstd, mean_lo, rm, rv, momentum, eps)
        else:
            _bn_eval_stats_kernel[(triton.cdiv(geo.C, block_c),)](
                rm,
                rv,
                save_mean,
                save_invstd,
                geo.C,
                *L.split_float(eps),
                ACC=L.acc_type(x.dtype),
                BLOCK_C=block_c,
                num_warps=L.num_warps(dev, block_c),
            )
        if rm is not None and training:  # non-contiguous running stats were updated in a copy
            if rm.data_ptr() != running_mean.data_ptr():
                running_mean.copy_(rm.view_as(running_mean))
            if rv.data_ptr() != running_var.data_ptr():
                running_var.copy_(rv.view_as(running_var))
        if geo.numel == 0:
            return y, save_mean, save_invstd, mask, mean_lo
        res = residual.contiguous(memory_format=fmt) if residual is not None else None
        w, b = _vector(weight), _vector(bias)
        block_b = L.elementwise_bytes(dev)
        covered = max(geo.numel, mask_len * 8)
        _bn_normalize_kernel[(triton.cdiv(covered, 8 * block_b),)](
            x,
            res if res is not None else x,
            y,
            mask if write_mask else y,
            save_mean,
            mean_lo if training else save_mean,
            save_invstd,
            w if w is not None else x,
            b if b is not None else x,
            geo.numel,
            mask_len,
            geo.C,
            geo.stride_c,
            *L.split_float(activation_param),
            ACTIVATION=activation,
            HAS_W=w is not None,
            HAS_B=b is not None,
            HAS_RES=res is not None,
            WRITE_MASK=write_mask,
            ACC=L.acc_type(x.dtype),
            BLOCK_B=block_b,
            INDEX_64=geo.index_64,
            HAS_MEAN_LO=training,
            num_warps=L.num_warps(dev, 8 * block_b),
        )
    return y, save_mean, save_invstd, mask, mean_lo


def _grad_sums(
    dy: Tensor,
    x: Tensor,
    res: Optional[Tensor],
    mask: Optional[Tensor],
    save_mean: Tensor,
    mean_lo: Optional[Tensor],
    save_invstd: Tensor,
    w: Optional[Tensor],
    b: Optional[Tensor],
    geo: L.Geometry,
    activation: int,
    param: float,
) -> Tuple[Tensor, Tensor]:
    """Per-channel (sum g, sum g*xhat), each ``(C,)`` in the accumulation dtype."""
    dev, acc = x.device, L.acc_type(x.dtype)
    acc_t = contract.acc_dtype(x.dtype)
    rl = L.reduce_launch(geo, dev)
    part_g = torch.empty((rl.splits, geo.C), dtype=acc_t, device=dev)
    part_gx = torch.empty_like(part_g)
    _bn_backward_reduce_kernel[rl.grid](
        dy,
        x,
        res if res is not None else x,
        mask if mask is not None else x,
        save_mean,
        mean_lo if mean_lo is not None else save_mean,
        save_invstd,
        w if w is not None else x,
        b if b is not None else x,
        part_g,
        part_gx,
        geo.C,
        geo.S,
        geo.rows,
        geo.stride_n,
        geo.stride_c,
        geo.stride_s,
        rl.tiles_per_split,
        *L.split_float(param),
        ACTIVATION=activation,
        HAS_W=w is not None,
        HAS_B=b is not None,
        HAS_RES=res is not None,
        HAS_MASK=mask is not None,
        ACC=acc,
        BLOCK_R=rl.block_r,
        BLOCK_C=rl.block_c,
        INDEX_64=geo.index_64,
        HAS_MEAN_LO=mean_lo is not None,
        num_warps=L.num_warps(dev, rl.block_r * rl.block_c),
    )
    sum_g = torch.empty(geo.C, dtype=acc_t, device=dev)
    sum_gx = torch.empty_like(sum_g)
    block_c = L.channel_block(geo.C, dev)
    _bn_backward_merge_kernel[(triton.cdiv(geo.C, block_c),)](
        part_g,
        part_gx,
        sum_g,
        sum_gx,
        geo.C,
        rl.splits,
        ACC=acc,
        BLOCK_C=block_c,
        num_warps=L.num_warps(dev, block_c),
    )
    return sum_g, sum_gx


def backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    save_mean: Tensor,
    save_invstd: Tensor,
    mask: Tensor,
    residual: Optional[Tensor],
    training: bool,
    eps: float,
    activation: int,
    activation_param: float,
    output_mask: Sequence[bool],
    save_mean_lo: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward op (see :func:`bnfused.op.reference.backward`) with Triton kernels."""
    _check(input)
    x = contract.canonical(input)
    fmt = contract.memory_format(x)
    if grad_output.shape != x.shape:
        raise RuntimeError(
            f"grad_output of size {tuple(grad_output.shape)} does not match "
            f"input of size {tuple(x.shape)}"
        )
    geo = L.geometry(x)
    dev, acc_t = x.device, contract.acc_dtype(x.dtype)
    want_dx, want_dw, want_db, want_dres = (bool(v) for v in output_mask)
    has_mask = activation != IDENTITY and mask.numel() > 0
    if has_mask and (mask.dtype != torch.uint8 or mask.numel() < contract.mask_bytes(geo.numel)):
        raise RuntimeError(
            f"mask must be uint8 with {contract.mask_bytes(geo.numel)} bytes, "
            f"got {mask.dtype} with {mask.numel()}"
        )
    need_res = residual is not None and activation != IDENTITY and not has_mask
    empty = x.new_empty(0)
    dx = torch.empty_like(x, memory_format=fmt) if want_dx else empty
    dres = torch.empty_like(x, memory_format=fmt) if want_dres else empty
    w_dtype = weight.dtype if weight is not None else acc_t
    b_dtype = bias.dtype if bias is not None else acc_t
    need_sums = want_dw or want_db or (want_dx and training)
    if geo.numel == 0 or geo.C == 0:
        zeros = torch.zeros(geo.C, dtype=acc_t, device=dev)
        return (
            dx,
            zeros.to(w_dtype) if want_dw else empty,
            zeros.to(b_dtype) if want_db else empty,
            dres,
        )
    dy = grad_output.contiguous(memory_format=fmt)
    res = residual.contiguous(memory_format=fmt) if need_res else None
    bits = mask.contiguous() if has_mask else None
    w, b = _vector(weight), _vector(bias)
    with _device_guard(x):
        mean, invstd = save_mean.contiguous(), save_invstd.contiguous()
        lo = (
            _vector(save_mean_lo)
            if training and save_mean_lo is not None and save_mean_lo.numel()
            else None
        )
        sum_g = sum_gx = None
        if need_sums:
            sum_g, sum_gx = _grad_sums(
                dy, x, res, bits, mean, lo, invstd, w, b, geo, activation, activation_param
            )
        if want_dx or want_dres:
            block_b = L.elementwise_bytes(dev)
            _bn_backward_elementwise_kernel[(triton.cdiv(geo.numel, 8 * block_b),)](
                dy,
                x,
                res if res is not None else x,
                bits if bits is not None else x,
                mean,
                lo if lo is not None else mean,
                invstd,
                w if w is not None else x,
                b if b is not None else x,
                sum_g if sum_g is not None else mean,
                sum_gx if sum_gx is not None else mean,
                dx if want_dx else x,
                dres if want_dres else x,
                geo.numel,
                bits.numel() if bits is not None else 0,
                geo.C,
                geo.stride_c,
                geo.rows,
                *L.split_float(activation_param),
                ACTIVATION=activation,
                HAS_W=w is not None,
                HAS_B=b is not None,
                HAS_RES=res is not None,
                HAS_MASK=bits is not None,
                TRAINING=bool(training),
                WRITE_DX=want_dx,
                WRITE_DRES=want_dres,
                ACC=L.acc_type(x.dtype),
                BLOCK_B=block_b,
                INDEX_64=geo.index_64,
                HAS_MEAN_LO=lo is not None,
                num_warps=L.num_warps(dev, 8 * block_b),
            )
    dw = (sum_gx if w_dtype == acc_t else sum_gx.to(w_dtype)) if want_dw else empty
    db = (sum_g if b_dtype == acc_t else sum_g.to(b_dtype)) if want_db else empty
    return dx, dw, db, dres
