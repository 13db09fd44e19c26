"""bnfused: exact, fused batch normalization for PyTorch.

Drop-in ``BatchNorm1d/2d/3d``, fused ``BatchNormAct1d/2d/3d`` (activation and
residual add), and ``functional.batch_norm``, all behind two ``torch.library``
ops with CUDA, Triton, C++ CPU and plain-PyTorch implementations.

Three layers, each a folder: :mod:`bnfused.op` (the op contract, backend
choice, the kernels), :mod:`bnfused.modules` (``nn.Module`` classes and the
functional interface), :mod:`bnfused.tools` (whole-model conversion, folding,
freezing, recalibration, test-time adaptation).
"""

from . import _legacy_paths, modules, op, tools
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormAct1d,
    BatchNormAct2d,
    BatchNormAct3d,
    FrozenBatchNorm2d,
    SyncBatchNorm,
    SyncBatchNormAct,
    functional,
)
from .op import backends, ops, reference, use_backend, use_cuda_path
from .tools import (
    TestTimeAdaptation,
    TrainableParams,
    configure_test_time_adaptation,
    convert_frozen_batchnorm,
    convert_model,
    fold_batchnorm,
    freeze_batchnorm,
    from_keras,
    keras_weights,
    load_keras_weights,
    recalibrate_batchnorm,
    softmax_entropy,
    to_torch,
    train_only_batchnorm,
    unfreeze_batchnorm,
)

_legacy_paths.install()

from ._version import __version__  # noqa: E402  (after the legacy paths, as before)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "FrozenBatchNorm2d",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "TestTimeAdaptation",
    "TrainableParams",
    "__version__",
    "backends",
    "configure_test_time_adaptation",
    "convert_frozen_batchnorm",
    "convert_model",
    "fold_batchnorm",
    "freeze_batchnorm",
    "from_keras",
    "functional",
    "keras_weights",
    "load_keras_weights",
    "modules",
    "op",
    "ops",
    "recalibrate_batchnorm",
    "reference",
    "softmax_entropy",
    "to_torch",
    "tools",
    "train_only_batchnorm",
    "unfreeze_batchnorm",
    "use_backend",
    "use_cuda_path",
]
