"""What is measured: shapes, dtypes, layouts, ops, modes, and the bytes each row must move."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

OPS = ("bn", "bn_relu", "bn_add_relu")  # BN; BN then ReLU; BN, add residual, ReLU
MODES = ("train", "eval", "fwd_bwd")  # forward-train; eval forward; forward+backward
LAYOUTS = ("nchw", "channels_last")

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

# ResNet-50 batch-norm input shapes (batch 32..256) and a few extremes.
GPU_RESNET_SHAPES = [
    (32, 64, 56, 56),
    (32, 256, 56, 56),
    (64, 256, 14, 14),
    (128, 512, 7, 7),
    (256, 64, 56, 56),
    (32, 128, 28, 28),
    (32, 1024, 14, 14),
    (32, 2048, 7, 7),
]
GPU_EXTREME_SHAPES = [(20, 6, 65536), (2, 2048, 1, 1), (16, 8192, 4, 4)]
# CPU: the same layers with the batch divided by 8.
CPU_RESNET_SHAPES = [
    (4, 64, 56, 56),
    (4, 256, 56, 56),
    (8, 256, 14, 14),
    (16, 512, 7, 7),
    (32, 64, 56, 56),
    (4, 128, 28, 28),
    (4, 1024, 14, 14),
    (4, 2048, 7, 7),
]
CPU_EXTREME_SHAPES = [(20, 6, 65536), (2, 2048, 1, 1), (4, 8192, 4, 4)]
# Kernel mode on the CPU: ResNet-50 layers at training batch sizes (working sets past L3).
CPU_KERNEL_SHAPES = [
    (32, 64, 56, 56),
    (64, 256, 14, 14),
    (128, 512, 7, 7),
    (32, 256, 56, 56),
    (32, 128, 28, 28),
    (64, 2048, 7, 7),
]

# (dtype, layout) pairs, most important first.
GPU_CONFIGS = [
    ("bf16", "channels_last"),
    ("fp32", "nchw"),
    ("fp16", "channels_last"),
    ("fp32", "channels_last"),
    ("bf16", "nchw"),
    ("fp16", "nchw"),
]
CPU_CONFIGS = [
    ("fp32", "nchw"),
    ("bf16", "channels_last"),
    ("fp32", "channels_last"),
    ("bf16", "nchw"),
]
CPU_KERNEL_CONFIGS = [
    ("fp32", "nchw"),
    ("fp32", "channels_last"),
    ("bf16", "nchw"),
    ("bf16", "channels_last"),
]
PRIMARY_CONFIGS = 2  # the first two configs on the first PRIMARY_SHAPES shapes run first
PRIMARY_SHAPES = 5


@dataclass(frozen=True)
class Case:
    """One input configuration; each of its ``modes`` gives one row of results."""

    shape: Tuple[int, ...]
    dtype: str  # key of DTYPES
    layout: str  # "nchw" (contiguous) or "channels_last"; 3-D input is always contiguous
    op: str  # one of OPS

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def label(self) -> str:
        return "x".join(map(str, self.shape))

    def describe(self) -> str:
        return f"{self.op} {self.label} {self.dtype} {self.layout}"


def plan(
    device: str,
    quick: bool,
    shapes: Sequence[Tuple[int, ...]] = (),
    dtypes: Sequence[str] = (),
    layouts: Sequence[str] = (),
    ops: Sequence[str] = (),
    kernels: bool = False,
) -> List[Case]:
    """The cases of a run, most important first (a time budget cuts from the end).

    Order: the primary configs on the headline ResNet shapes and the extremes, then
    the other ResNet shapes, then the other configs; all ops for a shape together.
    Empty filters mean the defaults; ``dtypes``/``layouts`` replace the config list.
    ``kernels`` (kernel mode): on the CPU, ResNet-50 layers at training batch
    sizes, fp32 in both layouts first, no extremes.
    """
    gpu = device == "cuda"
    cpu_kernels = kernels and not gpu
    if quick:
        big = (32, 256, 56, 56) if gpu else ((64, 256, 14, 14) if cpu_kernels else (8, 256, 14, 14))
        pairs = [
            (big, "fp32", "nchw"),
            (big, "bf16", "channels_last"),
            ((2, 2048, 1, 1), "fp32", "nchw"),
        ]
        if cpu_kernels:
            pairs = [
                (big, "fp32", "nchw"),
                (big, "fp32", "channels_last"),
                ((128, 512, 7, 7), "fp32", "channels_last"),
            ]
        if shapes or dtypes or layouts:
            pairs = [
                (s, d, lay)
                for d, lay in _configs(dtypes, layouts, [("fp32", "nchw")])
                for s in (shapes or [big])
            ]
    else:
        if cpu_kernels:
            resnet, extreme, primary = CPU_KERNEL_SHAPES, [], len(CPU_KERNEL_SHAPES)
        else:
            resnet, extreme = (
                (GPU_RESNET_SHAPES, GPU_EXTREME_SHAPES)
                if gpu
                else (CPU_RESNET_SHAPES, CPU_EXTREME_SHAPES)
            )
            primary = PRIMARY_SHAPES + len(extreme)
        ordered = resnet[:PRIMARY_SHAPES] + extreme + resnet[PRIMARY_SHAPES:]
        defaults = CPU_KERNEL_CONFIGS if cpu_kernels else (GPU_CONFIGS if gpu else CPU_CONFIGS)
        configs = _configs(dtypes, layouts, defaults)
        shape_list = [tuple(s) for s in shapes] or ordered
        keyed = [
            ((ci >= PRIMARY_CONFIGS or si >= primary, ci, si), s, d, lay)
            for ci, (d, lay) in enumerate(configs)
            for si, s in enumerate(shape_list)
        ]
        pairs = [(s, d, lay) for _, s, d, lay in sorted(keyed, key=lambda k: k[0])]
    out: List[Case] = []
    for shape, dtype, layout in pairs:
        for op in ops or OPS:
            case = Case(tuple(shape), dtype, layout if len(shape) == 4 else "nchw", op)
            if case not in out:  # 3-D shapes collapse both layouts into one case
                out.append(case)
    return out


def _configs(dtypes, layouts, default):
    if not (dtypes or layouts):
        return default
    return [(d, lay) for d in (dtypes or ["fp32"]) for lay in (layouts or ["nchw"])]


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def bytes_moved(shape: Sequence[int], dtype: torch.dtype, op: str, mode: str) -> int:
    """The minimum bytes a row must move between memory and the chip.

    Definition (the same for every contender): each full-size tensor that the
    op must read or write is counted once, as if one pass sufficed.
      forward (train and eval): read x, write y, and read the residual for bn_add_relu.
      backward (in fwd_bwd, added to the train forward): read dy and x, write dx,
        and write d(residual) for bn_add_relu; bn_add_relu also needs the sign of
        the pre-activation, counted as a 1-bit mask written by the forward and
        read by the backward (bn_relu recovers it from x, so no mask).
    Per-channel vectors are counted at their fp32 size (fp64 for fp64 input):
    weight and bias read; train adds running mean/var read+written and the saved
    mean/invstd written; eval reads the running stats; backward reads weight and
    saved mean/invstd and writes d(weight), d(bias).
    The second read of x that two-pass statistics need is not counted, so a
    kernel can only reach 100% of copy bandwidth by doing everything in one pass.
    """
    n = math.prod(shape)
    channels = shape[1]
    act = n * element_size(dtype)
    vec = channels * (8 if dtype == torch.float64 else 4)
    residual = op == "bn_add_relu"
    total = 2 * act + (act if residual else 0) + 2 * vec
    if mode == "eval":
        return total + 2 * vec
    total += 4 * vec + 2 * vec  # running stats read+write, save_mean/invstd write
    if mode == "train":
        return total
    if mode != "fwd_bwd":
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    total += 3 * act + (act if residual else 0)  # read dy, read x, write dx (+ d residual)
    total += 3 * vec + 2 * vec  # read w, mean, invstd; write dw, db
    if residual:
        total += 2 * math.ceil(n / 8)  # 1-bit mask written, then read
    return total
