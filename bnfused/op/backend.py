"""Which implementation of the op contract runs: availability, choice, overrides.

Order of preference: ``cuda`` (compiled kernels) -> ``triton`` -> ``reference``
for CUDA tensors; ``cpu`` (compiled kernels) -> ``reference`` for CPU tensors.
``BNFUSED_BACKEND`` (or :func:`use_backend`) forces one for the tensors of the
devices it serves (``cuda``: CUDA tensors; ``cpu``: CPU tensors; ``triton``:
CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``; ``cuda-emulated``:
CPU tensors, through the CUDA kernels run by the CPU emulator; ``reference``: all);
tensors elsewhere keep the automatic choice, so a whole program can run with one
backend forced. Forcing a backend that is not available raises an error that
says why.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from . import cuda_emulated, settings, torch_compat

NAMES = ("cuda", "triton", "cpu", "cuda-emulated", "reference")
_override: Optional[str] = None


@functools.cache
def _compiled() -> tuple:
    """(module or None, reason it is missing)."""
    cpu_settings = settings.cpu_kernel_settings()  # first: a bad value is an error either way
    path = settings.cuda_path()
    try:
        from .. import _C  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"compiled extension not built or not loadable ({e})"
    _C.configure_cpu(*cpu_settings)
    _C.configure_cuda(settings.CUDA_PATHS.index(path))
    return _C, ""


def compiled_extension():
    """``bnfused._C`` with the settings passed to its CPU kernels, or None when not built.

    Use this, not ``import bnfused._C``, to call ``torch.ops.bnfused_C`` directly.
    """
    return _compiled()[0]


def _has_kernel(dispatch_key: str) -> bool:
    return torch_compat.has_kernel_for_dispatch_key("bnfused_C::forward", dispatch_key)


@functools.cache
def _availability() -> Dict[str, tuple]:
    mod, why = _compiled()
    out = {"reference": (True, "plain PyTorch, any device")}
    if mod is None:
        out["cpu"] = (False, why)
        out["cuda"] = (False, why)
    else:
        out["cpu"] = (
            (True, f"compiled C++ kernels ({mod.cpu_kernel_isa()})")
            if _has_kernel("CPU")
            else (False, "extension built without CPU kernels")
        )
        if not _has_kernel("CUDA"):
            out["cuda"] = (False, mod.build_info())
        elif not torch.cuda.is_available():
            out["cuda"] = (False, "CUDA kernels built, but no CUDA device is visible")
        else:
            runs, why_not = _cuda_kernels_run_on(torch.cuda.current_device())
            out["cuda"] = (True, mod.build_info()) if runs else (False, why_not)
    from . import triton as triton_backend

    out["triton"] = triton_backend.availability()
    out["cuda-emulated"] = cuda_emulated.availability()
    return {name: out[name] for name in NAMES}


def backends() -> Dict[str, Dict[str, object]]:
    """Every backend with ``available`` (bool) and ``reason`` (why, or why not)."""
    return {
        name: {"available": ok, "reason": reason} for name, (ok, reason) in _availability().items()
    }


def forced() -> Optional[str]:
    """The backend forced by :func:`use_backend` or ``BNFUSED_BACKEND``, if any."""
    return _override or settings.forced_backend(NAMES)


def _triton_interpreted() -> bool:
    return settings.triton_interpreted()


def _serves(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())
    if name == "cuda-emulated":
        return device.type == "cpu"
    return device.type == name


def _has_kernel_safe(key: str) -> bool:
    return _compiled()[0] is not None and _has_kernel(key)


def parse_arch_list(text: str) -> List[Tuple[int, int, bool]]:
    """``"8.0;9.0+PTX"`` -> ``[(8, 0, False), (9, 0, True)]`` (major, minor, PTX embedded)."""
    out = []
    for item in re.split(r"[;\s]+", text.strip()):
        m = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", item)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3) is not None))
    return out


def archs_run_on(archs: List[Tuple[int, int, bool]], capability: Tuple[int, int]) -> bool:
    """Whether kernels built for ``archs`` run on a GPU of ``capability``.

    A cubin for sm_XY runs on the same major version from minor Y up; embedded PTX
    is compiled by the driver for any GPU from its version up.
    """
    return any(
        (major == capability[0] and minor <= capability[1])
        or (ptx and (major, minor) <= capability)
        for major, minor, ptx in archs
    )


def compiled_cuda_archs() -> Optional[List[Tuple[int, int, bool]]]:
    """The architectures the CUDA kernels were built for, from the build's record."""
    mod = _compiled()[0]
    found = re.search(r"TORCH_CUDA_ARCH_LIST=(\S+)", mod.build_info()) if mod is not None else None
    return parse_arch_list(found.group(1)) if found else None


