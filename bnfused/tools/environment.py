"""The environment report for bug reports: ``python -m bnfused``.

:func:`environment_report` gathers versions, backend availability, the CPU
instruction set of the compiled kernels, the CUDA architectures compiled into
the extension, the CPU, the visible CUDA device, the git commit of a source
checkout and the environment variables that steer bnfused. Every item is
gathered on its own: a missing optional piece (Triton, the compiled extension,
``cuobjdump``, a GPU, git) is reported, never raised. The benchmarks' report
headers take their fields from here too (:func:`cpu_name`, :func:`git_commit`,
:func:`triton_version`).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from typing import Callable, List, Optional, Tuple

ENV_PREFIXES = ("BNFUSED_",)
ENV_NAMES = ("TRITON_INTERPRET", "TORCH_CUDA_ARCH_LIST")


def _safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as e:  # the report must never fail because one item does
        return f"unknown ({type(e).__name__}: {e})"


PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_ROOT = os.path.dirname(PACKAGE_DIR)  # the checkout, when bnfused runs from one


def _bnfused_version() -> str:
    from .._version import __version__

    return f"{__version__} ({PACKAGE_DIR})"


def _torch_version() -> str:
    import torch

    return torch.__version__


def triton_version() -> str:
    """Triton's version, "not installed", or "installed, version unknown"."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("triton")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    if importlib.util.find_spec("triton") is None:
        return "not installed"
    import triton

    return getattr(triton, "__version__", "installed, version unknown")


def _torch_cuda() -> str:
    import torch

    return torch.version.cuda or "none (CPU-only torch build)"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu() -> str:
    return f"{cpu_name()}, {os.cpu_count()} logical cores"


