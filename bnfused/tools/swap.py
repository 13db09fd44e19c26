"""Which batch-norm class becomes which, and moving a module's state into another class."""

from __future__ import annotations

import copy
from typing import Any, Dict, Sequence

from torch import nn

from .. import modules

ACT_ATTRS = ("activation", "negative_slope")  # what BatchNormAct adds to BatchNorm


def plain_classes() -> Dict[type, type]:
    """stock torch class -> bnfused class, for plain replacement."""
    return {
        nn.BatchNorm1d: modules.BatchNorm1d,
        nn.BatchNorm2d: modules.BatchNorm2d,
        nn.BatchNorm3d: modules.BatchNorm3d,
        nn.SyncBatchNorm: modules.SyncBatchNorm,
    }


def fused_classes() -> Dict[type, type]:
    """bnfused class -> its variant with fused activation and residual."""
    return {
        modules.BatchNorm1d: modules.BatchNormAct1d,
        modules.BatchNorm2d: modules.BatchNormAct2d,
        modules.BatchNorm3d: modules.BatchNormAct3d,
        modules.SyncBatchNorm: modules.SyncBatchNormAct,
    }


def graph_fusable(m: nn.Module) -> bool:
    """Whether a call ``m(x)`` in a graph can become ``m(x, residual)`` with an activation:
    a plain bnfused batch norm, or a converted timm ``BatchNormAct2d`` that applies
    nothing after its batch norm (no fused activation, ``drop`` and ``act`` identities)."""
    if type(m) in fused_classes():
        return True
    return (
        type(m) is modules.BatchNormDropAct2d
        and m.activation == "identity"
        and type(m.drop) is nn.Identity
        and type(m.act) is nn.Identity
        and not any(c._forward_hooks or c._forward_pre_hooks for c in (m.drop, m.act))
    )


def stock_classes() -> Dict[type, type]:
    """bnfused class (plain or fused) -> stock torch class."""
    out = {ours: stock for stock, ours in plain_classes().items()}
    for ours, fused in fused_classes().items():
        out[fused] = out[ours]
    return out


def batch_norm_classes() -> set:
    """Every stock and bnfused batch-norm class whose forward is known."""
    plain = plain_classes()
    return set(plain) | set(plain.values()) | set(fused_classes().values()) | {nn.SyncBatchNorm}


def rebuild(old: nn.Module, cls: type, drop: Sequence[str] = (), **kwargs: Any) -> nn.Module:
    """A ``cls`` batch norm holding ``old``'s state.

    The same parameter and buffer tensors (so values, ``requires_grad``,
    device and dtype are kept exactly), train/eval mode, hooks,
    ``eps``/``momentum``/``affine``/``track_running_stats`` and any other
    attribute except those in ``drop``; ``kwargs`` go to ``cls``'s constructor
    (e.g. ``activation``).
    """
    if "process_group" in old.__dict__:
        kwargs["process_group"] = old.process_group
    new = cls(old.num_features, device="meta", **kwargs)
    for key, value in old.__dict__.items():
        if key in drop:
            continue
        if isinstance(value, (dict, set)):
            value = copy.copy(value)  # own containers holding the same tensors / hooks
        new.__dict__[key] = value
    return new


def replace_everywhere(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` at every path under ``root`` that holds ``old``."""
    for parent in root.modules():
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new


def activation_module(activation: str, negative_slope: float) -> nn.Module:
    """The stock module computing an activation of bnfused.op.contract."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if activation == "silu":
        return nn.SiLU()
    return nn.Identity()


def is_plain_sequential(m: nn.Module) -> bool:
    """An ``nn.Sequential`` (or subclass) running its children one after another."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward
