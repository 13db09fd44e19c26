"""Global-memory traffic of the CUDA kernels, measured on the CPU by the emulator.

    python -m inspection.traffic [--shapes gpu|cpu] [--configs N] [--sms 132]
                                 [--path both|two-pass|persistent] [--quick]

Runs each benchmark case (benchmarks/cases.py) through the ``cuda-emulated``
backend with traffic counting on, for the training paths asked for (the
two-pass kernels; the persistent kernel, where the case fits on the emulated
chip, else it says "does not fit"), and prints per case and mode (``train``:
training forward; ``fwd_bwd``: training forward + backward):
  passes      bytes of full-size tensors moved / S, the bytes of one activation tensor
  vs min      those bytes / the op's minimum (cases.bytes_moved)
  sectors     requested bytes / (32-byte sectors touched x 32) of the loads and stores
              of full-size tensors, and the worst kernel's (Nsight Compute's sector
              efficiency); partials: the same for what L2 serves (__ldcg loads
              of reduction partials, atomics on their counters)
  blocks/SM   the largest grid of the case / the SM count
  balance     the busiest block's bytes / the mean block's bytes, worst kernel
Counted: the loads and stores of activations, residuals, gradients, the
activation mask and the reduction partials; not the per-channel vectors
(weight, statistics), which are C-sized.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

import torch

from benchmarks import cases
from bnfused.op import contract, cuda_emulated

MODES = ("train", "fwd_bwd")


def _inputs(shape, dtype, channels_last, op):
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float32).to(dtype).contiguous(memory_format=fmt)
    res = torch.randn_like(x) if op == "bn_add_relu" else None
    return x, res


def kernel_traffic(
    shape,
    dtype=torch.float32,
    channels_last=False,
    op="bn_relu",
    mode="train",
    sm_count=132,
    path="two-pass",
) -> List[Dict]:
    """The emulator's traffic records of one case: one per kernel launch, with the CUDA
    training path ``path`` ('two-pass', 'persistent' or 'auto')."""
    ext = cuda_emulated.extension()
    if ext is None:
        raise RuntimeError(cuda_emulated.availability()[1])
    x, res = _inputs(shape, dtype, channels_last, op)
    C = shape[1]
    acc = contract.acc_dtype(dtype)
    w, b = torch.rand(C, dtype=acc) + 0.5, torch.randn(C, dtype=acc)
    rm, rv = torch.zeros(C, dtype=acc), torch.ones(C, dtype=acc)
    act = contract.IDENTITY if op == "bn" else contract.RELU
    before = ext.configure(sm_count=sm_count, count_traffic=True, cuda_path=path)
    try:
        ext.traffic()
        y, mean, invstd, mask, _ = cuda_emulated.forward(
            x, w, b, rm, rv, res, True, 0.1, 1e-5, act, 0.0
        )
        if mode == "fwd_bwd":
            dy = torch.randn_like(y)
            cuda_emulated.backward(
                dy,
                x,
                w,
                b,
                mean,
                invstd,
                mask,
                res,
                True,
                1e-5,
                act,
                0.0,
                [True, True, True, res is not None],
            )
        return ext.traffic()
    finally:
        ext.configure(**before)


def summarize(records: List[Dict], shape, dtype, op, mode, sm_count) -> Dict[str, float]:
    """passes, vs_min, sector efficiency (all and worst kernel), blocks per SM, balance."""
    act = cases.element_size(dtype) * int(torch.Size(shape).numel())
    kinds = ("load", "store", "l2")
    moved = sum(r[k]["bytes"] for r in records for k in kinds)

    def efficiency(rs, ks=("load", "store")):
        sectors = sum(r[k]["sectors"] for r in rs for k in ks)
        return sum(r[k]["bytes"] for r in rs for k in ks) / (32 * sectors) if sectors else 1.0

    def balance(r):
        total = sum(r[k]["bytes"] for k in kinds)
        return r["block_bytes_max"] * r["blocks"] / total if total else 1.0

    return {
        "passes": moved / act,
        "vs_min": moved / cases.bytes_moved(shape, dtype, op, mode),
        "sectors": efficiency(records),
        "worst_sectors": min(efficiency([r]) for r in records),
        "partials": efficiency(records, ("l2",)),
        "blocks_per_sm": max(r["blocks"] for r in records) / sm_count,
        "balance": max(balance(r) for r in records),
        "launches": len(records),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        choices=("gpu", "cpu"),
        default="gpu",
        help="the GPU benchmark shapes (default) or the smaller CPU ones",
    )
    parser.add_argument(
        "--configs",
        type=int,
        default=2,
        help="how many (dtype, layout) configs, most important first",
    )
    parser.add_argument("--sms", type=int, default=132, help="SM count of the emulated device")
    parser.add_argument(
        "--path",
        choices=("both", "two-pass", "persistent"),
        default="both",
        help="training path of the CUDA kernels (default: both, side by side)",
    )
    parser.add_argument("--quick", action="store_true", help="the first three shapes only")
    args = parser.parse_args(argv)
    paths = ("two-pass", "persistent") if args.path == "both" else (args.path,)
    if cuda_emulated.extension() is None:
        print(f"traffic: {cuda_emulated.availability()[1]}", file=sys.stderr)
        return 1
    gpu = args.shapes == "gpu"
    shapes = (
        cases.GPU_RESNET_SHAPES + cases.GPU_EXTREME_SHAPES
        if gpu
        else cases.CPU_RESNET_SHAPES + cases.CPU_EXTREME_SHAPES
    )
    shapes = shapes[:3] if args.quick else shapes
    configs = (cases.GPU_CONFIGS if gpu else cases.CPU_CONFIGS)[: args.configs]
    print(
        f"CUDA kernel traffic, emulated device with {args.sms} SMs "
        f"(bytes of full-size tensors; S = one activation tensor)\n"
    )
    print(
        "| op | shape | dtype | layout | mode | path | passes | vs min | sectors (worst) "
        "| partials | blocks/SM | balance |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name, layout in configs:
        dtype = cases.DTYPES[dtype_name]
        for shape in shapes:
            for op in cases.OPS:
                for mode, path in ((m, p) for m in MODES for p in paths):
                    records = kernel_traffic(
                        shape, dtype, layout == "channels_last", op, mode, args.sms, path
                    )
                    label = "x".join(map(str, shape))
                    row = f"| {op} | {label} | {dtype_name} | {layout} | {mode} | {path} "
                    if path == "persistent" and not any(
                        "ResidentOp" in r["kernel"] for r in records
                    ):
                        print(row + "| does not fit | | | | | |", flush=True)
                        continue
                    s = summarize(records, shape, dtype, op, mode, args.sms)
                    print(
                        row + f"| {s['passes']:.2f} S | {s['vs_min']:.2f} "
                        f"| {s['sectors']:.1%} ({s['worst_sectors']:.1%}) | {s['partials']:.1%} "
                        f"| {s['blocks_per_sm']:.1f} | {s['balance']:.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
