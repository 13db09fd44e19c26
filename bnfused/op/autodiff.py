"""The gradient of ``bnfused::forward`` as a differentiable function, for higher-order AD.

When autograd differentiates a gradient again (``create_graph=True``: double
backward, ``torch.func.vjp``, ``jacrev``, ``hessian``), the backward of the
fused op runs :func:`backward`: the backward op's closed form in differentiable
torch ops, with the batch statistics recomputed from the input, so the
derivatives taken through it (through the mean and variance included) are exact.

It is a function of the saved tensors, not ``torch.autograd.grad`` over a
recomputed forward: a saved tensor can be a ``torch.func`` wrapper whose
transform has exited (``vjp``'s function called afterwards); operators unwrap
such a tensor and autograd no longer records it, so a nested ``autograd.grad``
finds no path from the output to it and returns no gradient at all.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from . import reference
from .contract import acc_dtype

Tensor = torch.Tensor


def statistics(
    x: Tensor, mean: Tensor, invstd: Tensor, training: bool, eps: float
) -> Tuple[Tensor, Tensor]:
    """(mean, invstd) the forward normalized with: recomputed from ``x`` (so differentiable
    in it) with batch statistics, else the saved running ones."""
    if not training:
        return mean, invstd
    m, var = reference.batch_stats(x, acc_dtype(x.dtype))
    return m, torch.rsqrt(var + eps)


def backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Tensor,
    invstd: Tensor,
    mask: Tensor,
    residual: Optional[Tensor],
    training: bool,
    eps: float,
    activation: int,
    activation_param: float,
    output_mask: Sequence[bool],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``bnfused::backward``'s results as a differentiable function of every tensor argument.

    Arguments as the backward op (``mean``/``invstd``: the forward's saved ones,
    read in eval only); grads not asked for by ``output_mask`` come back empty.
    """
    m, inv = statistics(x, mean, invstd, training, eps)
    return reference.backward(
        dy,
        x,
        weight,
        bias,
        m,
        inv,
        mask,
        residual,
        training,
        eps,
        activation,
        activation_param,
        output_mask,
        None,
        upcast=False,
    )
