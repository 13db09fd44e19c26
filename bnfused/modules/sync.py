"""Synchronized batch normalization modules over ``torch.distributed``: CPU (gloo) and GPU (NCCL).

``SyncBatchNorm`` is a drop-in ``torch.nn.SyncBatchNorm`` (same constructor,
``state_dict`` and ``convert_sync_batchnorm``; a ``_BatchNorm`` like it, see the
class for why not its subclass); ``SyncBatchNormAct`` adds the fused activation
and residual of ``BatchNormAct*d``. In training, statistics are merged over the
process group (:mod:`bnfused.op.sync`). Eval mode, a world of one, or
no initialized process group: no communication, the single-device path
(:func:`bnfused.functional.batch_norm`) runs.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Type, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..op.contract import DEFAULT_NEGATIVE_SLOPE
from ..op.sync import sync_batch_norm
from .batchnorm import _ActMixin, batch_norm_forward

Tensor = torch.Tensor

_TORCH_HAS_BN_BIAS_ARG = "bias" in inspect.signature(nn.BatchNorm2d.__init__).parameters


def _need_sync(module: SyncBatchNorm):
    """The process group to synchronize over, or None when no communication is needed."""
    if not (module.training and dist.is_available() and dist.is_initialized()):
        return None
    group = module.process_group if module.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _sync_forward(
    module: SyncBatchNorm,
    input: Tensor,
    residual: Optional[Tensor],
    activation: str,
    activation_param: float,
) -> Tensor:
    """``nn.SyncBatchNorm.forward`` through the fused op, with activation and residual."""
    module._check_input_dim(input)
    module._check_non_zero_input_channels(input)
    group = _need_sync(module)
    if group is None:
        return batch_norm_forward(module, input, residual, activation, activation_param)
    factor: Union[float, Tensor] = 0.0 if module.momentum is None else module.momentum
    if module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:  # cumulative moving average
            # On the device: no read of the counter back to the host.
            factor = module.num_batches_tracked.to(torch.float64).reciprocal()
    track = module.track_running_stats
    return sync_batch_norm(
        input,
        module.running_mean if track else None,
        module.running_var if track else None,
        module.weight,
        module.bias,
        factor,
        module.eps,
        group,
        activation,
        residual,
        activation_param,
    )


class SyncBatchNorm(_BatchNorm):
    """Drop-in ``torch.nn.SyncBatchNorm`` that also runs on CPU tensors (gloo).

    Same constructor (``num_features, eps, momentum, affine,
    track_running_stats, process_group, device, dtype``, and what the installed
    torch adds, e.g. keyword ``bias``), same ``state_dict``, same
    ``convert_sync_batchnorm``. Ranks may hold batches of different sizes,
    including empty ones; statistics are merged exactly (Chan merge in
    float64). Input ``(N, C, *spatial)``.

    It derives from ``torch.nn.modules.batchnorm._BatchNorm`` (as
    ``nn.SyncBatchNorm`` does), not from ``nn.SyncBatchNorm``: DistributedDataParallel
    refuses every ``nn.SyncBatchNorm`` instance in a CPU module.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        **kwargs,
    ):
        # kwargs: what the installed torch's BatchNorm also takes (``bias`` since 2.14).
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            **kwargs,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        return _sync_forward(self, input, None, "identity", 0.0)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every ``BatchNorm*d`` in ``module`` by a bnfused synchronized one.

        ``torch.nn.BatchNorm*d``, ``torch.nn.SyncBatchNorm``, ``bnfused.BatchNorm*d``
        and :class:`SyncBatchNorm` become :class:`SyncBatchNorm`; ``bnfused.BatchNormAct*d``
        (and ``SyncBatchNormAct``) become :class:`SyncBatchNormAct` with the same
        activation and negative slope. Parameters and buffers are shared, not
        copied. Returns ``module`` (converted in place), or the new layer when
        ``module`` itself is a batch norm.
        """
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            kwargs: Dict[str, Any] = (
                {"bias": module.bias is not None} if _TORCH_HAS_BN_BIAS_ARG else {}
            )
            target: Type[_BatchNorm]
            if isinstance(module, _ActMixin):
                kwargs.update(activation=module.activation, negative_slope=module.negative_slope)
                target = SyncBatchNormAct
            else:
                target = SyncBatchNorm
            out = target(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                **kwargs,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


class SyncBatchNormAct(_ActMixin, SyncBatchNorm):
    """:class:`SyncBatchNorm` + fused activation and residual: ``act(bn(x) + residual)``.

    Args: the ``nn.SyncBatchNorm`` arguments, then keyword-only ``activation``
    ("relu", "leaky_relu", "silu", "identity"/None; default "relu") and
    ``negative_slope`` (leaky_relu). ``forward(x, residual=None)``; ``residual``
    has the shape and dtype of ``x``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        activation: Optional[str] = "relu",
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        **kwargs,
    ):
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            process_group,
            device,
            dtype,
            **kwargs,
        )
        self._init_activation(activation, negative_slope)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``act(bn(input) + residual)``, statistics synchronized in training."""
        return _sync_forward(self, input, residual, self.activation, self.negative_slope)
