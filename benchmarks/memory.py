"""Memory kept for backward by a stack of BN+ReLU layers: bnfused vs torch eager."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

import bnfused

from .contenders import BNReLU


@dataclass
class MemoryResult:
    """Bytes per contender. ``saved``: unique storages packed for backward (autograd
    saved-tensor hooks); ``held``: CUDA memory_allocated growth from before the
    forward to after it (saved tensors + output); ``peak``: CUDA max_memory_allocated
    over the whole step above what existed before it. ``held``/``peak`` are None on CPU."""

    shape: Tuple[int, ...]
    layers: int
    dtype: str
    saved: Dict[str, int]
    held: Dict[str, Optional[int]]
    peak: Dict[str, Optional[int]]


def _stack(kind: str, channels: int, layers: int) -> nn.Module:
    if kind == "bnfused":
        return nn.Sequential(
            *[bnfused.BatchNormAct2d(channels, activation="relu") for _ in range(layers)]
        )
    inplace = kind == "eager"
    blocks = []
    for _ in range(layers):
        block = BNReLU(nn.BatchNorm2d(channels))
        block.relu.inplace = inplace
        blocks.append(block)
    return nn.Sequential(*blocks)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> Tuple[int, torch.Tensor]:
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    return sum(storages.values()), y


def measure_memory(
    device: torch.device, shape=(4, 64, 56, 56), layers: int = 8, dtype: torch.dtype = torch.float32
) -> MemoryResult:
    """One training step (forward + backward) of ``layers`` BN+ReLU layers on ``shape`` input.

    Contenders: ``eager`` (BN + ReLU(inplace=True)), ``eager_out_of_place``
    (BN + ReLU), ``bnfused`` (BatchNormAct2d, automatic backend). The input
    requires grad, as it would coming out of a convolution.
    """
    saved: Dict[str, int] = {}
    held: Dict[str, Optional[int]] = {}
    peak: Dict[str, Optional[int]] = {}
    cuda = device.type == "cuda"
    for kind in ("eager", "eager_out_of_place", "bnfused"):
        torch.manual_seed(0)
        model = _stack(kind, shape[1], layers).to(device)
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(shape, device=device, dtype=dtype)
        saved[kind], _ = _saved_bytes(model, x)  # warm-up and the hook count
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            y = model(x)
            held[kind] = torch.cuda.memory_allocated(device) - base
            y.backward(grad)
            del y
            torch.cuda.synchronize(device)
            peak[kind] = torch.cuda.max_memory_allocated(device) - base
        else:
            model(x).backward(grad)
            held[kind] = peak[kind] = None
        del model, x, grad
    return MemoryResult(tuple(shape), layers, str(dtype).replace("torch.", ""), saved, held, peak)


def memory_lines(result: MemoryResult) -> List[List[str]]:
    """Table rows: measure, eager, eager out-of-place, bnfused, bnfused/eager."""

    def mib(v):
        return "-" if v is None else f"{v / 2**20:.1f} MiB"

    def ratio(a, b):
        return "-" if not a or b is None else f"{b / a:.2f}"

    rows = [
        [
            "saved for backward",
            mib(result.saved["eager"]),
            mib(result.saved["eager_out_of_place"]),
            mib(result.saved["bnfused"]),
            ratio(result.saved["eager"], result.saved["bnfused"]),
        ]
    ]
    if result.peak["eager"] is not None:
        rows.append(
            [
                "held after forward (CUDA)",
                mib(result.held["eager"]),
                mib(result.held["eager_out_of_place"]),
                mib(result.held["bnfused"]),
                ratio(result.held["eager"], result.held["bnfused"]),
            ]
        )
        rows.append(
            [
                "peak during the step (CUDA)",
                mib(result.peak["eager"]),
                mib(result.peak["eager_out_of_place"]),
                mib(result.peak["bnfused"]),
                ratio(result.peak["eager"], result.peak["bnfused"]),
            ]
        )
    return rows
