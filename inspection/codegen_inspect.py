"""What the GPU compilers made of a kernel, read from its cubin and PTX without a GPU.

Shared by the code-generation report (``inspection/codegen.py``) and the tests
that pin it: finding cuobjdump, parsing its resource usage and SASS, tracing
the global loads and stores of Triton's PTX back to the kernel argument they
address, and the occupancy that a register and shared-memory budget allows.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

# Per-SM limits of the targets checked (CUDA occupancy calculator, sm_80 and sm_90).
_SM_LIMITS = {
    80: dict(regs=65536, threads=2048, blocks=32, shared=167936),
    90: dict(regs=65536, threads=2048, blocks=32, shared=233472),
}
_REG_UNIT = 256  # registers are allocated per warp in units of 256
_SHARED_RESERVED = 1024  # per block, reserved by the driver


def find_tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool (cuobjdump, nvdisasm): the toolkit, PATH, then Triton's copy."""
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates = [os.path.join(home, "bin", name), shutil.which(name)]
    try:
        import triton

        candidates.append(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        )
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def cuobjdump(*args: str) -> str:
    """stdout of ``cuobjdump args``; RuntimeError when the tool is missing or fails."""
    tool = find_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA_HOME/bin, PATH, or the triton package)")
    done = subprocess.run([tool, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Resources:
    """Per-thread registers and per-block memory of one kernel, as cuobjdump -res-usage prints them."""

    registers: int
    stack: int  # bytes per thread
    shared: int  # static shared memory, bytes per block
    local: int  # bytes per thread of local memory: register spills and local arrays

    @property
    def spills(self) -> bool:
        return self.local > 0 or self.stack > 0


_RES_FUNC = re.compile(r"^\s*Function (\S+?):\s*$")
_RES_LINE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _lines_of_arch(text: str, arch: Optional[int]) -> Iterator[Tuple[bool, str]]:
    """``(kept, line)`` over cuobjdump output: kept inside the cubins of sm_``arch`` (all if None)."""
    keep = True
    for line in text.splitlines():
        if line.startswith("Fatbin elf code") or line.startswith("Fatbin ptx code"):
            keep = False
        elif line.startswith("arch = "):
            keep = arch is None or line.strip() == f"arch = sm_{arch}"
        yield keep, line


def parse_res_usage(text: str, arch: Optional[int] = None) -> Dict[str, Resources]:
    """``{kernel: Resources}`` from ``cuobjdump -res-usage``; only the cubins of sm_``arch`` if given."""
    out: Dict[str, Resources] = {}
    name = None
    for keep, line in _lines_of_arch(text, arch):
        m = _RES_FUNC.match(line)
        if m:
            name = m.group(1)
            continue
        m = _RES_LINE.search(line)
        if m and name is not None:
            if keep:
                out[name] = Resources(*(int(g) for g in m.groups()))
            name = None
    return out


_SASS_FUNC = re.compile(r"^\s*Function : (\S+)\s*$")
_SASS_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")


def parse_sass(text: str, arch: Optional[int] = None) -> Dict[str, List[str]]:
    """``{kernel: [instruction, ...]}`` from ``cuobjdump -sass`` (predicates kept, encodings dropped)."""
    out: Dict[str, List[str]] = {}
    current: Optional[List[str]] = None
    for keep, line in _lines_of_arch(text, arch):
        m = _SASS_FUNC.match(line)
        if m:
            current = out.setdefault(m.group(1), []) if keep else None
            continue
        m = _SASS_INSN.search(line)
        if m and current is not None:
            current.append(m.group(1))
    return out


_WIDTH_SUFFIX = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def sass_memory_ops(instructions: Iterable[str]) -> collections.Counter:
    """Counter of ``(opcode, bits)`` for global (LDG/STG) and local (LDL/STL) accesses."""
    counts: collections.Counter = collections.Counter()
    for insn in instructions:
        words = insn.split()
        if words and words[0].startswith("@"):
            words = words[1:]
        if not words:
            continue
        parts = words[0].split(".")
        if parts[0] not in ("LDG", "STG", "LDL", "STL"):
            continue
        bits = 32
        for p in parts[1:]:
            bits = _WIDTH_SUFFIX.get(p, bits)
        counts[(parts[0], bits)] += 1
    return counts


def local_memory_ops(counts: collections.Counter) -> int:
    """Number of LDL/STL instructions (spill traffic or local arrays)."""
    return sum(n for (op, _), n in counts.items() if op in ("LDL", "STL"))


def widths(counts: collections.Counter, opcode: str) -> Dict[int, int]:
    """``{bits: count}`` of one opcode in a :func:`sass_memory_ops` counter."""
    return {bits: n for (op, bits), n in sorted(counts.items()) if op == opcode}


# --- PTX: global accesses attributed to kernel parameters -------------------------------

_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")
_PTX_STMT = re.compile(r"^\s*(@!?%\w+\s+)?([a-z][\w.]*)\s+(.*?);\s*$")
_PTX_REG = re.compile(r"%[a-z]+\d+")
_PTX_PARAM = re.compile(r"\[\s*(\w+_param_(\d+))\s*\]")
_PTX_ADDR = re.compile(r"\[\s*(%\w+)")


@dataclass(frozen=True)
class PtxAccess:
    """One ld.global/st.global: ``bits`` moved per thread, whether it is a vector access
    (.v2/.v4), whether it lies in a loop, and the parameters its address derives from."""

    kind: str  # "ld" or "st"
    bits: int
    vector: bool
    in_loop: bool
    params: Tuple[int, ...]  # indices of the kernel's (non-constexpr) parameters


def _ptx_width(opcode: str) -> Tuple[int, int]:
    vec, elem = 1, 32
    for p in opcode.split(".")[1:]:
        if p in ("v2", "v4", "v8"):
            vec = int(p[1:])
        m = re.fullmatch(r"[busf](\d+)", p)
        if m:
            elem = int(m.group(1))
    return vec, elem


_PTX_LABEL = re.compile(r"^\s*(\$?\w+):\s*$")
_PTX_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$?\w+)\s*;")


def ptx_global_accesses(ptx: str) -> List[PtxAccess]:
    """Every global load and store of a one-kernel PTX module, traced to the parameters it reads.

    Follows register definitions backwards (add, mad, mul.wide, cvt, mov, selp ...)
    from each access's address register to the ``ld.param`` it starts from. An
    access lies in a loop when a later branch jumps back to a label before it.
    """
    defs: Dict[str, List[Tuple[Tuple[str, ...], Optional[int]]]] = collections.defaultdict(list)
    accesses: List[Tuple[str, int, int, str, int]] = []
    labels: Dict[str, int] = {}
    back_edges: List[Tuple[int, int]] = []
    for n, line in enumerate(ptx.splitlines()):
        m = _PTX_LABEL.match(line)
        if m:
            labels[m.group(1)] = n
            continue
        b = _PTX_BRANCH.search(line)
        if b and b.group(1) in labels:
            back_edges.append((labels[b.group(1)], n))
        m = _PTX_STMT.match(line)
        if not m:
            continue
        opcode, operands = m.group(2), m.group(3)
        if opcode.startswith(("ld.global", "st.global")):
            addr = _PTX_ADDR.search(operands)
            if addr:
                vec, elem = _ptx_width(opcode)
                accesses.append((opcode[:2], vec, elem, addr.group(1), n))
            continue
        regs = _PTX_REG.findall(operands)
        if not regs or opcode.startswith(("st.", "bra", "bar", "setp")):
            continue
        dst, srcs = regs[0], tuple(regs[1:])
        param = _PTX_PARAM.search(operands) if opcode.startswith("ld.param") else None
        defs[dst].append((srcs, int(param.group(2)) if param else None))

    cache: Dict[str, frozenset] = {}

    def origins(reg: str) -> frozenset:
        if reg in cache:
            return cache[reg]
        cache[reg] = frozenset()  # cycles (loop-carried registers) end here
        found = set()
        for srcs, param in defs.get(reg, ()):
            if param is not None:
                found.add(param)
            for s in srcs:
                found |= origins(s)
        cache[reg] = frozenset(found)
        return cache[reg]

    return [
        PtxAccess(
            kind,
            vec * elem,
            vec > 1,
            any(lo <= n <= hi for lo, hi in back_edges),
            tuple(sorted(origins(addr))),
        )
        for kind, vec, elem, addr, n in accesses
    ]


def ptx_param_accesses(accesses: Sequence[PtxAccess], param: int, kind: str) -> List[PtxAccess]:
    """The accesses of ``kind`` ("ld"/"st") whose address derives from parameter ``param``."""
    return [a for a in accesses if a.kind == kind and param in a.params]


def ptx_param_widths(accesses: Sequence[PtxAccess], param: int, kind: str) -> Dict[int, int]:
    """``{bits: count}`` of the accesses of ``kind`` whose address derives from ``param``."""
    out = collections.Counter(a.bits for a in ptx_param_accesses(accesses, param, kind))
    return dict(sorted(out.items()))


def hot_vectorized(accesses: Sequence[PtxAccess]) -> bool:
    """Whether the hot accesses of one tensor are vector accesses (.v2/.v4): those in loops
    if any lies in a loop, else all; at least 3/4 of the bits they move, counted per
    instruction, must move in vector accesses (a scalar prologue, such as the Triton
    statistics kernel's 16-row pivot, stays below 1/4). No access: True."""
    hot = [a for a in accesses if a.in_loop] or list(accesses)
    total = sum(a.bits for a in hot)
    return total == 0 or 4 * sum(a.bits for a in hot if a.vector) >= 3 * total


VECTOR_BITS = 128


# --- occupancy ---------------------------------------------------------------------------


def blocks_per_sm(arch: int, threads: int, registers: int, shared: int) -> int:
    """Resident blocks per SM for a kernel of ``threads`` per block (CUDA occupancy rules)."""
    lim = _SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // _REG_UNIT) * _REG_UNIT
    warps_by_regs = (lim["regs"] // 4 // regs_per_warp) * 4  # four SM sub-partitions
    by_regs = warps_by_regs // warps
    by_threads = lim["threads"] // (warps * 32)
    by_shared = lim["shared"] // (shared + _SHARED_RESERVED) if shared > 0 else lim["blocks"]
    return max(0, min(by_regs, by_threads, by_shared, lim["blocks"]))


def max_registers(arch: int, threads: int, blocks: int) -> int:
    """Most registers per thread that still let ``blocks`` blocks of ``threads`` reside on one SM."""
    best = 0
    for regs in range(8, 256, 8):
        if blocks_per_sm(arch, threads, regs, 0) >= blocks:
            best = regs
    return best
