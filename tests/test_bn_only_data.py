"""The BN-only experiment's data and command line: IDX files (Fashion-MNIST) and --dataset."""

import gzip
import importlib
import os
import struct

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark(name):
    """The example module (``examples.images`` holds what ``bn_only_data`` was)."""
    return importlib.import_module(
        {"bn_only_data": "examples.images"}.get(name, f"examples.{name}")
    )


def _write_idx(path, array, type_code, compress=True):
    """An IDX file as the format defines it: magic, big-endian dims, big-endian data."""
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    raw = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=big_endian[type_code]).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def _fake_fashion_mnist(folder, n_train=7, n_test=3, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        suffix = ".gz" if compress else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, 0x08, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
        arrays[split] = images, labels
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_loader(tmp_path, compress):
    data = _load_benchmark("bn_only_data")
    arrays = _fake_fashion_mnist(tmp_path, compress=compress)
    train_x, train_y, test_x, test_y = data.load_fashion_mnist(str(tmp_path))
    assert train_x.dtype == torch.uint8 and train_x.shape == (7, 1, 28, 28)
    assert test_x.shape == (3, 1, 28, 28) and train_y.dtype == torch.int64
    np.testing.assert_array_equal(train_x[:, 0].numpy(), arrays["train"][0])
    np.testing.assert_array_equal(test_x[:, 0].numpy(), arrays["t10k"][0])
    assert train_y.tolist() == arrays["train"][1].tolist()
    assert test_y.tolist() == arrays["t10k"][1].tolist()


@pytest.mark.parametrize(
    "type_code,dtype",
    [
        (0x08, np.uint8),
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
def test_read_idx_types_and_byte_order(tmp_path, type_code, dtype):
    data = _load_benchmark("bn_only_data")
    values = (np.arange(2 * 3 * 5) * 37 - 100).reshape(2, 3, 5)
    if np.issubdtype(dtype, np.integer):
        values = values.clip(np.iinfo(dtype).min, np.iinfo(dtype).max)
    values = values.astype(dtype)
    path = tmp_path / "x.idx"
    _write_idx(path, values, type_code, compress=False)
    out = data.read_idx(str(path))
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, values)


def test_read_idx_rejects_bad_files(tmp_path):
    data = _load_benchmark("bn_only_data")
    path = tmp_path / "bad"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(str(path))
    _write_idx(path, np.zeros((4, 5), dtype=np.uint8), 0x08, compress=False)
    path.write_bytes(path.read_bytes()[:-3])  # data cut short
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(str(path))
    _fake_fashion_mnist(tmp_path, n_train=4)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(4, 12, dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match="labels outside"):
        data.load_fashion_mnist(str(tmp_path))


def test_fashion_mnist_missing_names_the_package_and_data(tmp_path):
    data = _load_benchmark("bn_only_data")
    with pytest.raises(FileNotFoundError) as err:
        data.load_fashion_mnist(str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "--data" in str(err.value) and "train-images-idx3-ubyte" in str(err.value)


def test_dataset_arguments(tmp_path):
    bench = _load_benchmark("bn_only")
    args, depths, settings = bench.parse_args([])
    assert (args.dataset, args.data, args.stem) == ("digits", None, "bn_only")
    assert depths == [14, 32] and settings == list(bench.SETTINGS)
    args, _, _ = bench.parse_args(["--dataset", "fashion-mnist", "--quick"])
    assert args.data == bench.FASHION_MNIST_DIR and args.stem == "bn_only_fashion_mnist_quick"
    assert args.train_size == bench.QUICK_TRAIN_SIZE
    for argv in (["--cifar10", "/c"], ["--dataset", "cifar10", "--data", "/c"]):
        args, _, _ = bench.parse_args(argv)
        assert (args.dataset, args.data, args.stem) == ("cifar10", "/c", "bn_only_cifar10")
    for argv in (
        ["--dataset", "cifar10"],
        ["--cifar10", "/c", "--dataset", "digits"],
        ["--dataset", "digits", "--data", "/x"],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    # A fake Fashion-MNIST folder goes through load_data: a training prefix, standardized.
    _fake_fashion_mnist(tmp_path, n_train=9, n_test=4)
    args, _, _ = bench.parse_args(
        ["--dataset", "fashion-mnist", "--data", str(tmp_path), "--train-size", "6"]
    )
    loaded = bench.load_data(args)
    assert loaded["train_x"].shape == (6, 1, 28, 28) and loaded["test_x"].shape == (4, 1, 28, 28)
    assert abs(float(loaded["train_x"].mean())) < 1e-4
