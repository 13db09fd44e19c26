"""FrozenBatchNorm2d: the buffers-only batch norm of torchvision / detectron2, fused."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..op.contract import DEFAULT_NEGATIVE_SLOPE, canonical_name
from . import functional
from .scripted import batch_norm_act

Tensor = torch.Tensor


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine: ``y = act((x - mean) / sqrt(var + eps) * w + b)``.

    The torchvision / detectron2 convention: ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are buffers (no parameters, nothing to
    train), so the ``state_dict`` has exactly torchvision's keys;
    ``num_batches_tracked`` is accepted and ignored when loading. The forward
    is the fused eval-mode op in one pass, the same in ``train()`` and
    ``eval()``; gradients flow to the input only.

    Args:
        num_features: C of an ``(N, C, H, W)`` input.
        eps: added to the variance (torchvision's default 1e-5).
        activation: fused activation (``None``/"identity", "relu", "leaky_relu",
            "silu"); ``forward(x, residual=None)`` computes
            ``act(bn(x) + residual)`` as ``BatchNormAct2d`` does.
        negative_slope: slope of "leaky_relu".
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        activation: Optional[str] = None,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.activation = canonical_name(activation)
        self.negative_slope = float(negative_slope)
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _frozen_tensors(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """weight, bias, running_mean, running_var (typed: nn.Module attributes are not)."""
        return self.weight, self.bias, self.running_mean, self.running_var  # type: ignore[return-value]

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``input``: ``(N, C, H, W)``; ``residual``: like ``input`` or None."""
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        weight, bias, mean, var = self._frozen_tensors()
        if torch.jit.is_scripting():
            return batch_norm_act(
                input,
                residual,
                weight,
                bias,
                mean,
                var,
                None,
                False,
                False,
                None,
                self.eps,
                self.activation,
                self.negative_slope,
            )
        return functional.batch_norm(
            input,
            mean,
            var,
            weight,
            bias,
            training=False,
            eps=self.eps,
            activation=self.activation,
            residual=residual,
            activation_param=self.negative_slope,
        )

    def extra_repr(self) -> str:
        extra = f"{self.num_features}, eps={self.eps}"
        if self.activation != "identity":
            extra += f", activation={self.activation}"
        if self.activation == "leaky_relu":
            extra += f", negative_slope={self.negative_slope}"
        return extra
