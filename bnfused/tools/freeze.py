"""Freezing batch normalization: BN-only training, Keras-style frozen layers, FrozenBatchNorm2d.

Two different things are called "freezing" a BatchNorm layer:

* the affine parameters stop learning (PyTorch's ``requires_grad=False``); in
  ``train()`` mode the layer still normalizes with batch statistics and keeps
  updating its running statistics;
* the layer runs in inference mode (Keras' ``trainable=False``): it normalizes
  with its running statistics and never updates them, whatever mode the model
  is in.

:func:`freeze_batchnorm` does either or both and, unlike ``module.eval()``,
survives a later ``model.train()``. :func:`train_only_batchnorm` sets up the
"train only BatchNorm" experiment. :func:`convert_frozen_batchnorm` swaps layers for
:class:`bnfused.FrozenBatchNorm2d`, the buffers-only layer of torchvision / detectron2.
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Union

import torch
from torch import nn

from ..modules.frozen import FrozenBatchNorm2d
from ..op.contract import DEFAULT_NEGATIVE_SLOPE
from . import timm_layers

Tensor = torch.Tensor
_BatchNorm = nn.modules.batchnorm._BatchNorm

# Attribute names set on a frozen BatchNorm instance.
_STATE = "_bnfused_freeze"  # dict: what freeze_batchnorm changed, to undo it
_REQUESTED = "_bnfused_requested_training"  # the mode the last train(mode) call asked for


class TrainableParams(NamedTuple):
    """Parameters left trainable and how many scalars they hold."""

    params: List[nn.Parameter]
    count: int


def _batchnorms(module: nn.Module) -> List[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def _find_classifier(model: nn.Module, classifier: Union[str, nn.Module, None]) -> nn.Module:
    if isinstance(classifier, nn.Module):
        return classifier
    if isinstance(classifier, str):
        return model.get_submodule(classifier)
    if classifier is not None:
        raise TypeError(
            "classifier must be None, a submodule name or an nn.Module, got "
            f"{type(classifier).__name__}"
        )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "train_classifier=True but the model has no nn.Linear; name the "
            "output layer with classifier="
        )
    return linears[-1]


def train_only_batchnorm(
    model: nn.Module, train_classifier: bool = False, classifier: Union[str, nn.Module, None] = None
) -> TrainableParams:
    """Freeze every parameter except BatchNorm ``weight``/``bias`` (Frankle et al., 2021).

    Every ``torch.nn.modules.batchnorm._BatchNorm`` counts (torch's and
    bnfused's BatchNorm, BatchNormAct, SyncBatchNorm). The layers stay in
    whatever mode the model is in: in ``train()`` mode they normalize with
    batch statistics and update their running statistics, as in the paper.

    Args:
        model: the network; changed in place (``requires_grad`` of every parameter).
        train_classifier: also keep the output layer trainable.
        classifier: the output layer, as a module or a submodule name; default
            the last ``nn.Linear`` in ``model.modules()`` order.

    Returns:
        ``TrainableParams(params, count)``: the parameters left trainable (pass
        them to the optimizer) and their total number of elements.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    keep: List[nn.Parameter] = []
    for bn in _batchnorms(model):
        keep.extend(p for p in (bn.weight, bn.bias) if p is not None)
    if train_classifier:
        keep.extend(_find_classifier(model, classifier).parameters())
    unique = list({id(p): p for p in keep}.values())
    for p in unique:
        p.requires_grad_(True)
    return TrainableParams(unique, sum(p.numel() for p in unique))


def _train_locked(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a BatchNorm whose statistics are frozen: remember the mode, stay in eval."""
    if not isinstance(mode, bool):
        raise ValueError("training mode is expected to be boolean")
    setattr(module, _REQUESTED, mode)
    return nn.Module.train(module, False)


def _freeze_one(bn: _BatchNorm, stats: bool, affine: bool) -> None:
    state = getattr(bn, _STATE, None)
    if state is None:
        state = {
            "stats": False,
            "affine": False,
            "requires_grad": [
                p.requires_grad if p is not None else None for p in (bn.weight, bn.bias)
            ],
        }
        setattr(bn, _STATE, state)
    if stats and not state["stats"]:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"cannot freeze the statistics of {bn}: it has no running "
                "statistics (track_running_stats=False)"
            )
        setattr(bn, _REQUESTED, bn.training)
        # An instance attribute shadows nn.Module.train, so model.train() /
        # model.eval() reach it through their loop over children. A partial of a
        # module-level function pickles and deep-copies with the module.
        bn.train = functools.partial(_train_locked, bn)
        nn.Module.train(bn, False)
        state["stats"] = True
    if affine:
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.requires_grad_(False)
                p.grad = None  # a stale grad would still move it under momentum/weight decay
        state["affine"] = True


def freeze_batchnorm(module: nn.Module, stats: bool = True, affine: bool = True) -> nn.Module:
    """Freeze the BatchNorm layers in ``module`` (or ``module`` itself), Keras-style.

    Args:
        module: a BatchNorm layer or any model containing some (torch's or bnfused's).
        stats: normalize with the running statistics and never update them
            (``running_mean``, ``running_var`` and ``num_batches_tracked`` stay
            put), in ``train()`` mode too: ``model.train()`` leaves these layers
            in eval mode (their ``training`` reads False) until
            :func:`unfreeze_batchnorm`. Needs running statistics.
        affine: ``weight`` and ``bias`` get ``requires_grad=False`` and their
            ``.grad`` is cleared, so no optimizer (momentum, weight decay) moves them.

    Returns:
        ``module``, changed in place. ``state_dict`` is unchanged in format.
    """
    for bn in _batchnorms(module):
        _freeze_one(bn, stats, affine)
    return module


def unfreeze_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm` on every BatchNorm layer in ``module``.

    Each layer gets back the ``requires_grad`` its parameters had before the
    first freeze and the train/eval mode the model last asked it for.
    """
    for bn in _batchnorms(module):
        state = getattr(bn, _STATE, None)
        if state is None:
            continue
        if state["stats"]:
            del bn.train  # the instance attribute; nn.Module.train shows through again
            nn.Module.train(bn, getattr(bn, _REQUESTED, bn.training))
        for p, flag in zip((bn.weight, bn.bias), state["requires_grad"]):
            if p is not None and flag is not None:
                p.requires_grad_(flag)
        for name in (_STATE, _REQUESTED):
            if hasattr(bn, name):
                delattr(bn, name)
    return module


def is_frozen(bn: nn.Module) -> bool:
    """Whether :func:`freeze_batchnorm` froze this layer's statistics."""
    state = getattr(bn, _STATE, None)
    return bool(state and state["stats"])


def _to_frozen(bn: _BatchNorm) -> FrozenBatchNorm2d:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"cannot convert {bn} to FrozenBatchNorm2d: it has no running "
            "statistics (track_running_stats=False)"
        )
    frozen = FrozenBatchNorm2d(
        bn.num_features,
        bn.eps,
        activation=getattr(bn, "activation", None),
        negative_slope=getattr(bn, "negative_slope", DEFAULT_NEGATIVE_SLOPE),
        device=bn.running_mean.device,
        dtype=bn.running_mean.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(bn, name)
            if param is not None:
                getattr(frozen, name).copy_(param.detach())
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return timm_layers.frozen_twin(bn, frozen)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` in ``module`` by :class:`FrozenBatchNorm2d`.

    Weights, biases (ones / zeros when absent), running statistics, eps and a
    fused activation (``BatchNormAct2d``) carry over; momentum and
    ``num_batches_tracked`` are dropped. Like detectron2's converter, a
    ``SyncBatchNorm`` is taken to be 2d. Returns the converted module (a new
    object when ``module`` itself is a BatchNorm, else ``module`` changed in place).
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return _to_frozen(module)
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
