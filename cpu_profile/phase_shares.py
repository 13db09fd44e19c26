"""Which CPU kernel costs what: bnfused against torch eager in one ``perf`` profile.

Runs training forward then backward of plain batch norm, bnfused's C++ kernels and
torch's native ones alternating in one process, under ``perf record``, and prints
each phase's share of all samples. Shares taken from the same profile hold steady
on a shared machine where single timings drift by 2x between runs, so this is how
kernel changes are compared; ``python -m benchmarks.bench --mode kernels`` gives the
wall-clock speedups. Needs Linux ``perf``.

    python -m cpu_profile.phase_shares 128x512x7x7 --channels-last [--iters 1200]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

# Symbol patterns of each phase: ours (bnfused_C) and torch's (libtorch_cpu).
PHASES = {
    "bnfused stats": r"::(avx512|avx2|baseline)::stats",
    "bnfused normalize": r"forward_apply",
    "bnfused grad sums": r"grad_sums|rows_sums|group_sums|run_sums|plane_grad",
    "bnfused grad apply": r"backward_apply",
    "torch stats": r"collect_stats",
    "torch normalize": r"batch_norm_cpu_(channels_last|contiguous)_impl|transform_input",
    "torch backward": r"batch_norm_cpu_backward",
    "openmp runtime": r"libgomp|libiomp",
}


def run_inner(args):
    from bnfused.op.backend import compiled_extension

    compiled_extension()  # registers torch.ops.bnfused_C, settings passed to the kernels
    from benchmarks.timing import keep_freed_memory

    keep_freed_memory()  # as the benchmark measures
    torch.set_num_threads(args.threads)
    ops = torch.ops.bnfused_C
    shape = tuple(int(d) for d in args.shape.split("x"))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x, dy = (torch.randn(shape).contiguous(memory_format=fmt) for _ in range(2))
    C = shape[1]
    w, b, rm, rv = torch.rand(C) + 0.5, torch.randn(C), torch.zeros(C), torch.ones(C)
    for _ in range(args.iters):
        y, mean, invstd, mask, _ = ops.forward(x, w, b, rm, rv, None, True, 0.1, 1e-5, 0, 0.0)
        ops.backward(
            dy, x, w, b, mean, invstd, mask, None, True, 1e-5, 0, 0.0, [True, True, True, False]
        )
        y, sm, si = torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
        torch.ops.aten.native_batch_norm_backward(
            dy, x, w, rm, rv, sm, si, True, 1e-5, [True, True, True]
        )


def shares(report):
    out = dict.fromkeys(PHASES, 0.0)
    for line in report.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+\S+\s+(\S+)\s+\[\.\]\s+(.*)", line)
        if not m:
            continue
        text = m.group(2) + " " + m.group(3)
        for phase, pattern in PHASES.items():
            if re.search(pattern, text):
                out[phase] += float(m.group(1))
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", help="NxCxHxW")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--iters", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return run_inner(args)
    if shutil.which("perf") is None:
        sys.exit("cpu_profile.phase_shares needs Linux perf on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        inner = [
            sys.executable,
            "-m",
            "cpu_profile.phase_shares",
            "--inner",
            args.shape,
            "--iters",
            str(args.iters),
            "--threads",
            str(args.threads),
        ]
        inner += ["--channels-last"] if args.channels_last else []
        subprocess.run(["perf", "record", "-q", "-o", data, "--"] + inner, check=True)
        report = subprocess.run(
            ["perf", "report", "-i", data, "--stdio"], check=True, capture_output=True, text=True
        ).stdout
    s = shares(report)
    layout = "channels_last" if args.channels_last else "contiguous"
    print(f"{args.shape} {layout}, {args.threads} threads: share of all samples")
    for phase, pct in s.items():
        print(f"  {phase:20s} {pct:5.1f}%")
    ours = s["bnfused grad sums"] + s["bnfused grad apply"]
    if s["torch backward"] > 0:
        print(f"  backward, bnfused / torch: {ours / s['torch backward']:.2f}")
    if s["torch stats"] + s["torch normalize"] > 0:
        print(
            f"  forward,  bnfused / torch: "
            f"{(s['bnfused stats'] + s['bnfused normalize']) / (s['torch stats'] + s['torch normalize']):.2f}"
        )


if __name__ == "__main__":
    main()
