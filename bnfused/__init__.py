"""bnfused: exact, fused batch normalization for PyTorch.

Drop-in ``BatchNorm1d/2d/3d``, fused ``BatchNormAct1d/2d/3d`` (activation and
residual add), and ``functional.batch_norm``, all behind two ``torch.library``
ops with CUDA, Triton, C++ CPU and plain-PyTorch implementations.
"""
from . import functional, ops, reference
from .backend import backends, use_backend
from .freeze import (FrozenBatchNorm2d, TrainableParams, convert_frozen_batchnorm,
                     freeze_batchnorm, train_only_batchnorm, unfreeze_batchnorm)
from .keras import from_keras, keras_weights, load_keras_weights
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d, BatchNormAct2d,
                      BatchNormAct3d)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d",
    "BatchNormAct3d", "backends", "functional", "ops", "reference", "use_backend",
    "FrozenBatchNorm2d", "TrainableParams", "convert_frozen_batchnorm", "freeze_batchnorm",
    "from_keras", "keras_weights", "load_keras_weights", "train_only_batchnorm",
    "unfreeze_batchnorm",
]
