"""The op contract, written once: schemas, activation codes, mask layout, dtypes, argument checks.

Every backend (compiled CPU/CUDA kernels, Triton, the reference) implements the
two ops whose schemas are below and trusts what this module checks at the op
boundary. The C++ registration (``csrc/register.cpp``) declares the same
schemas; a test checks that they match. Activation codes are
``bnfused::Activation`` in ``csrc/bnfused.h``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

Tensor = torch.Tensor

IDENTITY, RELU, LEAKY_RELU, SILU = 0, 1, 2, 3

NAMES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "silu": SILU}
_ALIASES = {None: "identity", "none": "identity", "linear": "identity", "swish": "silu"}

DEFAULT_NEGATIVE_SLOPE = 0.01


def canonical_name(activation: Optional[Union[str, object]]) -> str:
    """Normalize an activation given by name (or None) to one of :data:`NAMES`."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be a string or None, got {type(activation).__name__}")
    name = _ALIASES.get(
        activation.lower() if isinstance(activation, str) else activation,
        activation.lower() if isinstance(activation, str) else activation,
    )
    if name not in NAMES:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(NAMES)}")
    return name


def code(activation: Optional[str]) -> int:
    """Integer code of an activation name (see :data:`NAMES`)."""
    return NAMES[canonical_name(activation)]


def uses_mask(activation: int, has_residual: bool) -> bool:
    """Whether the forward stores the pre-activation sign as a bit mask.

    Only relu-like activations after a residual add need it: without a
    residual the backward recomputes the sign from the saved input for free.
    """
    return has_residual and activation in (RELU, LEAKY_RELU)


# The forward returns (y, save_mean, save_invstd, mask, save_mean_lo). save_mean_lo is
# (C,) in the accumulation dtype after a training forward: the batch mean minus
# save_mean (the saved mean's rounding error), so that the backward of fp32 data whose
# mean is 10^4 standard deviations or more normalizes with the mean the forward used;
# empty after an eval forward. The backward takes it last, optional (None or empty:
# zero), and uses it only with batch statistics.
FORWARD_SCHEMA = (
    "forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
    "Tensor(b!)? running_var, Tensor? residual, bool training, float momentum, float eps, "
    "int activation, float activation_param) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
    "Tensor save_mean, Tensor save_invstd, Tensor mask, Tensor? residual, bool training, "
    "float eps, int activation, float activation_param, bool[4] output_mask, "
    "Tensor? save_mean_lo=None) -> (Tensor, Tensor, Tensor, Tensor)"
)


def running_update(running: Tensor, batch: Tensor, momentum: Union[float, Tensor]) -> Tensor:
    """One step of a running statistic, as torch: ``(1 - momentum) * running + momentum * batch``.

    Computed in ``batch``'s dtype (the caller casts back). ``momentum`` is a float or a
    0-d tensor (``momentum=None``'s ``1 / num_batches_tracked``, kept on the device).
    The C++ kernels' rule is ``contract::running_update`` in ``csrc/contract_math.h``.
    """
    return running.to(batch.dtype) * (1 - momentum) + batch * momentum


def unbiased_variance(m2: Tensor, n: Union[int, float, Tensor]) -> Tensor:
    """The unbiased variance ``m2 / (n - 1)`` from the centred sum of squares, which
    ``running_var`` tracks (NaN for a single value, as torch)."""
    return m2 / (n - 1) if not isinstance(n, (int, float)) or n > 1 else m2 * float("nan")


def mean_lo_length(channels: int, training: bool) -> int:
    """Length of the forward's ``save_mean_lo``: ``C`` after a training forward, else 0."""
    return channels if training else 0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for an input dtype: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout the op contract sees: contiguous or channels_last(_3d)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def canonical(x: Tensor) -> Tensor:
    """``x`` if it is contiguous or channels_last, else a contiguous copy (made once)."""
    return x.contiguous(memory_format=memory_format(x))


def mask_bytes(numel: int) -> int:
    """Bytes of the activation bit mask: one bit per element, whole 32-bit words."""
    return (numel + 31) // 32 * 4


def check_activation_code(activation: int) -> None:
    """The op boundary's check of the activation code, the same error on every backend."""
    if activation not in NAMES.values():
        known = ", ".join(f"{c} {n}" for n, c in sorted(NAMES.items(), key=lambda i: i[1]))
        raise RuntimeError(f"bnfused: unknown activation code {activation}; expected {known}")


