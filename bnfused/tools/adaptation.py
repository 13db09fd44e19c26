"""Test-time adaptation of BatchNorm layers: TENT (Wang et al., ICLR 2021).

"Tent: Fully Test-Time Adaptation by Entropy Minimization" adapts a trained
model to shifted test data without labels: every BatchNorm layer normalizes
with the statistics of the test batch, and only the BatchNorm scale and shift
are trained, minimizing the entropy of the predictions
(:func:`softmax_entropy`). :func:`configure_test_time_adaptation` sets a model
up that way and returns a handle that undoes it exactly.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .freeze import is_frozen

Tensor = torch.Tensor
_BatchNorm = nn.modules.batchnorm._BatchNorm


def softmax_entropy(logits: Tensor, dim: int = 1) -> Tensor:
    """Entropy of ``softmax(logits)`` along ``dim``, the TENT loss (average it over the batch).

    ``logits``: ``(N, classes)`` (or classes along ``dim``); returns ``(N,)``
    (``logits`` without ``dim``), in nats: ``-sum(p * log p)``.
    """
    return -(logits.softmax(dim) * logits.log_softmax(dim)).sum(dim)


def _clone(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().clone()


class TestTimeAdaptation:
    """What :func:`configure_test_time_adaptation` changed, and the way back.

    Attributes:
        params: the BatchNorm weights and biases left trainable; pass them to
            the optimizer.
        layers: the names (``model.named_modules()``) of the adapted layers.

    Usable as a context manager: leaving the ``with`` block calls :meth:`undo`.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, model: nn.Module, layers: Dict[_BatchNorm, str]) -> None:
        self.layers: List[str] = list(layers.values())
        self._modes = [(m, m.training) for m in model.modules()]
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self._bn_state = [
            (bn, bn.track_running_stats, bn.running_mean, bn.running_var) for bn in layers
        ]
        params = [p for bn in layers for p in (bn.weight, bn.bias) if p is not None]
        self.params: List[nn.Parameter] = list({id(p): p for p in params}.values())
        self._values: List[Tuple[Tensor, Optional[Tensor]]] = [
            (p.detach().clone(), _clone(p.grad)) for p in self.params
        ]
        self._done = False

    def reset(self) -> None:
        """Put the trainable parameters (values and ``.grad``) back as they were
        when adaptation began, and stay configured (episodic TENT)."""
        with torch.no_grad():
            for p, (value, grad) in zip(self.params, self._values):
                p.copy_(value)
                p.grad = _clone(grad)

    def undo(self, keep_adapted: bool = False) -> None:
        """Restore the model as it was before :func:`configure_test_time_adaptation`.

        Running statistics (the same tensors, untouched), ``track_running_stats``,
        every parameter's ``requires_grad`` and every module's train/eval flag
        come back; so do the adapted weights and biases (values and ``.grad``)
        unless ``keep_adapted``. Calling it again does nothing.
        """
        if self._done:
            return
        if not keep_adapted:
            self.reset()
        for bn, track, mean, var in self._bn_state:
            bn.track_running_stats = track
            bn.running_mean, bn.running_var = mean, var
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        for m, mode in self._modes:
            m.training = mode
        self._done = True

    def __enter__(self) -> TestTimeAdaptation:
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def configure_test_time_adaptation(
    model: nn.Module, include_frozen: bool = False
) -> TestTimeAdaptation:
    """Set ``model`` up for TENT: BatchNorm on test-batch statistics, only its affine trainable.

    Every BatchNorm layer (``torch.nn.modules.batchnorm._BatchNorm``: torch's
    and bnfused's ``BatchNorm*d``, ``BatchNormAct*d``, ``SyncBatchNorm``)
    then normalizes each input ``(N, C, *spatial)`` with that batch's own mean
    and biased variance, in ``train()`` and ``eval()`` mode alike, and updates
    no running statistic: as TENT does, its running statistics are detached
    from the layer (``running_mean = running_var = None``,
    ``track_running_stats = False``; ``state_dict()`` lacks them meanwhile) and
    kept by the handle. Every parameter of ``model`` gets
    ``requires_grad=False`` except the layers' ``weight`` and ``bias``.
    The model's mode is left as it is; eval mode keeps dropout off while adapting.

    Args:
        model: the network, changed in place.
        include_frozen: also adapt the layers whose statistics
            :func:`bnfused.freeze_batchnorm` froze (default: they keep
            normalizing with their running statistics, affine untouched).
            :class:`bnfused.FrozenBatchNorm2d` has no parameters and no
            batch-statistics mode and is never adapted.

    Returns:
        a :class:`TestTimeAdaptation` handle: ``.params`` for the optimizer,
        ``.reset()``, ``.undo()``.

    Example (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
    Minimization", ICLR 2021)::

        tta = bnfused.configure_test_time_adaptation(model)
        opt = torch.optim.SGD(tta.params, lr=1e-3, momentum=0.9)
        for x in test_batches:
            logits = model(x)               # predictions for this batch
            bnfused.softmax_entropy(logits).mean().backward()
            opt.step(); opt.zero_grad()
        tta.undo()
    """
    layers = {
        m: name
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and (include_frozen or not is_frozen(m))
    }
    if not layers:
        raise ValueError(
            "configure_test_time_adaptation: the model has no BatchNorm layer to adapt"
        )
    handle = TestTimeAdaptation(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    for bn in layers:
        bn.track_running_stats = False
        bn.running_mean = bn.running_var = None
    for p in handle.params:
        p.requires_grad_(True)
    return handle