def git_commit(root: str = SOURCE_ROOT) -> str:
    """Short commit hash of the git checkout whose top is ``root``, "+dirty" when tracked
    files differ from it.

    Where ``root`` is not the top of a checkout (an installed wheel, whose site-packages
    may sit inside some other repository; a tree copied without ``.git``) it is
    ``$BNFUSED_COMMIT`` when set, else "unknown"."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    fallback = os.environ.get("BNFUSED_COMMIT", "unknown")
    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or os.path.realpath(top) != os.path.realpath(root):
            return fallback
        commit = git("rev-parse", "--short=12", "HEAD")
        if not commit:
            return fallback
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


def _python_version() -> str:
    return f"{platform.python_version()} ({sys.executable})"


def _torch_compiler() -> str:
    """The C++ compiler torch was built with, from its build configuration."""
    import torch

    config = torch.__config__.show()
    for line in config.splitlines():
        m = re.match(r"\s*-\s*((?:GCC|Clang|clang|MSVC|Apple clang)\b.*)$", line)
        if m:
            return m.group(1).strip()
    m = re.search(r"CXX_COMPILER=([^,\s]+)", config)
    return m.group(1) if m else "unknown"


def _compiled():
    """(extension module or None, why it is missing), as the backends see it."""
    from ..op import backend

    return backend._compiled()  # (module or None, why)


def _cpu_isa() -> str:
    mod, why = _compiled()
    if mod is None:
        return f"none: {why}"
    return mod.cpu_kernel_isa()


def _find_cuobjdump() -> Optional[str]:
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "cuobjdump"))
    candidates.append("/usr/local/cuda/bin/cuobjdump")
    which = shutil.which("cuobjdump")
    if which:
        candidates.append(which)
    if os.environ.get("TRITON_CUOBJDUMP_PATH"):
        candidates.append(os.environ["TRITON_CUOBJDUMP_PATH"])
    try:  # Triton's NVIDIA backend ships one; find it without importing triton
        spec = importlib.util.find_spec("triton")
        if spec is not None and spec.origin:
            candidates.append(
                os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
            )
    except Exception:
        pass
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _archs_from_cuobjdump(tool: str, library: str) -> Tuple[List[str], List[str]]:
    """(cubin architectures, PTX architectures) listed by ``cuobjdump``."""
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        run = subprocess.run([tool, flag, library], capture_output=True, text=True, timeout=60)
        text = run.stdout
        if run.returncode != 0 and "No PTX" not in run.stdout + run.stderr:
            raise RuntimeError(
                f"{os.path.basename(tool)} {flag} exited {run.returncode}: "
                f"{run.stderr.strip()[:200]}"
            )
        found.append(
            sorted(set(re.findall(r"\.(sm_\d+[a-z]?)\.(?:cubin|ptx)", text)), key=_arch_key)
        )
    return found[0], found[1]


def _arch_key(arch: str) -> int:
    m = re.search(r"\d+", arch)
    return int(m.group()) if m else 0


def _fatbin_section(library: str) -> Optional[bytes]:
    """The bytes of the ``.nv_fatbin`` section of a little-endian ELF64 file, or None."""
    with open(library, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        if not shoff or shentsize < 40 or shstrndx >= shnum:
            return None
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        f.seek(sections[shstrndx][4])
        names = f.read(sections[shstrndx][5])
        for name, _type, _flags, _addr, offset, size in sections:
            end = names.find(b"\0", name)
            if names[name:end] == b".nv_fatbin":
                f.seek(offset)
                return f.read(size)
    return None


def _archs_from_fatbin(library: str) -> Optional[Tuple[List[str], List[str]]]:
    """(cubin, PTX) architectures read from the fatbinary headers, or None without one."""
    data = _fatbin_section(library)
    if data is None:
        return None
    cubins, ptx = set(), set()
    pos = 0
    while pos + 16 <= len(data):
        magic, _version, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:
            pos += 8  # containers are 8-byte aligned, padded between
            continue
        entry, end = pos + header, min(pos + header + size, len(data))
        while entry + 32 <= end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            if kind == 2:
                cubins.add(f"sm_{arch}")
            elif kind == 1:
                ptx.add(f"sm_{arch}")
            if entry_header == 0:
                break
            entry += entry_header + entry_size
        pos = max(end, pos + 8)
    return sorted(cubins, key=_arch_key), sorted(ptx, key=_arch_key)


def _format_archs(cubins: List[str], ptx: List[str], source: str) -> str:
    parts = []
    if cubins:
        parts.append(", ".join(cubins) + " (binary)")
    if ptx:
        parts.append(", ".join(a.replace("sm_", "compute_") for a in ptx) + " (PTX)")
    return ("; ".join(parts) or "none found") + f" [{source}]"


def _cuda_archs() -> str:
    mod, why = _compiled()
    if mod is None:
        return f"unknown: {why}"
    from ..op import backend

    if not backend._has_kernel("CUDA"):
        return "none: the extension has no CUDA kernels"
    library = getattr(mod, "__file__", None)
    if not library or not os.path.isfile(library):
        return "unknown: the extension's file is not known"
    tool = _find_cuobjdump()
    if tool is not None:
        try:
            return _format_archs(*_archs_from_cuobjdump(tool, library), source=tool)
        except Exception:
            pass  # fall back to reading the fatbinary headers
    try:
        found = _archs_from_fatbin(library)
    except Exception:
        found = None
    if found is None or not (found[0] or found[1]):
        return "unknown"
    return _format_archs(*found, source="fatbinary headers")


def _cuda_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none visible"
    count = torch.cuda.device_count()
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return (
        f"yes: {torch.cuda.get_device_name(index)} (sm_{major}{minor}), "
        f"{count} device{'s' if count != 1 else ''} visible"
    )


def _backend_lines() -> List[str]:
    from ..op import backend

    found = backend.backends()
    width = max(len(name) for name in found)
    return [
        f"  {name:<{width}}  {'yes' if info['available'] else 'no ':<3}  {info['reason']}"
        for name, info in found.items()
    ]


def _environment_lines() -> List[str]:
    names = sorted(k for k in os.environ if k.startswith(ENV_PREFIXES) or k in ENV_NAMES)
    return [f"  {k}={os.environ[k]}" for k in names] or ["  (none set)"]


def environment_report() -> str:
    """A plain-text report of the environment bnfused runs in, to paste into bug reports."""
    items = [
        ("bnfused", _bnfused_version),
        ("torch", _torch_version),
        ("triton", triton_version),
        ("CUDA (torch)", _torch_cuda),
        ("Python", _python_version),
        ("torch C++ compiler", _torch_compiler),
        ("platform", platform.platform),
        ("CPU", _cpu),
        ("git commit", git_commit),
    ]
    width = 24
    lines = ["bnfused environment", ""]
    lines += [f"{label + ':':<{width}}{_safe(fn)}" for label, fn in items]
    lines += ["", "backends (available, reason):"]
    try:
        lines += _backend_lines()
    except Exception as e:
        lines.append(f"  unknown ({type(e).__name__}: {e})")
    lines += [
        "",
        f"{'CPU instruction set:':<{width}}{_safe(_cpu_isa)}",
        f"{'CUDA archs compiled:':<{width}}{_safe(_cuda_archs)}",
        f"{'CUDA device:':<{width}}{_safe(_cuda_device)}",
        "",
        "environment variables:",
    ]
    try:
        lines += _environment_lines()
    except Exception as e:
        lines.append(f"  unknown ({type(e).__name__}: {e})")
    return "\n".join(lines) + "\n"
