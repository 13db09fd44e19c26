"""What a bnfused batch norm computes under ``torch.jit.script``, in TorchScript-compilable ops.

``torch.jit.script`` cannot compile the eager path (Python-level routing into
the fused op), so a scripted module runs this instead: ``torch.nn.BatchNorm*d``'s
own forward (``F.batch_norm``, running statistics and ``num_batches_tracked``
updated as there, ``momentum=None`` included), then the residual add and the
activation. The scripted module holds aten ops only, so it saves and loads
without bnfused, and its numbers are a stock model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def batch_norm_act(
    input: Tensor,
    residual: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    training: bool,
    track_running_stats: bool,
    momentum: Optional[float],
    eps: float,
    activation: str,
    negative_slope: float,
) -> Tensor:
    """``act(batch_norm(input) + residual)`` with ``torch.nn.BatchNorm*d.forward``'s rules.

    The tensors are a module's; ``activation`` a canonical name (see
    :data:`bnfused.op.contract.NAMES`).
    """
    factor = 0.0 if momentum is None else momentum
    if training and track_running_stats and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / float(num_batches_tracked)
    use_batch_stats = training or (running_mean is None and running_var is None)
    keep_running = not training or track_running_stats
    y = F.batch_norm(
        input,
        running_mean if keep_running else None,
        running_var if keep_running else None,
        weight,
        bias,
        use_batch_stats,
        factor,
        eps,
    )
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = F.relu(y)
    elif activation == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    elif activation == "silu":
        y = F.silu(y)
    return y


# The mixin's methods run on a batch norm; the type checker should know it.
if TYPE_CHECKING:
    _MixinBase = nn.modules.batchnorm._BatchNorm
else:
    _MixinBase = object


class ScriptableBatchNorm(_MixinBase):
    """Mixin of bnfused's batch norm modules: the forward that ``torch.jit.script`` compiles.

    Each ``forward`` returns ``self._scripted_forward(...)`` when
    ``torch.jit.is_scripting()``, a branch the script compiler takes statically:
    the eager branch is never compiled.
    """

    def _scripted_forward(
        self, input: Tensor, residual: Optional[Tensor], activation: str, negative_slope: float
    ) -> Tensor:
        self._check_input_dim(input)
        return batch_norm_act(
            input,
            residual,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training,
            self.track_running_stats,
            self.momentum,
            self.eps,
            activation,
            negative_slope,
        )
