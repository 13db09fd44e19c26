"""Plain-PyTorch implementation of the bnfused op contract: the oracle and the fallback.

Every backend computes exactly what these two functions compute. Shapes: input
``(N, C, *spatial)``; per-channel vectors ``(C,)``. Arithmetic happens in
float64 (``upcast=True``, the default: this is the oracle, and a fallback that
is slow but as exact as it gets) or in the accumulation type the kernels use
(``upcast=False``: float64 for float64 input, float32 otherwise); outputs come
back in the input's dtype and memory format, saved statistics in the
accumulation type. Statistics use a two-pass (mean, then centred squares) variance, which
stays exact for inputs whose mean is far larger than their spread.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .contract import (
    IDENTITY,
    LEAKY_RELU,
    RELU,
    SILU,
    acc_dtype,
    canonical,
    mask_bytes,
    memory_format,
    running_update,
    unbiased_variance,
    uses_mask,
)

Tensor = torch.Tensor


def _memory_order(t: Tensor, fmt: torch.memory_format) -> Tensor:
    """1-D view of ``t`` in the element order of ``fmt``."""
    if fmt == torch.contiguous_format:
        return t.contiguous().reshape(-1)
    return t.movedim(1, -1).contiguous().reshape(-1)


def pack_mask(positive: Tensor, fmt: torch.memory_format) -> Tensor:
    """Bit i%8 of byte i//8 = ``positive`` at memory-order index i (uint8, mask_bytes long)."""
    flat = _memory_order(positive, fmt).to(torch.uint8)
    padded = flat.new_zeros(mask_bytes(flat.numel()) * 8)
    padded[: flat.numel()] = flat
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=flat.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`pack_mask`: a bool tensor shaped and laid out like ``like``."""
    fmt = memory_format(like)
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    bits = ((mask.view(-1, 1) >> shifts) & 1).reshape(-1)[: like.numel()].bool()
    if fmt == torch.contiguous_format:
        return bits.view(like.shape)
    moved = list(like.shape[:1]) + list(like.shape[2:]) + [like.shape[1]]
    return bits.view(moved).movedim(-1, 1)


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    return v.view([1, -1] + [1] * (ndim - 2))


def activate(z: Tensor, activation: int, param: float) -> Tensor:
    """act(z) for the activation codes of bnfused.op.contract."""
    if activation == RELU:
        return torch.relu(z)
    if activation == LEAKY_RELU:
        return torch.where(z > 0, z, z * param)
    if activation == SILU:
        return z * torch.sigmoid(z)
    return z


def passes(z: Tensor, activation: int) -> Tensor:
    """Where the gradient of relu/leaky_relu passes at slope 1, as torch decides it (also
    the mask bit): relu stops it where ``z <= 0`` (threshold_backward), so NaN passes;
    leaky_relu passes it where ``z > 0``, so NaN takes the negative slope."""
    return ~(z <= 0) if activation == RELU else z > 0


def _given(z: Optional[Tensor]) -> Tensor:
    """``z``, which a smooth activation's gradient (or a missing mask) needs."""
    if z is None:
        raise RuntimeError("bnfused: the pre-activation is needed without a mask")
    return z


def activation_grad(
    z: Optional[Tensor],
    positive: Optional[Tensor],
    activation: int,
    param: float,
    dtype: Optional[torch.dtype] = None,
) -> Optional[Tensor]:
    """d act / dz from the pre-activation ``z`` or, for relu-like ones, its sign.

    The result has ``dtype`` (default: ``z``'s dtype, float32 without ``z``).
    """
    if activation == IDENTITY:
        return None
    if activation in (RELU, LEAKY_RELU):
        pos = positive if positive is not None else passes(_given(z), activation)
        neg = 0.0 if activation == RELU else param
        dtype = dtype or (z.dtype if z is not None else torch.float32)
        return torch.where(
            pos,
            torch.tensor(1.0, dtype=dtype, device=pos.device),
            torch.tensor(neg, dtype=dtype, device=pos.device),
        )
    z = _given(z)
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def grad_through(
    dy: Tensor, z: Optional[Tensor], positive: Optional[Tensor], activation: int, param: float
) -> Tensor:
    """``dy * act'(z)``, from ``z`` or, for relu-like ones, the mask bits ``positive``.

    Relu-like activations select rather than multiply, so a stopped relu passes an
    exact 0 even where ``dy`` is Inf or NaN, as torch's ``threshold_backward`` does.
    """
    if activation == IDENTITY:
        return dy
    if activation in (RELU, LEAKY_RELU):
        pos = positive if positive is not None else passes(_given(z), activation)
        return torch.where(pos, dy, dy * param if activation == LEAKY_RELU else 0.0)
    return dy * _given(activation_grad(z, None, activation, param))


def _given_stats(
    running_mean: Optional[Tensor], running_var: Optional[Tensor], acc: torch.dtype
) -> Tuple[Tensor, Tensor]:
    """The running statistics in ``acc``, which eval mode normalizes with."""
    if running_mean is None or running_var is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    # Copies: the op's results never alias its arguments (the schema promises fresh ones).
    return running_mean.to(acc, copy=True), running_var.to(acc, copy=True)


