"""Batching rules of ``bnfused::forward`` and ``bnfused::backward`` for ``torch.vmap``.

A vmapped batch norm normalizes each member of the vmapped dimension ``B``
with its own statistics, so member ``b``'s channel ``c`` is channel ``b*C + c``
of one call: input ``(B, N, C, *S)`` becomes ``(N, B*C, *S)``, per-channel
vectors ``(B, C)`` become ``(B*C,)`` (unbatched ones are repeated), and the
results are split back. Running statistics that the call updates must be
batched; they are written in place in the caller's tensors.

The activation mask of a batched forward is returned per member, ``(B, bytes)``,
each row the bits of that member in contiguous (N, C, *S) order: the op's
mask layout depends on the whole tensor, which a batched output cannot carry.
Only the backward rule reads it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import (
    ops,  # noqa: F401  (defines the ops the rules are registered for)
    reference,
)
from .contract import mask_bytes

Tensor = torch.Tensor


def _channels(t: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    """``(B, N, C, *S)`` batched at ``dim`` (or unbatched ``(N, C, *S)``) -> ``(N, B*C, *S)``."""
    if t is None:
        return None
    if dim is None:
        t = t.unsqueeze(1).expand(t.shape[0], size, *t.shape[1:])
    else:
        t = t.movedim(dim, 1)
    return t.reshape(t.shape[0], -1, *t.shape[3:]).contiguous()


def _members(t: Tensor, size: int) -> Tensor:
    """Inverse of :func:`_channels`: ``(N, B*C, *S)`` -> ``(N, B, C, *S)`` (batched at 1)."""
    return t.unflatten(1, (size, -1))


def _vector(v: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    """A per-channel vector ``(B, C)`` batched at ``dim`` (or unbatched ``(C,)``) -> ``(B*C,)``."""
    if v is None or v.numel() == 0:
        return v
    if dim is None:
        return v.unsqueeze(0).expand(size, *v.shape).reshape(-1)
    return v.movedim(dim, 0).reshape(-1)


def _pack_rows(bits: Tensor) -> Tensor:
    """``(B, L)`` bool -> ``(B, mask_bytes(L))`` uint8, each row packed as the op's mask."""
    rows, length = bits.shape
    padded = bits.new_zeros((rows, mask_bytes(length) * 8), dtype=torch.uint8)
    padded[:, :length] = bits
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=bits.device)
    return (padded.view(rows, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


def _unpack_rows(mask: Tensor, length: int) -> Tensor:
    """Inverse of :func:`_pack_rows`: ``(B, bytes)`` uint8 -> ``(B, length)`` bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return ((mask.unsqueeze(-1) >> shifts) & 1).reshape(mask.shape[0], -1)[:, :length].bool()


def _running_stat(
    t: Optional[Tensor], dim: Optional[int], written: bool, size: int
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(the flat ``(B*C,)`` statistic the op gets, the tensor to copy it back into or None)."""
    if t is None or not written:
        return _vector(t, dim, size), None
    if dim is None:
        raise RuntimeError(
            "bnfused: vmap over a batch norm that updates running statistics needs them batched "
            "like the input (one per member, e.g. torch.func.stack_module_state of the "
            "buffers); use eval mode, track_running_stats=False, or "
            "torch.func.replace_all_batch_norm_modules_"
        )
    moved = t.movedim(dim, 0)
    if moved.is_contiguous():
        return moved.view(-1), None  # the op's in-place update lands in t
    return moved.reshape(-1), moved


def forward_rule(
    info,
    in_dims,
    input,
    weight,
    bias,
    running_mean,
    running_var,
    residual,
    training,
    momentum,
    eps,
    activation,
    activation_param,
):
    """vmap rule of ``bnfused::forward`` (see the module docstring)."""
    size = info.batch_size
    x_dim, w_dim, b_dim, rm_dim, rv_dim, r_dim = in_dims[:6]
    written = bool(training) and running_mean is not None
    rm, rm_back = _running_stat(running_mean, rm_dim, written, size)
    rv, rv_back = _running_stat(running_var, rv_dim, written, size)
    x = _channels(input, x_dim, size)
    y, mean, invstd, mask, mean_lo = torch.ops.bnfused.forward(
        x,
        _vector(weight, w_dim, size),
        _vector(bias, b_dim, size),
        rm,
        rv,
        _channels(residual, r_dim, size),
        training,
        momentum,
        eps,
        activation,
        activation_param,
    )
    for flat, back in ((rm, rm_back), (rv, rv_back)):
        if back is not None:
            back.copy_(flat.view(back.shape))
    if mask.numel():
        bits = _members(reference.unpack_mask(mask, x), size).movedim(1, 0)
        mask, mask_dim = _pack_rows(bits.reshape(size, -1)), 0
    else:
        mask_dim = None
    lo_dim = 0 if mean_lo.numel() else None
    if lo_dim is not None:
        mean_lo = mean_lo.view(size, -1)
    return (
        (_members(y, size), mean.view(size, -1), invstd.view(size, -1), mask, mean_lo),
        (1, 0, 0, mask_dim, lo_dim),
    )


def _combined_mask(
    mask: Tensor, mask_dim: Optional[int], input: Tensor, x_dim: Optional[int], x: Tensor, size: int
) -> Tensor:
    """The op's mask for the combined input ``x`` from a per-member or an unbatched mask."""
    if mask.numel() == 0:
        return mask
    if mask_dim is not None:
        bits = _unpack_rows(mask.movedim(mask_dim, 0), x.numel() // size)
        bits = bits.view(size, *_members(x, size).movedim(1, 0).shape[1:])
        return reference.pack_mask(bits.movedim(0, 1).reshape(x.shape), torch.contiguous_format)
    if x_dim is not None:
        raise RuntimeError(
            "bnfused: vmap of the backward got a batched input with the "
            "activation mask of an unbatched forward"
        )
    bits = reference.unpack_mask(mask, input)  # the forward ran on this very input
    combined = _channels(bits, None, size)
    assert combined is not None
    return reference.pack_mask(combined, torch.contiguous_format)


def backward_rule(
    info,
    in_dims,
    grad_output,
    input,
    weight,
    bias,
    save_mean,
    save_invstd,
    mask,
    residual,
    training,
    eps,
    activation,
    activation_param,
    output_mask,
    save_mean_lo=None,
):
    """vmap rule of ``bnfused::backward`` (see the module docstring)."""
    size = info.batch_size
    dy_dim, x_dim, w_dim, b_dim, m_dim, i_dim, mask_dim, r_dim = in_dims[:8]
    lo_dim = in_dims[13] if len(in_dims) > 13 else None
    x = _channels(input, x_dim, size)
    dx, dw, db, dres = torch.ops.bnfused.backward(
        _channels(grad_output, dy_dim, size),
        x,
        _vector(weight, w_dim, size),
        _vector(bias, b_dim, size),
        _vector(save_mean, m_dim, size),
        _vector(save_invstd, i_dim, size),
        _combined_mask(mask, mask_dim, input, x_dim, x, size),
        _channels(residual, r_dim, size),
        training,
        eps,
        activation,
        activation_param,
        output_mask,
        _vector(save_mean_lo, lo_dim, size),
    )
    outs, dims = [], []
    for t, channel_dim in ((dx, 1), (dw, 0), (db, 0), (dres, 1)):
        if t.numel() == 0:
            outs.append(t)
            dims.append(None)
        else:
            outs.append(_members(t, size) if channel_dim else t.view(size, -1))
            dims.append(channel_dim)
    return tuple(outs), tuple(dims)


torch.library.register_vmap("bnfused::forward", forward_rule)
torch.library.register_vmap("bnfused::backward", backward_rule)
