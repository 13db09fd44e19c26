"""The run-time environment variables of bnfused, read and validated in one place.

| variable | values | effect |
| --- | --- | --- |
| ``BNFUSED_BACKEND`` | a name of :data:`bnfused.op.backend.NAMES` | force a backend (checked by :mod:`bnfused.op.backend`) |
| ``BNFUSED_CPU_ISA`` | ``avx512_bf16``, ``avx512``, ``avx2``, ``baseline`` | cap the CPU kernels' instruction set (default: the best the CPU has) |
| ``BNFUSED_CPU_STREAM_BYTES`` | an integer >= 0 | outputs of passes moving more bytes than this are written with streaming stores (default: the last-level cache size) |
| ``BNFUSED_CPU_HUGE_PAGES`` | ``0``, ``1`` | huge-page advice for outputs of 32 MB and more (default 1) |
| ``BNFUSED_CUDA_PATH`` | ``auto``, ``two-pass``, ``persistent`` | training path of the CUDA kernels (``cuda`` and ``cuda-emulated``): ``auto`` (default) takes the persistent kernel for tensors that fit on chip, from 256 KiB; ``persistent`` wherever it fits; ``two-pass`` never |
| ``BNFUSED_EMULATED_SMS`` | an integer in [1, 2^20] | SM count of the ``cuda-emulated`` backend's device (default 132) |
| ``BNFUSED_EMULATED_BLOCK_ORDER`` | ``forward``, ``reversed``, ``shuffled`` | order its blocks run in (default forward) |
| ``BNFUSED_EMULATED_SEED`` | an integer >= 0 | seed of the shuffled order (default 0) |
| ``BNFUSED_EMULATED_REPLAYS`` | an integer in [0, 100] | replays of each op's launches on the same buffers, as a CUDA graph (default 0) |

The compiled kernels read no environment variable: the ``BNFUSED_CPU_*`` ones are
validated here (a typo is an error that lists the valid values, not a silently
different kernel) and passed to them when the extension is loaded
(:func:`bnfused.op.backend.compiled_extension`), ``BNFUSED_CUDA_PATH`` to both
CUDA builds, the ``BNFUSED_EMULATED_*`` ones when the emulated extension is loaded
(:mod:`bnfused.op.cuda_emulated`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

CPU_ISAS = ("avx512_bf16", "avx512", "avx2", "baseline")


def forced_backend(valid: Sequence[str]) -> Optional[str]:
    """``BNFUSED_BACKEND``: the backend to force, or None for the automatic choice."""
    return _choice("BNFUSED_BACKEND", valid)


def triton_interpreted() -> bool:
    """Triton's own ``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


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
    cpu_kernel_settings()


def cpu_kernel_settings() -> tuple:
    """``(isa_cap, stream_bytes, huge_pages)`` as the compiled kernels take them.

    ``isa_cap``: 0 baseline, 1 avx2, 2 avx512, 3 avx512_bf16 (3 when unset: the
    best the CPU has); ``stream_bytes``: -1 when unset (the last-level cache size).
    """
    isa = cpu_isa()
    stream = cpu_stream_bytes()
    cap = 3 if isa is None else len(CPU_ISAS) - 1 - CPU_ISAS.index(isa)
    return cap, -1 if stream is None else stream, cpu_huge_pages()


CUDA_PATHS = ("auto", "two-pass", "persistent")  # codes 0, 1, 2 of bnfused::CudaPath


def cuda_path() -> str:
    """``BNFUSED_CUDA_PATH`` (default ``auto``)."""
    return _choice("BNFUSED_CUDA_PATH", CUDA_PATHS) or "auto"


BLOCK_ORDERS = ("forward", "reversed", "shuffled")


def emulated_device() -> Dict[str, Any]:
    """The ``BNFUSED_EMULATED_*`` settings of the CUDA emulator that are set, validated
    (keyword arguments of :func:`bnfused.op.cuda_emulated.configure`)."""
    out: Dict[str, Any] = {}
    sms = os.environ.get("BNFUSED_EMULATED_SMS")
    if sms:
        if not sms.isdigit() or not 1 <= int(sms) <= 1 << 20:
            raise ValueError(f"BNFUSED_EMULATED_SMS={sms!r} must be an integer in [1, 2^20]")
        out["sm_count"] = int(sms)
    order = _choice("BNFUSED_EMULATED_BLOCK_ORDER", BLOCK_ORDERS)
    if order is not None:
        out["block_order"] = order
    seed = os.environ.get("BNFUSED_EMULATED_SEED")
    if seed:
        if not seed.isdigit():
            raise ValueError(f"BNFUSED_EMULATED_SEED={seed!r} must be an integer >= 0")
        out["seed"] = int(seed)
    replays = os.environ.get("BNFUSED_EMULATED_REPLAYS")
    if replays:
        if not replays.isdigit() or int(replays) > 100:
            raise ValueError(f"BNFUSED_EMULATED_REPLAYS={replays!r} must be an integer in [0, 100]")
        out["replays"] = int(replays)
    return out
