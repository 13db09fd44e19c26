"""bnfused batch norms in torch's eager-mode quantization fusions.

``torch.ao.quantization.fuse_modules`` and ``fuse_modules_qat`` pick a fuser
by the exact types of the listed modules. :func:`register_fusions` (run when
bnfused is imported) adds every stock pattern holding a ``BatchNorm*d`` again
with its bnfused twin, and ``(Conv, BatchNormAct)`` for the ``identity`` and
``relu`` activations; the fused result holds a stock batch norm with the same
tensors, as torch's quantized and QAT modules require.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from torch import nn

from ..op import torch_compat as tc
from .swap import ACT_ATTRS, fused_classes, rebuild, stock_classes


def stock_batch_norm(bn: nn.Module) -> nn.Module:
    """The stock ``nn.BatchNorm*d`` holding ``bn``'s parameters, buffers and settings."""
    return rebuild(bn, stock_classes()[type(bn)], drop=ACT_ATTRS)


def _plain_fuser(method: Callable, slot: int) -> Callable:
    def fuse(is_qat, *mods):
        mods = list(mods)
        mods[slot] = stock_batch_norm(mods[slot])
        return method(is_qat, *mods)

    return fuse


def _act_fuser(plain: Callable, with_relu: Optional[Callable]) -> Callable:
    def fuse(is_qat, first, bn):
        if bn.activation == "identity":
            return plain(is_qat, first, stock_batch_norm(bn))
        if bn.activation == "relu" and with_relu is not None:
            return with_relu(is_qat, first, stock_batch_norm(bn), nn.ReLU().train(bn.training))
        raise NotImplementedError(
            f"bnfused: torch quantization has no fusion of {type(first).__name__} with a batch "
            f"norm followed by {bn.activation}; convert the model with bnfused.to_torch(model) "
            "and fuse the stock modules"
        )

    return fuse


def fusion_patterns() -> Dict[Tuple[type, ...], Callable]:
    """The fuser methods bnfused adds, keyed like torch's default mapping."""
    stock_to_ours = {
        stock: ours for ours, stock in stock_classes().items() if ours in fused_classes()
    }
    ours_to_act = fused_classes()
    defaults = tc.FUSER_METHODS
    added = {}
    for key, method in list(defaults.items()):
        for slot, cls in enumerate(key):
            ours = stock_to_ours.get(cls)
            if ours is None:
                continue
            added[key[:slot] + (ours,) + key[slot + 1 :]] = _plain_fuser(method, slot)
            if len(key) == 2 and slot == 1:
                act = ours_to_act[ours]
                added[(key[0], act)] = _act_fuser(method, defaults.get(key + (nn.ReLU,)))
    return added


def register_fusions() -> None:
    """Add :func:`fusion_patterns` to torch's default fuser mapping (idempotent)."""
    for key, method in fusion_patterns().items():
        tc.FUSER_METHODS.setdefault(key, method)
