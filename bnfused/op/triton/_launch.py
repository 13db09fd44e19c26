"""Shape, stride and launch-geometry choices for the Triton kernels.

Reductions run over tiles of ``BLOCK_R`` rows (of ``R = N*S``) by ``BLOCK_C``
channels: the tile is long along whichever axis is contiguous in memory
(spatial for NCHW, channels for channels_last and for 2-D input). Rows are
split across programs until about ``programs_target`` programs run; each
program loops over its tiles and writes one partial per channel, and a small
merge kernel combines the partials. Elementwise kernels take ``BLOCK_B`` mask
bytes (``8 * BLOCK_B`` elements) per program. Sizes are fixed per device kind
(no autotuning: the choice is cheap, deterministic and has no side effects to
replay). Under the interpreter tiles are larger and programs fewer, because
each program costs Python time there.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import NamedTuple, Tuple

import torch
import triton
import triton.language as tl

from ..contract import memory_format

_ACC = {torch.float64: tl.float64}
_INT32_SAFE = 2**31 - 2**20  # room for the padding of the last block


class Geometry(NamedTuple):
    """Input of shape ``(N, C, *spatial)`` seen as ``(N, C, S)`` with its element strides."""

    N: int
    C: int
    S: int
    numel: int
    stride_n: int
    stride_c: int
    stride_s: int
    index_64: bool

    @property
    def rows(self) -> int:
        """R = N*S, the number of values reduced per channel."""
        return self.N * self.S


class ReduceLaunch(NamedTuple):
    """Tile ``block_r x block_c``; grid ``(splits, channel_blocks)``; tiles looped per program."""

    block_r: int
    block_c: int
    splits: int
    tiles_per_split: int
    channel_blocks: int

    @property
    def grid(self) -> Tuple[int, int]:
        return (self.splits, self.channel_blocks)


def geometry(x: torch.Tensor) -> Geometry:
    """Strides of a contiguous or channels_last(_3d) tensor ``x`` as ``(N, C, S)``."""
    N, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    if memory_format(x) == torch.contiguous_format:
        strides = (C * S, S, 1)
    else:
        strides = (S * C, 1, C)
    numel = N * C * S
    return Geometry(N, C, S, numel, *strides, index_64=numel >= _INT32_SAFE)


def acc_type(dtype: torch.dtype):
    """Triton accumulation type: fp64 for float64 input, fp32 otherwise."""
    return _ACC.get(dtype, tl.float32)


def split_float(v: float) -> Tuple[float, float]:
    """``v`` as an fp32 pair (hi, lo) with hi + lo ~= v to ~48 bits (scalars reach kernels as fp32)."""
    try:
        hi = struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return v, 0.0
    return (hi, v - hi) if math.isfinite(hi) else (v, 0.0)


def interpreted(device: torch.device) -> bool:
    return device.type == "cpu"


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def programs_target(device: torch.device) -> int:
    """About how many programs a reduction should run."""
    if interpreted(device):
        return 4
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def tile_elements(device: torch.device) -> int:
    """Elements per reduction tile (BLOCK_R * BLOCK_C)."""
    return 4096 if interpreted(device) else 2048


def elementwise_bytes(device: torch.device) -> int:
    """Mask bytes per elementwise program (8 elements each)."""
    return 512 if interpreted(device) else 128


def channel_block(C: int, device: torch.device) -> int:
    """Channels per program of the small per-channel kernels (merges, eval statistics)."""
    return min(triton.next_power_of_2(max(C, 1)), 1024 if interpreted(device) else 256)


def reduce_launch(geo: Geometry, device: torch.device) -> ReduceLaunch:
    """Tile shape and row split for a reduction over ``geo``."""
    tile = tile_elements(device)
    R, C = geo.rows, geo.C
    if geo.stride_c == 1:  # channels contiguous
        block_c = min(triton.next_power_of_2(C), 64, tile)
        block_r = min(triton.next_power_of_2(R), max(1, tile // block_c))
    else:
        block_r = min(triton.next_power_of_2(R), tile)
        block_c = min(triton.next_power_of_2(C), max(1, tile // block_r))
    channel_blocks = triton.cdiv(C, block_c)
    tiles = triton.cdiv(R, block_r)
    splits = max(1, min(tiles, programs_target(device) // channel_blocks))
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)
    return ReduceLaunch(block_r, block_c, splits, tiles_per_split, channel_blocks)


def num_warps(device: torch.device, elements: int) -> int:
    """Warps for a program that touches ``elements`` values at a time."""
    return 1 if interpreted(device) else max(1, min(8, elements // 256))
