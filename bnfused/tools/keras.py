"""Build a bnfused BatchNorm layer from Keras ``BatchNormalization`` arguments and weights.

Conventions that differ between the two (see docs/freezing.md):

* momentum: Keras keeps ``moving = moving * momentum + batch * (1 - momentum)``,
  PyTorch ``running = running * (1 - momentum) + batch * momentum``, so
  PyTorch momentum = 1 - Keras momentum (Keras 0.99 = PyTorch 0.01).
* epsilon: Keras 1e-3, PyTorch 1e-5 by default; both add it to the variance.
* running variance: Keras updates ``moving_variance`` with the biased batch
  variance (divided by n), PyTorch with the unbiased one (n - 1). A loaded
  ``moving_variance`` is used as it is; it differs from what PyTorch would have
  accumulated by the factor n / (n - 1) (n = batch size x spatial size).
* channels: Keras normalizes the last axis by default (NHWC), PyTorch dim 1;
  the per-channel vectors are the same, the input layout is the caller's.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import modules
from .freeze import freeze_batchnorm

_CLASSES = {
    1: (modules.BatchNorm1d, modules.BatchNormAct1d),
    2: (modules.BatchNorm2d, modules.BatchNormAct2d),
    3: (modules.BatchNorm3d, modules.BatchNormAct3d),
}


def keras_momentum_to_torch(momentum: float) -> float:
    """PyTorch ``momentum`` for a Keras ``momentum`` (``1 - momentum``)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"Keras momentum must be in [0, 1], got {momentum}")
    return float(f"{1.0 - float(momentum):.15g}")  # 1 - 0.99 prints as 0.01


def from_keras(
    num_features: int,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    *,
    dims: int = 2,
    weights: Optional[Sequence] = None,
    trainable: bool = True,
    activation: Optional[str] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """A bnfused BatchNorm layer that computes what a Keras ``BatchNormalization`` computes.

    Args:
        num_features: channels C (Keras: size of ``axis``).
        momentum: Keras momentum (default 0.99, i.e. PyTorch 0.01).
        epsilon: Keras epsilon (default 1e-3).
        center: learn a shift (beta). ``center=False`` builds the layer with
            ``bias=False`` (no bias parameter, as Keras has no beta).
        scale: learn a scale (gamma). ``scale=False`` unregisters ``weight``
            (None: the normalized input is not scaled, as Keras has no gamma).
            Such a layer does not support ``reset_parameters()``.
        dims: 1, 2 or 3: ``BatchNorm1d/2d/3d``.
        weights: Keras ``layer.get_weights()`` order: ``[gamma] if scale,
            [beta] if center, moving_mean, moving_variance``; numpy arrays or
            tensors of shape ``(C,)``, copied in.
        trainable: False gives Keras' frozen layer: :func:`bnfused.freeze_batchnorm`
            (inference mode in ``train()`` too, affine frozen).
        activation: None for ``BatchNorm*d``, else a ``BatchNormAct*d`` with this
            activation (Keras would use a separate Activation layer).
        device, dtype: of the parameters and buffers.

    Returns:
        ``bnfused.BatchNorm{dims}d`` (or ``BatchNormAct{dims}d``).
    """
    if dims not in _CLASSES:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    plain, fused = _CLASSES[dims]
    kwargs = dict(
        eps=float(epsilon),
        momentum=keras_momentum_to_torch(momentum),
        affine=center or scale,
        track_running_stats=True,
        device=device,
        dtype=dtype,
    )
    if scale and not center:
        kwargs["bias"] = False
    layer = (
        plain(num_features, **kwargs)
        if activation is None
        else fused(num_features, activation=activation, **kwargs)
    )
    if center and not scale:
        layer.weight = None  # registers weight=None: no gamma
    if weights is not None:
        load_keras_weights(layer, weights)
    if not trainable:
        freeze_batchnorm(layer)
    return layer


def load_keras_weights(layer: nn.Module, weights: Sequence) -> nn.Module:
    """Copy Keras ``get_weights()`` (``[gamma], [beta], moving_mean, moving_variance``) in.

    Which of gamma / beta are expected follows the layer: gamma when it has a
    ``weight``, beta when it has a ``bias``. Returns ``layer``.
    """
    targets = [t for t in (layer.weight, layer.bias) if t is not None]
    targets += [layer.running_mean, layer.running_var]
    names = (
        (["gamma"] if layer.weight is not None else [])
        + (["beta"] if layer.bias is not None else [])
        + ["moving_mean", "moving_variance"]
    )
    if len(weights) != len(targets):
        raise ValueError(
            f"expected {len(targets)} Keras weights ({', '.join(names)}), got {len(weights)}"
        )
    with torch.no_grad():
        for name, target, value in zip(names, targets, weights):
            value = torch.as_tensor(value)
            if value.shape != target.shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(value.to(dtype=target.dtype, device=target.device))
    return layer


def keras_weights(layer: nn.Module) -> list:
    """The layer's ``[gamma], [beta], moving_mean, moving_variance`` as numpy arrays (Keras order)."""
    tensors = [
        t
        for t in (layer.weight, layer.bias, layer.running_mean, layer.running_var)
        if t is not None
    ]
    return [t.detach().cpu().numpy().copy() for t in tensors]