def batch_stats(x: Tensor, acc: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over every dim but 1, in ``acc``."""
    dims = [0] + list(range(2, x.dim()))
    xf = x.to(acc)
    if x.numel() == 0:
        zeros = xf.new_zeros(x.shape[1])
        return zeros, zeros.clone()
    mean = xf.mean(dims)
    var = (xf - _channel_view(mean, x.dim())).square().mean(dims)
    return mean, var


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
    upcast: bool = True,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward op: ``act(batchnorm(input) + residual)``.

    Returns ``(y, save_mean, save_invstd, mask, save_mean_lo)``: ``y`` like
    ``input``; ``save_mean``/``save_invstd`` ``(C,)`` in the accumulation dtype,
    the statistics used to normalize; ``mask`` uint8, the pre-activation sign
    bits for relu/leaky_relu with a residual, else empty; ``save_mean_lo``
    ``(C,)`` in the accumulation dtype, the batch mean minus ``save_mean``, in
    training (empty in eval). When ``training`` the running statistics (if
    given) are updated in place with ``momentum``.
    """
    x = canonical(input)
    fmt = memory_format(x)
    acc = torch.float64 if upcast else acc_dtype(x.dtype)
    n = x.numel() // x.shape[1] if x.shape[1] else 0
    if training:
        mean, var = batch_stats(x, acc)
        if running_mean is not None and running_var is not None and n > 0:
            with torch.no_grad():
                unbiased = unbiased_variance(var * n, n)
                running_mean.copy_(running_update(running_mean, mean, momentum))
                running_var.copy_(running_update(running_var, unbiased, momentum))
    else:
        mean, var = _given_stats(running_mean, running_var, acc)
    invstd = torch.rsqrt(var + eps)
    z = (x.to(acc) - _channel_view(mean, x.dim())) * _channel_view(invstd, x.dim())
    if weight is not None:
        z = z * _channel_view(weight.to(acc), x.dim())
    if bias is not None:
        z = z + _channel_view(bias.to(acc), x.dim())
    if residual is not None:
        z = z + residual.to(acc)
    mask = (
        pack_mask(passes(z, activation), fmt)
        if uses_mask(activation, residual is not None)
        else torch.empty(0, dtype=torch.uint8, device=x.device)
    )
    y = activate(z, activation, activation_param).to(x.dtype).contiguous(memory_format=fmt)
    stat_dtype = acc_dtype(x.dtype)
    save_mean = mean.to(stat_dtype)
    if training:
        lo = (mean - save_mean.to(acc)).to(stat_dtype)
        lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    else:
        lo = mean.new_empty(0, dtype=stat_dtype)
    return y, save_mean, invstd.to(stat_dtype), mask, lo


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
    upcast: bool = True,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward op. Returns ``(grad_input, grad_weight, grad_bias, grad_residual)``.

    ``grad_residual`` is the gradient of the pre-activation (``dy * act'(z)``).
    With batch statistics (``training``) the mean is ``save_mean + save_mean_lo``
    (the forward's ``save_mean_lo``; ``None`` or empty counts as zero).
    Outputs not asked for by ``output_mask`` come back as empty tensors. The
    activation's derivative comes from ``mask`` when it is non-empty, else
    from ``z`` recomputed from ``input`` (and ``residual``).
    """
    x = canonical(input)
    fmt = memory_format(x)
    acc = torch.float64 if upcast else acc_dtype(x.dtype)
    nd, C = x.dim(), x.shape[1]
    dims = [0] + list(range(2, nd))
    n = x.numel() // C if C else 0
    mean, invstd = _channel_view(save_mean.to(acc), nd), _channel_view(save_invstd.to(acc), nd)
    if training and save_mean_lo is not None and save_mean_lo.numel():
        mean = mean + _channel_view(save_mean_lo.to(acc), nd)
    w = _channel_view(weight.to(acc), nd) if weight is not None else None
    xhat = (x.to(acc) - mean) * invstd
    g = grad_output.to(acc)
    if activation != IDENTITY:
        if mask.numel():
            g = grad_through(g, None, unpack_mask(mask, x), activation, activation_param)
        else:
            z = xhat * w if w is not None else xhat
            if bias is not None:
                z = z + _channel_view(bias.to(acc), nd)
            if residual is not None:
                z = z + residual.to(acc)
            g = grad_through(g, z, None, activation, activation_param)
    sum_g = g.sum(dims) if n else g.new_zeros(C)
    sum_gx = (g * xhat).sum(dims) if n else g.new_zeros(C)
    empty = x.new_empty(0)
    dx = dw = db = dres = empty
    if output_mask[0]:
        scale = invstd * w if w is not None else invstd
        if training and n:
            dx = (g - _channel_view(sum_g, nd) / n - xhat * _channel_view(sum_gx, nd) / n) * scale
        else:
            dx = g * scale
        dx = dx.to(x.dtype).contiguous(memory_format=fmt)
    if output_mask[1]:
        dw = sum_gx.to(weight.dtype if weight is not None else acc_dtype(x.dtype))
    if output_mask[2]:
        db = sum_g.to(bias.dtype if bias is not None else acc_dtype(x.dtype))
    if output_mask[3]:
        dres = g.to(x.dtype).contiguous(memory_format=fmt)
    return dx, dw, db, dres
