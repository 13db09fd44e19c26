"""A small CUDA workload for compute-sanitizer: every GPU backend, forward and backward,
the CUDA kernels on both training paths (two-pass, persistent).

    compute-sanitizer --tool memcheck python scripts/sanitize_small.py

Covers odd sizes, both layouts, fp32/fp16/bf16, each activation with and
without a residual, train and eval. Exits non-zero if a backend raises or
returns non-finite values. Needs bnfused importable (benchmarks/gpu_check.sh installs it
and puts the repository on PYTHONPATH).
"""

from __future__ import annotations

import sys

import torch

import bnfused
from bnfused import functional

SHAPES = [(3, 5, 7, 9), (2, 33, 1, 1), (4, 64, 5, 5), (5, 3, 17)]


def run_backend(name: str) -> int:
    failures = 0
    for shape in SHAPES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for layout in (
                (torch.contiguous_format, torch.channels_last)
                if len(shape) == 4
                else (torch.contiguous_format,)
            ):
                for activation in ("identity", "relu", "leaky_relu", "silu"):
                    for with_residual in (False, True):
                        for training in (True, False):
                            failures += _one(
                                name, shape, dtype, layout, activation, with_residual, training
                            )
    return failures


def _one(name, shape, dtype, layout, activation, with_residual, training) -> int:
    c = shape[1]
    dev = "cuda"
    x = torch.randn(shape, device=dev, dtype=dtype).contiguous(memory_format=layout)
    x.requires_grad_(training)
    res = (
        torch.randn(shape, device=dev, dtype=dtype)
        .contiguous(memory_format=layout)
        .requires_grad_(training)
        if with_residual
        else None
    )
    w = torch.rand(c, device=dev) + 0.5
    b = torch.randn(c, device=dev)
    w.requires_grad_(training)
    b.requires_grad_(training)
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    try:
        with bnfused.use_backend(name):
            y = functional.batch_norm(
                x, rm, rv, w, b, training=training, activation=activation, residual=res
            )
            ok = bool(torch.isfinite(y).all())
            if training:
                grads = torch.autograd.grad(
                    y, [t for t in (x, res, w, b) if t is not None], torch.randn_like(y)
                )
                ok = ok and all(bool(torch.isfinite(g).all()) for g in grads)
        torch.cuda.synchronize()
    except Exception as e:
        print(
            f"FAIL {name} {shape} {dtype} {activation} residual={with_residual} "
            f"training={training}: {type(e).__name__}: {e}"
        )
        return 1
    if not ok:
        print(
            f"NON-FINITE {name} {shape} {dtype} {activation} residual={with_residual} "
            f"training={training}"
        )
        return 1
    return 0


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    names = [n for n in ("cuda", "triton") if bnfused.backends()[n]["available"]]
    if not names:
        print("no GPU backend available:", bnfused.backends())
        return 1
    failures = 0
    for name in names:
        for path in ("two-pass", "persistent") if name == "cuda" else ("auto",):
            with bnfused.use_cuda_path(path):
                f = run_backend(name)
            print(f"{name} ({path}): {f} failures")
            failures += f
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
