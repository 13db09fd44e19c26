"""The forward op written in standard aten ops: traced calls that write no running statistic,
and forward-mode AD.

Under ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` such a call
(eval with running statistics, or batch statistics with none to update) is
traced as ``torch.nn.functional.batch_norm`` plus the residual add and the
activation, so Inductor can fold it into a preceding convolution, exported
graphs carry no custom op and no buffer mutation, and ONNX or any other
consumer of aten graphs reads it. In eval mode these are exactly torch's
numbers; eager calls keep running the fused kernels.

Under forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``)
every call takes this route, running statistics updated by ``F.batch_norm`` as in
a stock model: torch's own ops carry tangents through any nesting of transforms.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import reference
from . import torch_compat as tc
from .contract import LEAKY_RELU, RELU, SILU, acc_dtype, check_activation_code, check_inputs

Tensor = torch.Tensor


def applies(training: bool, running_mean: Optional[Tensor], running_var: Optional[Tensor]) -> bool:
    """Whether a forward call writes no running statistic and is being traced or compiled."""
    writes = training and (running_mean is not None or running_var is not None)
    return not writes and (tc.is_compiling() or tc.is_tracing())


def activate(z: Tensor, activation: int, activation_param: float) -> Tensor:
    """``act(z)`` for an activation code, as the ``torch.nn.functional`` call a model would make."""
    if activation == RELU:
        return F.relu(z)
    if activation == LEAKY_RELU:
        return F.leaky_relu(z, activation_param)
    if activation == SILU:
        return F.silu(z)
    return z


def output(
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
) -> Tensor:
    """``y = act(batch_norm(input) + residual)``.

    Arguments as ``bnfused::forward``; batch statistics when ``training`` or
    without running statistics, else the running ones, which a training call
    updates in place.
    """
    check_inputs(input, running_mean, running_var, weight, bias, training, residual, eps)
    check_activation_code(activation)
    batch_stats = training or running_mean is None
    y = F.batch_norm(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps)
    if residual is not None:
        y = y + residual
    return activate(y, activation, activation_param)


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
    """``bnfused::forward`` in aten ops.

    Same arguments and results as the op; the mask and ``save_mean_lo`` come
    back empty (autograd differentiates the aten ops). :func:`output` is the
    same without the statistics, for callers that only want ``y``.
    """
    y = output(
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
    )
    acc = acc_dtype(input.dtype)
    if training or running_mean is None:
        dims = [0] + list(range(2, input.dim()))
        var, mean = torch.var_mean(input.to(acc), dims, correction=0)
    else:
        mean, var = reference._given_stats(running_mean, running_var, acc)
    empty = input.new_empty((0,), dtype=torch.uint8)
    return y, mean, torch.rsqrt(var + eps), empty, input.new_empty((0,), dtype=acc)
