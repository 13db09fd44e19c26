"""The ``cuda-emulated`` backend: the CUDA kernels of ``csrc/cuda`` run on CPU tensors.

``bnfused._C_emulated`` is built from the same kernel sources as the CUDA
backend, compiled by the host C++ compiler against ``csrc/emulator``,
which runs every block's threads as cooperative fibers (see docs/cuda.md). It
is a test backend, like ``triton`` under ``TRITON_INTERPRET=1``: slow, never
chosen automatically, forced with ``BNFUSED_BACKEND=cuda-emulated`` or
``bnfused.use_backend("cuda-emulated")``.

The emulated device starts from ``BNFUSED_EMULATED_SMS``,
``BNFUSED_EMULATED_BLOCK_ORDER`` and ``BNFUSED_EMULATED_SEED`` (see
:mod:`bnfused.op.settings`); :func:`configure` changes it at run time.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import torch

from . import contract, settings

NAME = "cuda-emulated"
_library = None  # keeps the bnfused_emu schema registered


@functools.cache
def _loaded() -> Tuple[Optional[Any], str]:
    """(bnfused._C_emulated or None, why it is missing)."""
    wanted = settings.emulated_device()  # first: a bad value is an error either way
    wanted["cuda_path"] = settings.cuda_path()
    try:
        from .. import _C_emulated  # type: ignore[attr-defined]  # registers bnfused_emu
    except ImportError as e:
        return None, (
            "emulated extension not built (test tooling: BNFUSED_EMULATED=1 python "
            f"setup.py build_ext --inplace, or make build) or not loadable ({e})"
        )
    global _library
    _library = torch.library.Library("bnfused_emu", "DEF")
    _library.define(contract.FORWARD_SCHEMA)
    _library.define(contract.BACKWARD_SCHEMA)
    _C_emulated.configure(**wanted)
    return _C_emulated, ""


def extension():
    """``bnfused._C_emulated`` (its ops registered as ``torch.ops.bnfused_emu``), or None."""
    return _loaded()[0]


def availability() -> Tuple[bool, str]:
    """(available, reason) for :func:`bnfused.backends`."""
    mod, why = _loaded()
    if mod is None:
        return False, why
    return True, "csrc/cuda kernels run by the CPU emulator on CPU tensors (a test backend)"


def _require():
    mod, why = _loaded()
    if mod is None:
        raise RuntimeError(f"bnfused backend {NAME!r} is not available: {why}")
    return mod


def forward(*args):
    """``bnfused_emu::forward``: the op contract's forward by the emulated CUDA kernels."""
    _require()
    return torch.ops.bnfused_emu.forward(*args)


def backward(*args):
    """``bnfused_emu::backward``: the op contract's backward by the emulated CUDA kernels."""
    _require()
    return torch.ops.bnfused_emu.backward(*args)


def configure(**settings) -> Dict[str, Any]:
    """Set the emulated device: ``sm_count``, ``block_order`` ('forward', 'reversed',
    'shuffled'), ``seed``, ``count_traffic``, ``blocks_per_sm`` (what its occupancy API
    reports, the limit of a cooperative launch), ``cuda_path`` ('auto', 'two-pass',
    'persistent'; prefer :func:`bnfused.op.backend.use_cuda_path`); returns the previous
    settings."""
    return _require().configure(**settings)


def traffic():
    """Per launch since the last call (with ``count_traffic=True``): kernel, grid, block,
    global load/store requests, bytes and 32-byte sectors, the busiest block's bytes."""
    return _require().traffic()