@functools.cache
def _cuda_kernels_run_on(index: int) -> Tuple[bool, str]:
    """(whether the compiled CUDA kernels run on GPU ``index``, why not)."""
    archs = compiled_cuda_archs()
    capability = torch.cuda.get_device_capability(index)
    if archs is None or archs_run_on(archs, capability):
        return True, ""
    built = ", ".join(f"sm_{a}{b}{'+PTX' if p else ''}" for a, b, p in archs)
    return False, (
        f"CUDA kernels built for {built}, but cuda:{index} is sm_{capability[0]}"
        f"{capability[1]}: rebuild with TORCH_CUDA_ARCH_LIST="
        f'"{capability[0]}.{capability[1]}" (see README, Build)'
    )


def _check_available(name: str) -> None:
    ok, reason = _availability()[name]
    if name == "cuda" and not ok and _has_kernel_safe("CUDA") and torch.cuda.is_available():
        ok, reason = _cuda_kernels_run_on(torch.cuda.current_device())
    if not ok:
        raise RuntimeError(f"bnfused backend {name!r} is not available: {reason}")


def choose(device: torch.device) -> str:
    """The backend that runs an op on ``device``."""
    name = forced()
    if name is not None and _serves(name, device):
        _check_available(name)
        return name
    kind = device.type
    if kind == "cpu":  # first: the common case
        return "cpu" if _availability()["cpu"][0] else "reference"
    if kind == "cuda":
        if (
            _has_kernel_safe("CUDA")
            and _cuda_kernels_run_on(
                device.index if device.index is not None else torch.cuda.current_device()
            )[0]
        ):
            return "cuda"
        return "triton" if _availability()["triton"][0] else "reference"
    return "reference"


@contextlib.contextmanager
def use_cuda_path(path: str) -> Iterator[None]:
    """Force the CUDA kernels' training path inside a ``with`` block: ``"persistent"``
    (one cooperative kernel that reads x once, wherever the tensor fits on chip),
    ``"two-pass"`` or ``"auto"``; for both the ``cuda`` and ``cuda-emulated`` backends.
    ``BNFUSED_CUDA_PATH`` sets it for a whole program. Not thread-safe: the path is
    process-wide."""
    if path not in settings.CUDA_PATHS:
        raise ValueError(f"unknown CUDA path {path!r}; expected one of {settings.CUDA_PATHS}")
    previous = current_cuda_path()
    _set_cuda_path(path)
    try:
        yield
    finally:
        _set_cuda_path(previous)


_cuda_path_now: Optional[str] = None


def current_cuda_path() -> str:
    """The CUDA kernels' training path now in force (see :func:`use_cuda_path`)."""
    return _cuda_path_now or settings.cuda_path()


def _set_cuda_path(path: str) -> None:
    global _cuda_path_now
    compiled, emulated = compiled_extension(), cuda_emulated.extension()
    if compiled is not None:
        compiled.configure_cuda(settings.CUDA_PATHS.index(path))
    if emulated is not None:
        emulated.configure(cuda_path=path)
    _cuda_path_now = path


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force a backend inside a ``with`` block (``None`` restores automatic choice)."""
    global _override
    if name is not None and name not in NAMES:
        raise ValueError(f"unknown bnfused backend {name!r}; expected one of {NAMES}")
    previous, _override = _override, name
    try:
        yield
    finally:
        _override = previous
