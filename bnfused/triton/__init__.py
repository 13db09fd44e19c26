"""Triton implementation of the bnfused op contract."""
from __future__ import annotations


def availability() -> tuple:
    """(available, reason)."""
    return False, "Triton kernels are not part of this build yet"


def forward(*args, **kwargs):
    raise RuntimeError("bnfused: the Triton backend is not available: " + availability()[1])


def backward(*args, **kwargs):
    raise RuntimeError("bnfused: the Triton backend is not available: " + availability()[1])
