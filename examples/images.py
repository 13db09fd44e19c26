"""Image data for the examples (bn_only, test_time_adaptation): digits, shapes,
Fashion-MNIST, CIFAR-10.

``digits_dataset`` takes scikit-learn's 8 x 8 handwritten digits (1797 real
images, 10 classes, shipped inside the scikit-learn package, nothing
downloaded), upsamples them bilinearly and splits them with a fixed seed.

``shapes_dataset`` draws 10 classes = 5 shapes (disk, square, triangle, ring,
plus) x 2 fills (solid, striped) at a random position, size and rotation, in
random colours on a random gradient background, with a random distractor blob
and pixel noise. Colour and position carry no label information; the class is
in the geometry and the texture, so a network has to learn shape and stripe
detectors. Everything is numpy/torch, generated from a seed, nothing downloaded.

``load_fashion_mnist`` reads Fashion-MNIST's IDX files (gzipped or not; Debian's
``dataset-fashion-mnist`` package installs them under ``FASHION_MNIST_DIR``)
with ``read_idx``: gzip and numpy, no other dependency.

``load_cifar10`` reads the standard python-pickle CIFAR-10 files.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
NUM_CLASSES = 10
SHAPES = ("disk", "square", "triangle", "ring", "plus")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# IDX element types (the third byte of the magic number) and their big-endian numpy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CLASS_NAMES = tuple(f"{fill} {shape}" for fill in ("solid", "striped") for shape in SHAPES)


def _shape_masks(u: Tensor, v: Tensor) -> Tensor:
    """(5, N, H, W) bool: each shape in its own unit frame (u, v scaled by the radius)."""
    rad = torch.sqrt(u * u + v * v)
    s3 = math.sqrt(3.0) / 2
    return torch.stack(
        [
            rad < 1.0,
            torch.maximum(u.abs(), v.abs()) < 0.78,
            (v > -0.5) & (s3 * u + 0.5 * v < 0.5) & (-s3 * u + 0.5 * v < 0.5),
            (rad < 1.0) & (rad > 0.58),
            ((u.abs() < 0.3) & (v.abs() < 1.0)) | ((v.abs() < 0.3) & (u.abs() < 1.0)),
        ]
    )


def shapes_dataset(
    n: int, size: int = 16, seed: int = 0, noise: float = 0.12
) -> Tuple[Tensor, Tensor]:
    """``n`` images ``(n, 3, size, size)`` float32 in about [0, 1] and labels ``(n,)`` int64."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    shape_id, striped = labels % len(SHAPES), labels // len(SHAPES)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres
    yy, xx = axis.view(1, -1, 1), axis.view(1, 1, -1)
    cx, cy = uniform(-0.3, 0.3, n, 1, 1), uniform(-0.3, 0.3, n, 1, 1)
    radius = uniform(0.4, 0.68, n, 1, 1)
    theta = uniform(0, 2 * math.pi, n, 1, 1)
    c, s = torch.cos(theta), torch.sin(theta)
    dx, dy = xx - cx, yy - cy
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    inside = _shape_masks(u, v)[shape_id, torch.arange(n)]
    # Stripes across the shape, about 3 pixels per period, at the shape's rotation.
    phase = uniform(0, 2 * math.pi, n, 1, 1)
    stripes = torch.cos(u * radius * size * math.pi / 3.0 + phase) > 0
    fill = inside & (~striped.view(n, 1, 1).bool() | stripes)

    bg = uniform(0, 1, n, 3, 1, 1)
    fg = torch.remainder(bg + 0.5 + uniform(-0.15, 0.15, n, 3, 1, 1), 1.0)
    ramp = uniform(-0.2, 0.2, n, 1, 1, 1) * xx.unsqueeze(1) + uniform(
        -0.2, 0.2, n, 1, 1, 1
    ) * yy.unsqueeze(1)
    img = bg + ramp
    img = torch.where(fill.unsqueeze(1), fg.expand(n, 3, 1, 1), img)
    # A small blob in a random colour, anywhere: clutter that carries no label.
    bx, by = uniform(-0.9, 0.9, n, 1, 1), uniform(-0.9, 0.9, n, 1, 1)
    blob = (xx - bx) ** 2 + (yy - by) ** 2 < uniform(0.01, 0.04, n, 1, 1)
    img = torch.where(blob.unsqueeze(1), uniform(0, 1, n, 3, 1, 1), img)
    img = img + noise * torch.randn(n, 3, size, size, generator=g)
    return img.float().contiguous(), labels


