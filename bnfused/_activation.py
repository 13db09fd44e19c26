"""Activation names and the integer codes the kernels use (bnfused::Activation)."""
from __future__ import annotations

from typing import Optional, Union

IDENTITY, RELU, LEAKY_RELU, SILU = 0, 1, 2, 3

NAMES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "silu": SILU}
_ALIASES = {None: "identity", "none": "identity", "linear": "identity", "swish": "silu"}

DEFAULT_NEGATIVE_SLOPE = 0.01


def canonical_name(activation: Optional[Union[str, "object"]]) -> str:
    """Normalize an activation given by name (or None) to one of :data:`NAMES`."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be a string or None, got {type(activation).__name__}")
    name = _ALIASES.get(activation.lower() if isinstance(activation, str) else activation,
                        activation.lower() if isinstance(activation, str) else activation)
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
