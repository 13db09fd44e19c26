"""Functional interface: ``torch.nn.functional.batch_norm`` plus fused activation and residual."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import ops  # noqa: F401  (registers torch.ops.bnfused)
from ._activation import DEFAULT_NEGATIVE_SLOPE, code
from .reference import memory_format

Tensor = torch.Tensor

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_vector(name: str, t: Optional[Tensor], channels: int, device: torch.device,
                  dtype: torch.dtype) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.numel() != channels:
        raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    if name.startswith("running") and t.dim() != 1:
        raise RuntimeError(f"{name} must be 1-D of size ({channels},), got size {tuple(t.shape)}")
    if t.device != device:
        raise RuntimeError(f"{name} is on {t.device} but input is on {device}")
    if t.dtype != dtype and not (t.dtype == torch.float32 and dtype in
                                 (torch.float16, torch.bfloat16)):
        raise RuntimeError(f"mixed dtype: {name} is {t.dtype} but input is {dtype}; "
                           "parameters must match the input dtype, or be float32 for "
                           "float16/bfloat16 input")


def check_inputs(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                 weight: Optional[Tensor], bias: Optional[Tensor], training: bool,
                 residual: Optional[Tensor], eps: Optional[float] = None) -> None:
    """Raise the errors torch raises for bad batch-norm arguments, with sizes named.

    The exception types are torch's (``torch.nn.functional.batch_norm``):
    fewer than 2 dims is an ``IndexError`` in training and a ``RuntimeError``
    in eval, one running statistic without the other a ``ValueError`` in
    training, ``eps <= 0`` in training a ``ValueError``. ``eps`` is checked only
    when given.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if not training and running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    if not training and running_var is None:
        raise RuntimeError("running_var must be defined in evaluation mode")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither "
                         f"be None (got running_mean={'None' if running_mean is None else 'a tensor'}"
                         f", running_var={'None' if running_var is None else 'a tensor'})")
    if input.dim() < 2:
        error = IndexError if training else RuntimeError
        raise error(f"expected at least 2D input (N, C, ...), got {input.dim()}D input "
                    f"of size {tuple(input.shape)}")
    if input.dtype not in _FLOATING:
        raise NotImplementedError(f'"batch_norm" not implemented for {input.dtype}: bnfused '
                                  "supports float32, float64, float16 and bfloat16")
    if training and eps is not None and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if training:
        size = input.shape[0]
        for s in input.shape[2:]:
            size *= s
        if size == 1:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {input.shape}")
    channels, device, dtype = input.shape[1], input.device, input.dtype
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_vector(name, t, channels, device, dtype)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"residual must be a Tensor or None, got {type(residual).__name__}")
        if residual.shape != input.shape:
            raise RuntimeError(f"residual of size {tuple(residual.shape)} does not match input "
                               f"of size {tuple(input.shape)}")
        if residual.dtype != input.dtype:
            raise RuntimeError(f"residual dtype {residual.dtype} does not match input dtype "
                               f"{input.dtype}")
        if residual.device != device:
            raise RuntimeError(f"residual is on {residual.device} but input is on {device}")


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
               activation: Optional[str] = None, residual: Optional[Tensor] = None,
               activation_param: float = DEFAULT_NEGATIVE_SLOPE) -> Tensor:
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
    return batch_norm_with_stats(input, running_mean, running_var, weight, bias, training,
                                 momentum, eps, activation, residual, activation_param)[0]


def batch_norm_with_stats(input: Tensor, running_mean: Optional[Tensor],
                          running_var: Optional[Tensor], weight: Optional[Tensor] = None,
                          bias: Optional[Tensor] = None, training: bool = False,
                          momentum: float = 0.1, eps: float = 1e-5,
                          activation: Optional[str] = None, residual: Optional[Tensor] = None,
                          activation_param: float = DEFAULT_NEGATIVE_SLOPE
                          ) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`batch_norm` that also returns the statistics it normalized with.

    Returns ``(y, mean, invstd)``: ``mean`` and ``invstd = 1/sqrt(var + eps)`` are
    ``(C,)`` in the accumulation dtype (float64 for float64 input, else float32).
    """
    check_inputs(input, running_mean, running_var, weight, bias, training, residual, eps)
    act = code(activation)
    x = input.contiguous(memory_format=memory_format(input))
    if residual is not None:
        residual = residual.contiguous(memory_format=memory_format(x))
    y, mean, invstd, _ = ops.forward(
        x, weight, bias, running_mean, running_var, residual, bool(training), float(momentum),
        float(eps), act, float(activation_param))
    return y, mean, invstd
