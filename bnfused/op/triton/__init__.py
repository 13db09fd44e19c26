"""Triton implementation of the bnfused op contract: the fallback that runs wherever Triton does.

GPU tensors run compiled Triton kernels; CPU tensors run the same kernels in
Triton's interpreter, only when ``TRITON_INTERPRET=1`` was set before Triton
was first imported (``bnfused.op.backend`` enforces this). Triton is imported
lazily, so ``import bnfused`` works without it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .. import settings

Tensor = torch.Tensor


def availability() -> Tuple[bool, str]:
    """``(available, reason)``: Triton importable, and a GPU or the interpreter to run on."""
    try:
        import triton
        import triton.language
    except Exception as e:  # ImportError, or a broken install failing at import time
        return False, f"triton is not installed or not importable ({type(e).__name__}: {e})"
    version = getattr(triton, "__version__", "?")
    if settings.triton_interpreted():
        return True, f"Triton {version} kernels (TRITON_INTERPRET=1: CPU tensors run interpreted)"
    if not torch.cuda.is_available():
        return False, (
            f"Triton {version} is installed but no GPU is visible; set "
            "TRITON_INTERPRET=1 (before importing triton) to run it on CPU tensors"
        )
    return True, f"Triton {version} kernels"


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
    """``act(batchnorm(input) + residual)``; see :func:`bnfused.op.reference.forward`.

    ``input (N, C, *spatial)`` float32/float64/float16/bfloat16, contiguous or
    channels_last. Returns ``(y, save_mean, save_invstd, mask, save_mean_lo)``:
    ``y`` like ``input``; ``save_mean``/``save_invstd`` ``(C,)`` float32 (float64
    for float64 input); ``mask`` uint8 bit mask or empty; ``save_mean_lo`` the
    batch mean minus ``save_mean`` in training (empty in eval). Running stats
    are updated in place when ``training``.
    """
    from . import _ops

    return _ops.forward(
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
    """``(grad_input, grad_weight, grad_bias, grad_residual)``; see :func:`bnfused.op.reference.backward`.

    Outputs not asked for by ``output_mask`` are empty tensors; ``grad_input``
    and ``grad_residual`` are like ``input``; ``grad_weight``/``grad_bias`` are
    ``(C,)`` in the weight's/bias's dtype (the accumulation dtype when absent).
    """
    from . import _ops

    return _ops.backward(
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
        save_mean_lo,
    )
