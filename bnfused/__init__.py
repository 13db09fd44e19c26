"""bnfused: exact, fused batch normalization for PyTorch.

Drop-in ``BatchNorm1d/2d/3d``, fused ``BatchNormAct1d/2d/3d`` (activation and
residual add), and ``functional.batch_norm``, all behind two ``torch.library``
ops with CUDA, Triton, C++ CPU and plain-PyTorch implementations.
"""
from . import functional, ops, reference
from .backend import backends, use_backend
from .convert import convert_model
from .fold import fold_batchnorm
from .freeze import (FrozenBatchNorm2d, TrainableParams, convert_frozen_batchnorm,
                     freeze_batchnorm, train_only_batchnorm, unfreeze_batchnorm)
from .keras import from_keras, keras_weights, load_keras_weights
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d, BatchNormAct2d,
                      BatchNormAct3d)
from .sync import SyncBatchNorm, SyncBatchNormAct
from .unfuse import to_torch

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d",
    "BatchNormAct3d", "FrozenBatchNorm2d", "SyncBatchNorm", "SyncBatchNormAct",
    "TrainableParams", "backends", "convert_frozen_batchnorm", "convert_model",
    "fold_batchnorm", "freeze_batchnorm", "from_keras", "functional", "keras_weights",
    "load_keras_weights", "ops", "reference", "to_torch", "train_only_batchnorm",
    "unfreeze_batchnorm", "use_backend",
]
