"""bnfused: exact, fused batch normalization for PyTorch.

Drop-in ``BatchNorm1d/2d/3d``, fused ``BatchNormAct1d/2d/3d`` (activation and
residual add), and ``functional.batch_norm``, all behind two ``torch.library``
ops with CUDA, Triton, C++ CPU and plain-PyTorch implementations.
"""
from . import functional, ops, reference
from .backend import backends, use_backend
from .convert import convert_model
from .fold import fold_batchnorm
from .unfuse import to_torch
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d, BatchNormAct2d,
                      BatchNormAct3d)
from .sync import SyncBatchNorm, SyncBatchNormAct

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d",
    "BatchNormAct3d", "SyncBatchNorm", "SyncBatchNormAct", "backends", "convert_model",
    "fold_batchnorm", "functional", "ops", "reference", "to_torch", "use_backend",
]
