"""The run-time environment variables of bnfused, read and validated in one place.

| variable | values | effect |
| --- | --- | --- |
| ``BNFUSED_BACKEND`` | ``cuda``, ``triton``, ``cpu``, ``reference`` | force a backend |
| ``BNFUSED_CPU_ISA`` | ``avx512_bf16``, ``avx512``, ``avx2``, ``baseline`` | cap the CPU kernels' instruction set (default: the best the CPU has) |
| ``BNFUSED_CPU_STREAM_BYTES`` | an integer >= 0 | outputs of passes moving more bytes than this are written with streaming stores (default: the last-level cache size) |
| ``BNFUSED_CPU_HUGE_PAGES`` | ``0``, ``1`` | huge-page advice for outputs of 32 MB and more (default 1) |

The compiled CPU kernels read the last three when the extension loads; they are
validated here first, so a typo is an error that lists the valid values instead
of a silently different kernel.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

CPU_ISAS = ("avx512_bf16", "avx512", "avx2", "baseline")


def _choice(name: str, valid: Sequence[str]) -> Optional[str]:
    value = os.environ.get(name) or None
    if value is not None and value not in valid:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(valid)}")
    return value


def cpu_isa() -> Optional[str]:
    """``BNFUSED_CPU_ISA``, or None for the best instruction set the CPU has."""
    return _choice("BNFUSED_CPU_ISA", CPU_ISAS)


def cpu_stream_bytes() -> Optional[int]:
    """``BNFUSED_CPU_STREAM_BYTES``, or None for the last-level cache size."""
    value = os.environ.get("BNFUSED_CPU_STREAM_BYTES") or None
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"BNFUSED_CPU_STREAM_BYTES={value!r} is not an integer >= 0")
    return int(value)


def cpu_huge_pages() -> bool:
    """``BNFUSED_CPU_HUGE_PAGES`` (default on)."""
    return _choice("BNFUSED_CPU_HUGE_PAGES", ("0", "1")) != "0"


def check_cpu_kernel_settings() -> None:
    """Raise ``ValueError`` naming the valid values for a bad CPU kernel setting."""
    cpu_isa(), cpu_stream_bytes(), cpu_huge_pages()
