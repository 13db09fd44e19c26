"""The sm_90 cubins of the compiled CUDA kernels: resources, vector accesses and occupancy.

Reads the extension that ``make build`` produced (``bnfused/_C*.so``, built
with ``TORCH_CUDA_ARCH_LIST=9.0``) with cuobjdump, and the occupancy each
launch plan assumes from the CUDA sources (``csrc/cuda/plan.cu``), so the
numbers checked are the ones the code uses.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from inspection import codegen_inspect as ci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = 90
_SIZES = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}
_DTYPE_NAMES = {"float": "fp32", "double": "fp64", "__half": "fp16", "__nv_bfloat16": "bf16"}


def extension_path() -> Optional[str]:
    """The compiled extension with the CUDA kernels, or None when it was not built."""
    for path in sorted(glob.glob(os.path.join(ROOT, "bnfused", "_C.*.so"))):
        return path
    return None


@dataclass
class CudaKernel:
    """One kernel instantiation in the extension's sm_90 cubins."""

    mangled: str
    name: str  # demangled, without namespaces and parameters
    family: str  # forward_apply, backward_apply, reduce_ncs:StatsOp, ...
    dtype: str  # C++ element type
    vec: int  # elements per vector access (1: the scalar path for unaligned input)
    resources: ci.Resources
    sass: Dict[tuple, int]

    @property
    def vector_path(self) -> bool:
        """Whether this instantiation is the 16-byte-vector path (aligned input)."""
        return self.vec * _SIZES.get(self.dtype, 0) == 16

    @property
    def is_apply(self) -> bool:
        return self.family.endswith("_apply")

    @property
    def is_persistent(self) -> bool:
        return self.family.startswith("persistent_")

    @property
    def writes_elements(self) -> bool:
        """Elementwise outputs (y, dx): the elementwise passes and the persistent kernels."""
        return self.is_apply or self.is_persistent

    @property
    def vectorized(self) -> bool:
        """128-bit global loads present (and 128-bit stores, for the elementwise passes)."""
        loads = ci.widths(self.sass, "LDG").get(ci.VECTOR_BITS, 0)
        stores = ci.widths(self.sass, "STG").get(ci.VECTOR_BITS, 0)
        return loads > 0 and (stores > 0 or not self.writes_elements)


def _demangle(names: List[str]) -> List[str]:
    try:
        done = subprocess.run(
            ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
        )
        out = done.stdout.splitlines()
        if len(out) == len(names):
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    return names


def _short_name(demangled: str) -> str:
    s = re.sub(r"\(anonymous namespace\)::|bnfused::cudak::|bnfused::", "", demangled)
    s = re.sub(r"^void ", "", s)
    depth = 0
    for i, ch in enumerate(s):  # drop the parameter list: the first '(' at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0 and s[i - 1] != " ":
            return s[:i]
    return s


def _classify(short: str):
    m = re.match(r"(\w+)_kernel<(?:(\w+)<)?(float|double|__half|__nv_bfloat16), (\d+)", short)
    if not m:
        return short.split("<")[0], "?", 0
    kernel, op, dtype, vec = m.groups()
    family = kernel if op is None else f"{kernel}:{op}"
    return family, dtype, int(vec)


def kernels(path: Optional[str] = None) -> List[CudaKernel]:
    """Every kernel in the extension's sm_90 cubins; [] when the extension has no CUDA code."""
    path = path or extension_path()
    if path is None:
        return []
    text = ci.cuobjdump("-res-usage", "-sass", path)
    res = ci.parse_res_usage(text, ARCH)
    sass = ci.parse_sass(text, ARCH)
    mangled = sorted(res)
    out = []
    for m, d in zip(mangled, _demangle(mangled)):
        short = _short_name(d)
        family, dtype, vec = _classify(short)
        out.append(
            CudaKernel(
                m, short, family, dtype, vec, res[m], dict(ci.sass_memory_ops(sass.get(m, [])))
            )
        )
    return out


def dtype_label(k: CudaKernel) -> str:
    """fp32/fp64/fp16/bf16 for the kernel's element type."""
    return _DTYPE_NAMES.get(k.dtype, k.dtype)


def _constant(source: str, pattern: str, what: str) -> int:
    m = re.search(pattern, source)
    if not m:
        raise RuntimeError(f"cannot find {what} in csrc/cuda (pattern {pattern!r})")
    return int(m.group(1))


_OCCUPANCY = {
    "forward_apply": "kForwardApplyBlocksPerSm",
    "backward_apply": "kBackwardApplyBlocksPerSm",
    "reduce": "kReduceBlocksPerSm",
    "persistent": "kPersistentBlocksPerSm",
}


def assumed_occupancy() -> Dict[str, int]:
    """Blocks per SM the launch plans size their grids for, per kernel family, and threads
    per block, read from csrc/cuda/device_common.cuh:
    ``{"forward_apply": n, "backward_apply": n, "reduce": n, "persistent": n, "threads": n}``.

    RuntimeError if the launch code stops using a constant (its number would mean nothing)."""
    cuda = os.path.join(ROOT, "csrc", "cuda")
    with open(os.path.join(cuda, "device_common.cuh")) as f:
        common = f.read()
    with open(os.path.join(cuda, "plan.cu")) as f:
        launch = f.read()
    with open(os.path.join(cuda, "launch.cu")) as f:
        launch += f.read()
    out = {}
    for family, name in _OCCUPANCY.items():
        if name not in launch:
            raise RuntimeError(f"csrc/cuda/plan.cu and launch.cu no longer use {name}")
        out[family] = _constant(common, name + r"\s*=\s*(\d+)", name)
    out["threads"] = _constant(common, r"kThreads\s*=\s*(\d+)", "kThreads")
    return out


def assumed_blocks(k: CudaKernel, occupancy: Dict[str, int]) -> int:
    """The blocks per SM the plan of ``k``'s family assumes."""
    if k.is_persistent:
        return occupancy["persistent"]
    return occupancy[k.family if k.is_apply else "reduce"]


def resident_blocks(k: CudaKernel, threads: int) -> int:
    """Blocks of ``threads`` that fit on one SM with this kernel's registers and shared memory."""
    return ci.blocks_per_sm(ARCH, threads, k.resources.registers, k.resources.shared)
