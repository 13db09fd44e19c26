"""Batch norm, drop and activation as one module with ``drop`` and ``act`` children.

The layout of timm's ``BatchNormAct2d`` / ``FrozenBatchNormAct2d`` (the batch
norm's tensors at the top, ``drop`` and ``act`` child modules), so a converted
layer keeps their ``state_dict`` keys. An activation that bnfused fuses runs in
the op (``activation``; the children are then ``nn.Identity``); any other
activation, or one behind a real ``drop``, stays a module that runs after it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .batchnorm import BatchNormAct2d, batch_norm_forward
from .frozen import FrozenBatchNorm2d

Tensor = torch.Tensor


class BatchNormDropAct2d(BatchNormAct2d):
    """``act(drop(bn(x)))``: ``BatchNormAct2d`` with ``drop`` and ``act`` children.

    Arguments as :class:`BatchNormAct2d`, then ``drop`` and ``act`` modules
    (default ``nn.Identity``). ``activation`` is fused into the batch norm and
    applied before ``drop``, so it is only set (not "identity") when ``drop``
    is an identity.
    """

    def __init__(
        self,
        num_features: int,
        *args,
        drop: Optional[nn.Module] = None,
        act: Optional[nn.Module] = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("activation", "identity")
        super().__init__(num_features, *args, **kwargs)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``act(drop(bn(input) [+ residual]))`` with the fused ``activation`` inside ``bn``
        (applied after the residual add; ``residual`` shaped and typed like ``input``)."""
        if torch.jit.is_scripting():
            y = self._scripted_forward(input, residual, self.activation, self.negative_slope)
        else:
            y = batch_norm_forward(self, input, residual, self.activation, self.negative_slope)
        return self.act(self.drop(y))


class FrozenBatchNormDropAct2d(FrozenBatchNorm2d):
    """``act(drop(frozen_bn(x)))``: :class:`FrozenBatchNorm2d` with ``drop`` and ``act``
    children. Arguments as ``FrozenBatchNorm2d``, then ``drop`` and ``act`` modules."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        drop: Optional[nn.Module] = None,
        act: Optional[nn.Module] = None,
        **kwargs,
    ) -> None:
        super().__init__(num_features, eps, **kwargs)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``act(drop(frozen_bn(input) [+ residual]))``."""
        return self.act(self.drop(super().forward(input, residual)))
