"""Functional interface: ``torch.nn.functional.batch_norm`` plus fused activation and residual."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..op import decompose, ops
from ..op import torch_compat as tc
from ..op.contract import DEFAULT_NEGATIVE_SLOPE, code, memory_format

Tensor = torch.Tensor


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: Optional[str] = None,
    residual: Optional[Tensor] = None,
    activation_param: float = DEFAULT_NEGATIVE_SLOPE,
) -> Tensor:
    """``act(batch_norm(input) + residual)`` in one fused op, forward and backward.

    Same positional order and semantics as ``torch.nn.functional.batch_norm``.

    Args:
        input: ``(N, C, *spatial)``, float32/float64/float16/bfloat16, contiguous
            or channels_last (other strides are made contiguous once).
        running_mean, running_var: ``(C,)`` or None; updated in place when
            ``training`` (``running_var`` with the unbiased batch variance).
        weight, bias: ``(C,)`` or None. Parameters and running stats have the
            input's dtype, or float32 for float16/bfloat16 input.
        training: normalize with batch statistics (and update the running ones).
        momentum: weight of the batch statistics in the running-stat update.
        eps: added to the variance.
        activation: ``None``/"identity", "relu", "leaky_relu" or "silu".
        residual: tensor like ``input`` added after the affine, before the activation.
        activation_param: negative slope of "leaky_relu".

    Returns:
        A tensor like ``input`` (same shape, dtype and memory format).
    """
    if decompose.applies(training, running_mean, running_var):
        # Traced or compiled and writing no running statistic: standard aten ops.
        return decompose.output(
            input,
            weight,
            bias,
            running_mean,
            running_var,
            residual,
            bool(training),
            float(momentum),
            float(eps),
            code(activation),
            float(activation_param),
        )
    return batch_norm_with_stats(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        activation,
        residual,
        activation_param,
    )[0]


def batch_norm_with_stats(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: Optional[str] = None,
    residual: Optional[Tensor] = None,
    activation_param: float = DEFAULT_NEGATIVE_SLOPE,
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`batch_norm` that also returns the statistics it normalized with.

    Returns ``(y, mean, invstd)``: ``mean`` and ``invstd = 1/sqrt(var + eps)`` are
    ``(C,)`` in the accumulation dtype (float64 for float64 input, else float32).
    """
    # The op checks every argument at its boundary (torch's exception types); only what
    # must hold before the layout is settled is checked here.
    act = code(activation)
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    x = input
    # Under torch.func transforms the layout is the batching rule's business (and
    # vmap cannot answer channels_last queries).
    if not tc.functorch_transforms_active():
        x = input.contiguous(memory_format=memory_format(input))
        if isinstance(residual, Tensor) and residual.shape == x.shape:
            residual = residual.contiguous(memory_format=memory_format(x))
    y, mean, invstd, _, _ = ops.forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        bool(training),
        float(momentum),
        float(eps),
        act,
        float(activation_param),
    )
    return y, mean, invstd
