"""Drop-in BatchNorm modules and their fused activation / residual variants.

``BatchNorm1d/2d/3d`` subclass the torch classes: same constructor, defaults,
``state_dict`` and ``isinstance`` behaviour, and the same numbers. The
``BatchNormAct*d`` classes add a fused activation and an optional residual:
``forward(x, residual=None) = act(bn(x) + residual)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import fx, nn

from ..op.contract import DEFAULT_NEGATIVE_SLOPE, canonical_name, running_update
from . import functional
from .scripted import ScriptableBatchNorm

Tensor = torch.Tensor


def batch_norm_forward(
    module: nn.modules.batchnorm._BatchNorm,
    input: Tensor,
    residual: Optional[Tensor],
    activation: str,
    activation_param: float,
) -> Tensor:
    """What ``torch.nn.modules.batchnorm._BatchNorm.forward`` does, through the fused op."""
    if isinstance(input, fx.Proxy):
        raise TypeError(
            f"torch.fx cannot trace into {type(module).__name__} (FX graph mode quantization "
            "such as prepare_qat_fx traces every module outside torch.nn): convert the model "
            "with bnfused.to_torch(model) first, or trace bnfused modules as leaves"
        )
    module._check_input_dim(input)
    # Each attribute read once: parameters and buffers go through nn.Module.__getattr__.
    training, momentum = module.training, module.momentum
    running_mean, running_var = module.running_mean, module.running_var
    tracking = training and module.track_running_stats
    if tracking:
        num_batches_tracked = module.num_batches_tracked
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
    use_batch_stats = training or (running_mean is None and running_var is None)
    if training and not tracking:
        running_mean = running_var = None
    if tracking and momentum is None and running_mean is not None and running_var is not None:
        # Cumulative average. The op's own running-stat rule with momentum 1
        # writes the batch mean and the unbiased batch variance (from M2, so a
        # constant channel gives exactly 0) into scratch vectors; the factor
        # 1/num_batches_tracked is then applied on the device, never read back to
        # the host (torch syncs there), so the step stays capturable.
        batch_mean, batch_var = torch.zeros_like(running_mean), torch.zeros_like(running_var)
        y = functional.batch_norm(
            input,
            batch_mean,
            batch_var,
            module.weight,
            module.bias,
            True,
            1.0,
            module.eps,
            activation=activation,
            residual=residual,
            activation_param=activation_param,
        )
        cumulative_update(module, input, batch_mean, batch_var)
        return y
    return functional.batch_norm(
        input,
        running_mean,
        running_var,
        module.weight,
        module.bias,
        use_batch_stats,
        0.0 if momentum is None else momentum,
        module.eps,
        activation=activation,
        residual=residual,
        activation_param=activation_param,
    )


@torch.no_grad()
def cumulative_update(
    module: nn.modules.batchnorm._BatchNorm, input: Tensor, batch_mean: Tensor, batch_var: Tensor
) -> None:
    """``running += (batch - running) / num_batches_tracked`` (momentum=None).

    ``batch_mean`` and ``batch_var`` (unbiased) are ``(C,)`` in the running
    statistics' dtype, as the op's running-stat update with momentum 1 writes them.
    """
    if input.numel() == 0:
        return  # an empty batch leaves the statistics alone, as in torch
    # torch's (1 - f) * running + f * batch, not lerp_: once a variance overflows, lerp's
    # running + f * (batch - running) is Inf - Inf = NaN where torch keeps Inf.
    count, mean, var = module.num_batches_tracked, module.running_mean, module.running_var
    assert count is not None and mean is not None and var is not None  # tracking, checked above
    factor = count.to(torch.float64).reciprocal()
    for running, batch in ((mean, batch_mean), (var, batch_var)):
        running.copy_(running_update(running, batch.to(torch.float64), factor))


class BatchNorm1d(ScriptableBatchNorm, nn.BatchNorm1d):
    """Drop-in ``torch.nn.BatchNorm1d``: input ``(N, C)`` or ``(N, C, L)``."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input, None, "identity", 0.0)
        return batch_norm_forward(self, input, None, "identity", 0.0)


class BatchNorm2d(ScriptableBatchNorm, nn.BatchNorm2d):
    """Drop-in ``torch.nn.BatchNorm2d``: input ``(N, C, H, W)``, NCHW or channels_last."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input, None, "identity", 0.0)
        return batch_norm_forward(self, input, None, "identity", 0.0)


class BatchNorm3d(ScriptableBatchNorm, nn.BatchNorm3d):
    """Drop-in ``torch.nn.BatchNorm3d``: input ``(N, C, D, H, W)``."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input, None, "identity", 0.0)
        return batch_norm_forward(self, input, None, "identity", 0.0)


class _ActMixin(ScriptableBatchNorm):
    """What every fused class adds to a batch norm: an activation and a residual input."""

    def _init_activation(self, activation: Optional[str], negative_slope: float) -> None:
        self.activation = canonical_name(activation)
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation}"
        if self.activation == "leaky_relu":
            extra += f", negative_slope={self.negative_slope}"
        return super().extra_repr() + extra

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``act(bn(input) + residual)``; ``residual`` has the shape and dtype of ``input``."""
        if torch.jit.is_scripting():
            return self._scripted_forward(input, residual, self.activation, self.negative_slope)
        return batch_norm_forward(self, input, residual, self.activation, self.negative_slope)


class _BatchNormActBase(_ActMixin):
    """A stock batch norm + fused activation and residual: ``act(bn(input) + residual)``.

    Args: the ``torch.nn.BatchNorm*d`` arguments (``num_features``, ``eps``,
    ``momentum``, ``affine``, ``track_running_stats``, ``device``, ``dtype``),
    then, keyword-only, ``activation`` ("relu" by default, "leaky_relu", "silu",
    "identity" or None) and ``negative_slope`` (of leaky_relu). The state_dict
    is the stock layer's; ``forward(input, residual=None)`` runs in one pass,
    ``residual`` shaped and typed like ``input``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        activation: Optional[str] = "relu",
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        **kwargs,
    ) -> None:
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
        self._init_activation(activation, negative_slope)


class BatchNormAct1d(_BatchNormActBase, nn.BatchNorm1d):
    """BatchNorm1d + fused activation and residual; input ``(N, C)`` or ``(N, C, L)``.

    Arguments as ``nn.BatchNorm1d``, then ``activation="relu"`` and ``negative_slope``.
    """


class BatchNormAct2d(_BatchNormActBase, nn.BatchNorm2d):
    """BatchNorm2d + fused activation and residual; input ``(N, C, H, W)``, any layout.

    The ResNet block tail ``relu(bn(x) + identity)`` in one pass. Arguments as
    ``nn.BatchNorm2d``, then ``activation="relu"`` and ``negative_slope``.
    """


class BatchNormAct3d(_BatchNormActBase, nn.BatchNorm3d):
    """BatchNorm3d + fused activation and residual; input ``(N, C, D, H, W)``.

    Arguments as ``nn.BatchNorm3d``, then ``activation="relu"`` and ``negative_slope``.
    """
