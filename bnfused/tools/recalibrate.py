"""Exact recalibration of BatchNorm running statistics ("precise BN").

Running statistics are an exponential average of per-batch statistics taken
while the weights were still moving, so after training, weight averaging
(SWA), pruning or a change of data they no longer describe the inputs the
layers see. :func:`recalibrate_batchnorm` replaces them with the population
mean and unbiased variance of each layer's inputs over a set of batches.

The inputs each layer sees while the statistics are collected are those of
precise BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's
``update_bn_stats``, pycls) and of ``torch.optim.swa_utils.update_bn``: every
recalibrated layer normalizes with the statistics of the batch at hand, so
what reaches a layer does not depend on any running statistic, upstream ones
included, and one pass over the data is enough. The statistics themselves are
exact: per layer, the ``(count, mean, M2)`` of each batch, merged in float64
(Chan, Golub & LeVeque). ``update_bn`` instead averages per-batch means and
variances with equal weights, which misses the spread of the batch means.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..modules.frozen import FrozenBatchNorm2d
from ..op.sync import local_stats
from .freeze import is_frozen

Tensor = torch.Tensor
_BatchNorm = nn.modules.batchnorm._BatchNorm
ForwardFn = Callable[[nn.Module, Any], Any]


class _Population:
    """Count, mean and M2 (sum of squared deviations) of a layer's inputs, per channel."""

    def __init__(self) -> None:
        self.count = 0
        self.calls = 0
        self.mean: Optional[Tensor] = None
        self.m2: Optional[Tensor] = None

    def add(self, x: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """Merge the batch ``x`` ``(N, C, *)``; return its mean and biased variance
        (float64, None when the batch is empty)."""
        self.calls += 1
        count, mean, m2 = local_stats(x.detach())
        if count == 0:
            return None
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean, m2
        else:  # Chan, Golub & LeVeque's pairwise update, float64
            total = self.count + count
            delta = mean - self.mean
            self.mean = self.mean + delta * (count / total)
            self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
            self.count = total
        return mean, m2 / count


def _targets(model: nn.Module, include_frozen: bool) -> Dict[nn.Module, str]:
    """The layers to recalibrate, with their names, in ``model.named_modules()`` order."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            if m.running_mean is None or m.running_var is None:
                continue  # track_running_stats=False: nothing to recalibrate
            if is_frozen(m) and not include_frozen:
                continue
        elif not (isinstance(m, FrozenBatchNorm2d) and include_frozen):
            continue
        found[m] = name
    return found


def _layer_input(module: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor):
        raise TypeError(
            f"recalibrate_batchnorm: {type(module).__name__} was called without "
            "a tensor input as first argument or keyword 'input'"
        )
    return x


def _to_device(obj: Any, device: Union[str, torch.device, None]) -> Any:
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(batch[0])`` for a tuple/list (as
    ``update_bn``), ``model(**batch)`` for a mapping."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward_fn: Optional[ForwardFn] = None,
    device: Union[str, torch.device, None] = None,
    num_batches: Optional[int] = None,
    include_frozen: bool = False,
    train_mode: bool = False,
) -> Dict[str, int]:
    """Set running statistics to the exact mean and variance of each layer's inputs.

    For every BatchNorm layer in ``model`` (torch's and bnfused's
    ``BatchNorm*d``, ``BatchNormAct*d``, ``SyncBatchNorm``: every
    ``torch.nn.modules.batchnorm._BatchNorm`` with running statistics), one
    pass over ``batches`` collects, per channel, the count, mean and sum of
    squared deviations of the layer's input ``(N, C, *spatial)`` over every
    dim but 1 and all batches (merged in float64), then writes
    ``running_mean = mean`` and ``running_var = M2 / (count - 1)`` (unbiased,
    as torch keeps it) once.

    While collecting, every recalibrated layer normalizes with the batch's own
    statistics, as in training (the inputs downstream layers see then do not
    depend on any running statistic), and no running statistic moves: the
    layers run with ``momentum=0`` and their buffers are put back before the
    result is written. These are the semantics of precise BN and of
    ``torch.optim.swa_utils.update_bn`` (see the module docstring), with exact
    statistics in place of averages of per-batch ones.

    Args:
        model: the network, changed in place (running statistics and
            ``num_batches_tracked`` only).
        batches: an iterable of batches, e.g. a ``DataLoader``: tensors, tuples
            or lists whose first element is the input (as ``update_bn``), or
            mappings of keyword arguments (``model(**batch)``).
        forward_fn: ``forward_fn(model, batch)`` runs the model on one batch,
            for any other batch structure (default :func:`default_forward`).
        device: tensors in each batch (also inside tuples, lists and mappings)
            are moved there first.
        num_batches: use at most this many batches.
        include_frozen: also recalibrate layers whose statistics are frozen:
            by :func:`bnfused.freeze_batchnorm` (they stay frozen afterwards)
            and :class:`bnfused.FrozenBatchNorm2d`. By default these keep their
            statistics and, while collecting, normalize with them, as they do
            in the model.
        train_mode: run every other module in ``train()`` mode while
            collecting, as ``update_bn`` and precise BN do. Default False: the
            other modules run in eval mode, so dropout and stochastic depth
            are off and the statistics are those of the inputs the layers see
            at inference (dropout changes the variance of what follows it).

    Returns:
        ``{name: count}`` for every layer recalibrated (names from
        ``model.named_modules()``, ``""`` for ``model`` itself): the number of
        values per channel its statistics come from (N x spatial size, summed
        over batches). A layer that received no non-empty input maps to 0 and
        keeps its statistics (with a warning). ``num_batches_tracked`` becomes
        the number of times the layer ran, as ``update_bn`` leaves it.

    Every module's train/eval flag and momentum are restored afterwards, and
    if ``forward_fn`` or the model raises, the running statistics too. Runs
    under ``torch.no_grad()``. In a multi-process job each process gets the
    statistics of the batches it sees.
    """
    targets = _targets(model, include_frozen)
    if not targets:
        return {}
    forward_fn = forward_fn or default_forward
    stats = {m: _Population() for m in targets}
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in targets if isinstance(m, _BatchNorm)}
    saved = {
        m: {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}
        for m in targets
    }

    def capture(module, args, kwargs):
        batch_stats = stats[module].add(_layer_input(module, args, kwargs))
        if batch_stats is not None and not isinstance(module, _BatchNorm):
            # FrozenBatchNorm2d always normalizes with its buffers: give it the batch's.
            module.running_mean.copy_(batch_stats[0])
            module.running_var.copy_(batch_stats[1])

    hooks = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in targets]
    try:
        for m in modes:
            if m in momenta:
                m.training, m.momentum = True, 0.0
            elif not isinstance(m, (_BatchNorm, FrozenBatchNorm2d)):
                m.training = train_mode
        with torch.no_grad():
            for batch in itertools.islice(batches, num_batches):
                forward_fn(model, _to_device(batch, device))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
        with torch.no_grad():
            for m, buffers in saved.items():
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
    return _write(targets, stats)


@torch.no_grad()
def _write(targets: Dict[nn.Module, str], stats: Dict[nn.Module, _Population]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    unreached: List[str] = []
    for m, name in targets.items():
        pop = stats[m]
        counts[name] = pop.count
        if pop.count == 0:
            unreached.append(name or type(m).__name__)
            continue
        m.running_mean.copy_(pop.mean)
        m.running_var.copy_(pop.m2 / max(pop.count - 1, 1))
        if getattr(m, "num_batches_tracked", None) is not None:
            m.num_batches_tracked.fill_(pop.calls)
    if unreached:
        warnings.warn(
            "recalibrate_batchnorm: no input reached "
            + ", ".join(unreached)
            + "; their statistics are unchanged",
            stacklevel=3,
        )
    return counts
