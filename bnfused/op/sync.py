"""Batch-norm statistics over a process group: the math and the collectives of SyncBatchNorm.

Training step on each rank of the group (SyncBatchNorm and SyncBatchNormAct call it).
It lives in the op layer beside the op it calls: the running-stat rule and activation
codes are the contract's (:mod:`bnfused.op.contract`).

* forward: local per-channel ``(count, mean, M2)`` (:func:`local_stats`), ONE
  ``all_gather`` of a ``(3, C)`` float64 tensor, a Chan merge in float64
  (:func:`merge_stats`; ranks with an empty batch count 0), then the fused op
  in eval mode with the global mean/variance as its statistics, so the
  compiled/Triton kernels do the elementwise pass, activation and residual
  included. The float64 mean's rounding to the accumulation type (``lo``) moves
  into the bias the op sees, so fp32 data whose mean is 1e4 std or more is
  normalized with the exact mean. The running statistics are updated here with
  the GLOBAL count (:func:`~bnfused.op.contract.running_update`, unbiased variance).
* backward: the fused backward op in eval mode gives ``dx_eval = w*invstd*g``
  and the local sums ``sum g`` and ``sum g*xhat`` (``g = dy * act'(z)``); ONE
  ``all_reduce`` of the ``(2, C)`` stack; then
  ``dx = dx_eval - w*invstd*(sum_g + xhat*sum_gx)/N`` elementwise in torch ops,
  with ``lo`` taken out of the op's ``sum g*xhat`` and of ``xhat``.
  Weight and bias grads are the LOCAL sums, as torch's SyncBatchNorm returns
  them (DDP reduces them across ranks).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .contract import (
    DEFAULT_NEGATIVE_SLOPE,
    IDENTITY,
    SILU,
    acc_dtype,
    canonical,
    check_inputs,
    code,
    memory_format,
    running_update,
    unbiased_variance,
)

Tensor = torch.Tensor


def _channel(v: Tensor, ndim: int) -> Tensor:
    return v.view([1, -1] + [1] * (ndim - 2))


def local_stats(x: Tensor) -> Tuple[int, Tensor, Tensor]:
    """Per-channel ``(count, mean, M2)`` of ``x`` ``(N, C, *spatial)`` over every dim but 1.

    ``count`` is a Python int (``N * prod(spatial)``); ``mean`` and ``M2`` (the
    sum of squared deviations from the mean) are ``(C,)`` float64. Two passes in
    the accumulation dtype (float64 for float64 input, float32 otherwise): a
    mean ``m``, then the deviations ``d = x - m``, whose sum corrects ``m`` to
    well below the accumulation dtype's rounding of it (``mean = m + sum d / n``,
    ``M2 = sum d^2 - (sum d)^2 / n``). That correction is what keeps the merged
    statistics of several ranks exact when ``|mean|`` is far larger than the
    spread. An empty batch gives count 0 and zeros. Kernels may replace this
    function; the collective and the merge only need its contract.
    """
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count == 0:
        zeros = torch.zeros(channels, dtype=torch.float64, device=x.device)
        return 0, zeros, zeros.clone()
    dims = [0] + list(range(2, x.dim()))
    xf = x.to(acc_dtype(x.dtype))
    mean = xf.mean(dims)
    deviation = xf - _channel(mean, x.dim())
    sum_d = deviation.sum(dims).to(torch.float64)
    m2 = deviation.square().sum(dims).to(torch.float64)
    return count, mean.to(torch.float64) + sum_d / count, (m2 - sum_d.square() / count).clamp_min(0)


def merge_stats(stats: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Chan merge of per-rank statistics.

    ``stats``: ``(world, 3, C)`` float64, rows ``(count, mean, M2)``. Returns
    ``(count, mean, biased_var)``: ``count`` a 0-dim tensor, the others ``(C,)``,
    all float64. Ranks with count 0 contribute nothing.
    """
    n, mean, m2 = stats[:, 0], stats[:, 1], stats[:, 2]
    total = n[:, 0].sum() if n.shape[1] else n.new_zeros(())
    safe = total.clamp_min(1)
    global_mean = (n * mean).sum(0) / safe
    global_m2 = m2.sum(0) + (n * (mean - global_mean).square()).sum(0)
    return total, global_mean, global_m2 / safe