_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_vector(
    name: str, t: Optional[Tensor], channels: int, device: torch.device, dtype: torch.dtype
) -> None:
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
    if t.dtype != dtype and not (
        t.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16)
    ):
        raise RuntimeError(
            f"mixed dtype: {name} is {t.dtype} but input is {dtype}; "
            "parameters must match the input dtype, or be float32 for "
            "float16/bfloat16 input"
        )


def check_inputs(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    residual: Optional[Tensor],
    eps: Optional[float] = None,
) -> None:
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
        raise ValueError(
            "running_mean and running_var must either both be None or neither "
            f"be None (got running_mean={'None' if running_mean is None else 'a tensor'}"
            f", running_var={'None' if running_var is None else 'a tensor'})"
        )
    if input.dim() < 2:
        error = IndexError if training else RuntimeError
        raise error(
            f"expected at least 2D input (N, C, ...), got {input.dim()}D input "
            f"of size {tuple(input.shape)}"
        )
    if input.dtype not in _FLOATING:
        raise NotImplementedError(
            f'"batch_norm" not implemented for {input.dtype}: bnfused '
            "supports float32, float64, float16 and bfloat16"
        )
    if training and eps is not None and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if training:
        size = input.shape[0]
        for s in input.shape[2:]:
            size *= s
        if size == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {input.shape}"
            )
    _check_tensors_like_input(input, running_mean, running_var, weight, bias, residual)


def _check_tensors_like_input(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
) -> None:
    channels, device, dtype = input.shape[1], input.device, input.dtype
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_vector(name, t, channels, device, dtype)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"residual must be a Tensor or None, got {type(residual).__name__}")
        if residual.shape != input.shape:
            raise RuntimeError(
                f"residual of size {tuple(residual.shape)} does not match input "
                f"of size {tuple(input.shape)}"
            )
        if residual.dtype != input.dtype:
            raise RuntimeError(
                f"residual dtype {residual.dtype} does not match input dtype {input.dtype}"
            )
        if residual.device != device:
            raise RuntimeError(f"residual is on {residual.device} but input is on {device}")


def check_backward_inputs(
    grad_output: Tensor,
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    save_mean: Tensor,
    save_invstd: Tensor,
    mask: Tensor,
    residual: Optional[Tensor],
    activation: int,
    output_mask,
    save_mean_lo: Optional[Tensor],
) -> None:
    """The backward op's boundary: what a direct ``torch.ops.bnfused.backward`` call must get.

    ``weight``, ``bias`` and ``residual`` as in :func:`check_inputs`;
    ``grad_output`` like ``input``; the saved statistics ``(C,)`` in the
    accumulation dtype; the mask empty or of :func:`mask_bytes` bytes; four
    output flags.
    """
    check_activation_code(activation)
    if not isinstance(grad_output, Tensor) or not isinstance(input, Tensor):
        raise TypeError("grad_output and input must be Tensors")
    if input.dim() < 2:
        raise RuntimeError(
            f"expected at least 2D input (N, C, ...), got {input.dim()}D input "
            f"of size {tuple(input.shape)}"
        )
    if input.dtype not in _FLOATING:
        raise NotImplementedError(f'"batch_norm_backward" not implemented for {input.dtype}')
    if grad_output.shape != input.shape:
        raise RuntimeError(
            f"grad_output of size {tuple(grad_output.shape)} does not match "
            f"input of size {tuple(input.shape)}"
        )
    if grad_output.dtype != input.dtype or grad_output.device != input.device:
        raise RuntimeError(
            f"grad_output is {grad_output.dtype} on {grad_output.device} but "
            f"input is {input.dtype} on {input.device}"
        )
    _check_tensors_like_input(input, None, None, weight, bias, residual)
    channels, acc = input.shape[1], acc_dtype(input.dtype)
    for name, t in (
        ("save_mean", save_mean),
        ("save_invstd", save_invstd),
        ("save_mean_lo", save_mean_lo),
    ):
        if t is None or (name == "save_mean_lo" and t.numel() == 0):
            continue
        if t.shape != (channels,) or t.dtype != acc or t.device != input.device:
            raise RuntimeError(
                f"{name} must be ({channels},) {acc} on {input.device}, got "
                f"{tuple(t.shape)} {t.dtype} on {t.device}"
            )
    if mask.dtype != torch.uint8 or mask.numel() not in (0, mask_bytes(input.numel())):
        raise RuntimeError(
            f"mask must be empty or {mask_bytes(input.numel())} uint8 bytes "
            f"(one bit per element), got {mask.numel()} {mask.dtype}"
        )
    if len(output_mask) != 4:
        raise RuntimeError(
            f"output_mask must have 4 flags (dx, dweight, dbias, dresidual), got {len(output_mask)}"
        )
