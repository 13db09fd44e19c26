"""Model tools: conversion (fx fusion), folding, unfusing, freezing, Keras weights,
quantization fusion patterns, recalibration of running statistics, test-time adaptation.

They rewrite whole models around the module layer (:mod:`bnfused.modules`).
"""

from .adaptation import TestTimeAdaptation, configure_test_time_adaptation, softmax_entropy
from .convert import convert_model
from .fold import fold_batchnorm
from .freeze import (
    TrainableParams,
    convert_frozen_batchnorm,
    freeze_batchnorm,
    train_only_batchnorm,
    unfreeze_batchnorm,
)
from .keras import from_keras, keras_weights, load_keras_weights
from .quantization import register_fusions
from .recalibrate import recalibrate_batchnorm
from .unfuse import to_torch

__all__ = [
    "TestTimeAdaptation",
    "TrainableParams",
    "configure_test_time_adaptation",
    "convert_frozen_batchnorm",
    "convert_model",
    "fold_batchnorm",
    "freeze_batchnorm",
    "from_keras",
    "keras_weights",
    "load_keras_weights",
    "recalibrate_batchnorm",
    "softmax_entropy",
    "to_torch",
    "train_only_batchnorm",
    "unfreeze_batchnorm",
]

register_fusions()