def _gather_stats(x: Tensor, group) -> Tuple[int, Tensor, Tensor, Tensor]:
    """Local count, then global (count, mean, biased var) in float64: one all_gather."""
    count, mean, m2 = local_stats(x)
    local = torch.stack([torch.full_like(mean, float(count)), mean, m2])
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    total, global_mean, global_var = merge_stats(torch.stack(gathered))
    return count, total, global_mean, global_var


class _SyncBatchNormFunction(torch.autograd.Function):
    """``act(bn(x) + residual)`` with statistics over a process group (see module docstring)."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        residual,
        running_mean,
        running_var,
        momentum,
        eps,
        activation,
        activation_param,
        group,
    ):
        acc = acc_dtype(x.dtype)
        count, total, mean64, var64 = _gather_stats(x, group)
        # Only when every rank holds <= 1 value can the global count be <= 1, so
        # every rank reaches this check (and raises) together; otherwise no host sync.
        if count <= 1 and int(total.item()) <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {tuple(x.shape)} on this rank and "
                f"{int(total.item())} value(s) per channel over the process group"
            )
        if running_mean is not None:
            unbiased = unbiased_variance(var64 * total, total)
            running_mean.copy_(running_update(running_mean, mean64, momentum))
            running_var.copy_(running_update(running_var, unbiased, momentum))
        # Per-channel vectors in the accumulation dtype: the op accepts them for
        # every input dtype, and the local sums of the backward then stay in it.
        mean = mean64.to(acc)
        w = weight.to(acc) if weight is not None else None
        # The op subtracts the rounded mean (exact for x near it); its rounding error lo
        # goes into the bias: b - lo * invstd * w.
        lo = mean64 - mean.to(torch.float64)
        lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
        shift = lo * torch.rsqrt(var64 + eps)
        if weight is not None:
            shift = shift * weight.to(torch.float64)
        b = ((bias.to(torch.float64) if bias is not None else 0.0) - shift).to(acc)
        if x.numel():
            y, _, invstd, mask, _ = torch.ops.bnfused.forward(
                x,
                w,
                b,
                mean,
                var64.to(acc),
                residual,
                False,
                0.0,
                eps,
                activation,
                activation_param,
            )
        else:
            y, invstd = torch.empty_like(x), torch.rsqrt(var64.to(acc) + eps)
            mask = torch.empty(0, dtype=torch.uint8, device=x.device)
        ctx.save_for_backward(
            x, w, b, mean, lo.to(acc), invstd, mask, residual if activation == SILU else None
        )
        ctx.total, ctx.eps, ctx.group = total, eps, group
        ctx.activation, ctx.activation_param = activation, activation_param
        ctx.param_dtypes = (
            weight.dtype if weight is not None else None,
            bias.dtype if bias is not None else None,
        )
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, w, b, mean, lo, invstd, mask, residual = ctx.saved_tensors
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        acc, nd, channels = invstd.dtype, x.dim(), x.shape[1]
        fmt = memory_format(x)
        dy = dy.contiguous(memory_format=fmt)
        want_res = need_r and ctx.activation != IDENTITY
        if x.numel():
            dx_eval, dw, db, dres = torch.ops.bnfused.backward(
                dy,
                x,
                w,
                b,
                mean,
                invstd,
                mask,
                residual,
                False,
                ctx.eps,
                ctx.activation,
                ctx.activation_param,
                [need_x, True, True, want_res],
            )
            # The op's xhat is (x - mean) * invstd; the exact one is lo * invstd less.
            # (Where lo is 0 nothing changes: an Inf sum of g never meets 0 * Inf.)
            dw, db = dw.to(acc), db.to(acc)
            dw = torch.where(lo != 0, dw - lo * invstd * db, dw)
        else:
            dx_eval, dres = torch.empty_like(x), torch.empty_like(x)
            dw, db = invstd.new_zeros(channels), invstd.new_zeros(channels)
        dx = None
        if need_x:
            sums = torch.stack([db, dw])
            dist.all_reduce(sums, group=ctx.group)
            if x.numel():
                # dx = w*invstd*(g - sum_g/N - xhat*sum_gx/N) = dx_eval - the mean terms.
                # A fused kernel could do this pass; torch ops keep it readable.
                scale = invstd * w if w is not None else invstd
                n = ctx.total.to(acc)
                shift = _channel(scale * sums[0] / n, nd)
                slope = _channel(scale * invstd * sums[1] / n, nd)
                centred = x.to(acc) - _channel(mean, nd) - _channel(lo, nd)
                dx = (dx_eval.to(acc) - shift - centred * slope).to(x.dtype)
                dx = dx.contiguous(memory_format=fmt)
            else:
                dx = torch.empty_like(x)
        w_dtype, b_dtype = ctx.param_dtypes
        grad_w = dw.to(w_dtype) if need_w else None
        grad_b = db.to(b_dtype) if need_b else None
        grad_r = None
        if need_r:
            grad_r = dy if ctx.activation == IDENTITY else dres
        return dx, grad_w, grad_b, grad_r, None, None, None, None, None, None, None


def sync_batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    momentum: Union[float, Tensor],
    eps: float,
    group=None,
    activation: Optional[str] = None,
    residual: Optional[Tensor] = None,
    activation_param: float = DEFAULT_NEGATIVE_SLOPE,
) -> Tensor:
    """Training-mode ``act(batch_norm(input) + residual)`` with statistics over ``group``.

    Args:
        input: ``(N, C, *spatial)`` on this rank; ``N`` may differ between ranks
            and may be 0. float32/float64/float16/bfloat16, contiguous or
            channels_last.
        running_mean, running_var: ``(C,)`` or None, updated in place with the
            statistics of the whole group (``running_var`` unbiased by the
            global count).
        weight, bias: ``(C,)`` or None.
        momentum: weight of the batch statistics in the running-stat update: a
            float, or a 0-d tensor on ``input``'s device (the cumulative
            average's ``1/num_batches_tracked``, kept off the host).
        eps: added to the variance.
        group: process group (default: the whole world). Every rank of it
            must call this, in the same order as the other collectives.
        activation, residual, activation_param: as in
            :func:`bnfused.functional.batch_norm`.

    Returns:
        A tensor like ``input``. Grads of ``weight``/``bias`` are this rank's
        own sums (reduce them across ranks, as DDP does).
    """
    _check(input, running_mean, running_var, weight, bias, residual, eps)
    if group is None:
        group = dist.group.WORLD
    x = canonical(input)
    if residual is not None:
        residual = residual.contiguous(memory_format=memory_format(x))
    return _SyncBatchNormFunction.apply(
        x,
        weight,
        bias,
        residual,
        running_mean,
        running_var,
        momentum if isinstance(momentum, Tensor) else float(momentum),
        float(eps),
        code(activation),
        float(activation_param),
        group,
    )


def _check(input, running_mean, running_var, weight, bias, residual, eps) -> None:
    """The argument checks of functional.batch_norm, less the local "more than 1 value" one."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if (
        running_mean is None
        and running_var is None
        and isinstance(input, Tensor)
        and input.dim() >= 2
    ):
        # check_inputs wants running stats outside training mode: lend it stand-ins.
        running_mean = running_var = torch.empty(
            input.shape[1], dtype=acc_dtype(input.dtype), device=input.device
        )
    check_inputs(input, running_mean, running_var, weight, bias, False, residual)
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