def digits_dataset(
    size: int = 16, test_size: int = 397, seed: int = 0
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits, upsampled to ``size`` x ``size``, split with ``seed``.

    Returns ``(train_x, train_y, test_x, test_y)``: images float32
    ``(N, 1, size, size)`` in [0, 1], labels int64 ``(N,)``; 1797 images in
    all, ``test_size`` of them held out (a stratified split: each class keeps
    its share in both parts). Raises ImportError when scikit-learn is missing.
    """
    from sklearn.datasets import load_digits  # optional: the only use of scikit-learn

    digits = load_digits()
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    if not 0 < test_size < len(labels):
        raise ValueError(f"test_size must be in 1..{len(labels) - 1}, got {test_size}")
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        test_idx.append(members[: round(test_size * len(members) / len(labels))])
    test_idx = torch.cat(test_idx)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test_idx] = True
    train_idx = torch.nonzero(~is_test).flatten()
    train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=g)]
    return (
        images[train_idx].contiguous(),
        labels[train_idx],
        images[test_idx].contiguous(),
        labels[test_idx],
    )


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format) as a numpy array in native byte order.

    The header is two zero bytes, a type code, the number of dimensions and
    then each dimension as a big-endian uint32; the data follows, big-endian.
    A gzipped file (by its magic bytes, whatever its name) is decompressed.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says {shape} of {dtype.name}, i.e. "
            f"{count * dtype.itemsize} data bytes, the file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _idx_file(folder: str, stem: str) -> str:
    """``folder/stem.gz`` or ``folder/stem``; FileNotFoundError naming how to get them."""
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    files = (
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
    )
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no {stem}(.gz) in {folder}. Install it with "
        f"`apt-get install dataset-fashion-mnist` (Debian, Ubuntu: files in {FASHION_MNIST_DIR}) "
        f"or pass --data PATH, a folder with {files} (gzipped or not)"
    )


def load_fashion_mnist(path: str = FASHION_MNIST_DIR) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST (or MNIST: the same files) from the IDX files in the folder ``path``.

    Returns ``(train_x, train_y, test_x, test_y)``: images uint8
    ``(N, 1, 28, 28)`` (60,000 and 10,000 for the real set), labels int64.
    """
    parts = []
    for split in ("train", "t10k"):
        images = read_idx(_idx_file(path, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(path, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{path}: {split} images {images.shape} and labels {labels.shape} "
                "do not match (expected (N, H, W) and (N,))"
            )
        if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES:
            raise ValueError(f"{path}: {split} labels outside 0..{NUM_CLASSES - 1}")
        parts += [
            torch.from_numpy(images.astype(np.uint8)).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    return parts[0], parts[1], parts[2], parts[3]


def _read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # a local file the caller chose
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path}: expected b'data' uint8 (N, 3072) and N b'labels', got "
            f"{data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A local CIFAR-10 in the python-pickle format (``data_batch_1..5``, ``test_batch``).

    ``path`` is the folder with the batch files, or its parent holding
    ``cifar-10-batches-py``. Returns ``(train_x, train_y, test_x, test_y)``:
    images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``.
    """
    nested = os.path.join(path, "cifar-10-batches-py")
    if not os.path.isfile(os.path.join(path, "test_batch")) and os.path.isdir(nested):
        path = nested
    parts = [_read_batch(os.path.join(path, f"data_batch_{i}")) for i in range(1, 6)]
    test_x, test_y = _read_batch(os.path.join(path, "test_batch"))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return (
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
    )


def standardize(train_x: Tensor, test_x: Tensor) -> Tuple[Tensor, Tensor]:
    """Float32 images with the training set's per-channel mean 0 and std 1."""
    train_x, test_x = train_x.float(), test_x.float()
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train_x - mean) / std, (test_x - mean) / std
