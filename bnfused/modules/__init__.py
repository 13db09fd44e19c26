"""The module layer: drop-in and fused ``nn.Module`` classes and the functional interface.

Everything here calls the op layer (:mod:`bnfused.op`) and never branches on
device or backend.
"""

from . import functional
from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormAct1d,
    BatchNormAct2d,
    BatchNormAct3d,
)
from .drop_act import BatchNormDropAct2d, FrozenBatchNormDropAct2d
from .frozen import FrozenBatchNorm2d
from .sync import SyncBatchNorm, SyncBatchNormAct

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "BatchNormDropAct2d",
    "FrozenBatchNorm2d",
    "FrozenBatchNormDropAct2d",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "functional",
]
