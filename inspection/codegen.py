"""What the GPU compilers make of bnfused's kernels, without a GPU: one table per backend.

    python -m inspection.codegen                 # CUDA cubins (sm_90) and Triton (sm_90)
    python -m inspection.codegen --arch 90 80    # Triton for both targets
    python -m inspection.codegen --all           # every reachable Triton specialization (hours)

CUDA: every kernel instantiation in the built extension's sm_90 cubins.
Triton: the launcher's specializations that the tests compile (see
``inspection/codegen_triton.py``). Per row: registers per thread, spilled
bytes (stack + local), shared memory per block, threads per block, and
whether the global loads and stores of the whole-tensor arguments are
vectorized on aligned input. ``make bench`` prints it as its last section
on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

from inspection import codegen_cuda as cc
from inspection import codegen_inspect as ci


def _widths(d: Dict[int, int]) -> str:
    return " ".join(f"{n}x{bits}" for bits, n in sorted(d.items())) or "-"


def cuda_table(out) -> int:
    """Prints the CUDA table; returns the number of kernels."""
    path = cc.extension_path()
    kernels = cc.kernels(path) if path else []
    if not kernels:
        print(
            "CUDA: no compiled CUDA kernels (extension not built, or built without a toolkit)",
            file=out,
        )
        return 0
    occ = cc.assumed_occupancy()
    print(f"## CUDA kernels, sm_{cc.ARCH} ({os.path.basename(path)})\n", file=out)
    print(
        f"Plans assume {occ['forward_apply']} forward / {occ['backward_apply']} backward "
        f"elementwise and {occ['reduce']} reduction blocks of {occ['threads']} threads "
        "resident per SM.\n",
        file=out,
    )
    print(
        "| kernel | dtype | vec | regs | spill B | smem B | threads | blocks/SM | "
        "LDG bits | STG bits | vectorized |",
        file=out,
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", file=out)
    for k in kernels:
        r = k.resources
        need = cc.assumed_blocks(k, occ)
        vec = ("yes" if k.vectorized else "NO") if k.vector_path else "scalar path"
        print(
            f"| {k.name} | {cc.dtype_label(k)} | {k.vec} | {r.registers} | "
            f"{r.stack + r.local} | {r.shared} | {occ['threads']} | "
            f"{cc.resident_blocks(k, occ['threads'])} (plan {need}) | "
            f"{_widths(ci.widths(k.sass, 'LDG'))} | {_widths(ci.widths(k.sass, 'STG'))} | "
            f"{vec} |",
            file=out,
        )
    print(file=out)
    return len(kernels)


def triton_table(out, archs: List[int], full: bool) -> int:
    """Prints the Triton table; returns the number of compiled specializations."""
    from inspection import codegen_triton as ct
    from inspection import codegen_triton_compile as ctc

    ok, why = ct.supported()
    if not ok:
        print(f"Triton: {why}", file=out)
        return 0
    t0 = time.time()
    specs = ct.specializations(full)
    compiled, failures = ctc.compile_all(specs, archs)
    print(
        f"## Triton kernels ({why}; {len(specs)} specializations x sm_"
        f"{'/sm_'.join(map(str, archs))}, compiled in {time.time() - t0:.0f} s)\n",
        file=out,
    )
    print(
        "| kernel | specialization | arch | regs | spill B | smem B | warps | aligned | "
        "loads (arg: n x bits) | stores | vectorized |",
        file=out,
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", file=out)
    for c in sorted(compiled, key=lambda c: (c.spec.name, c.spec.label(), -c.arch)):
        r = c.resources
        loads = "; ".join(f"{a}: {_widths(w)}" for a, w in c.streaming_loads.items() if w)
        stores = "; ".join(f"{a}: {_widths(w)}" for a, w in c.streaming_stores.items() if w)
        vec = ("yes" if c.vectorized else "NO") if c.spec.aligned else "-"
        print(
            f"| {c.spec.name} | {c.spec.label()} | sm_{c.arch} | {r.registers} | "
            f"{r.stack + r.local} | {c.shared} | {c.num_warps} | "
            f"{'yes' if c.spec.aligned else 'no'} | {loads or '-'} | {stores or '-'} | {vec} |",
            file=out,
        )
    for spec, arch, error in failures:
        print(
            f"| {spec.name} | {spec.label()} | sm_{arch} | FAILED: {error.splitlines()[-1]} |",
            file=out,
        )
    print(file=out)
    return len(compiled)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=[90],
        choices=[90, 80],
        help="Triton targets (default: sm_90)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every reachable Triton specialization, not the tested cover (hours)",
    )
    p.add_argument("--backend", choices=["cuda", "triton", "both"], default="both")
    p.add_argument(
        "--unless-gpu",
        action="store_true",
        help="print nothing but a note when a GPU is visible (make bench)",
    )
    args = p.parse_args(argv)
    if args.unless_gpu:
        import torch

        if torch.cuda.is_available():
            print("codegen: a GPU is visible; run `python -m inspection.codegen` for the table")
            return 0
    if args.backend in ("cuda", "both"):
        cuda_table(sys.stdout)
    if args.backend in ("triton", "both"):
        triton_table(sys.stdout, args.arch, args.all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
