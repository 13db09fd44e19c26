"""timm's batch-norm layers: the bnfused module each becomes, and the way back.

* ``timm.layers.BatchNormAct2d`` (batch norm, drop, activation; EfficientNet,
  MobileNetV3, RegNet, CSP nets) -> :class:`BatchNormDropAct2d`, its
  activation fused when bnfused has it and no real drop comes first;
* ``timm.layers.FrozenBatchNormAct2d`` -> :class:`FrozenBatchNormDropAct2d`, the same way;
* torchvision's ``FrozenBatchNorm2d`` (what ``timm.layers.freeze_batch_norm_2d``
  puts in place of plain batch norms) -> :class:`bnfused.FrozenBatchNorm2d`.

The layers keep their tensors, attributes and ``state_dict`` keys and remember
the class they came from, which :func:`to_stock` restores. timm is never
imported here: its classes are looked up among the loaded modules, so only a
model that already holds them is affected.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Optional, Tuple

from torch import nn

from ..modules.drop_act import BatchNormDropAct2d, FrozenBatchNormDropAct2d
from ..modules.frozen import FrozenBatchNorm2d
from ..op.contract import DEFAULT_NEGATIVE_SLOPE
from .fx_graph import activation_of_module
from .swap import activation_module

STOCK = "_bnfused_stock_class"  # instance attribute: the class a converted layer came from
_ADDED = ("activation", "negative_slope", STOCK)  # what convert adds (and num_features)


def _loaded(module: str, name: str) -> Optional[type]:
    return getattr(sys.modules.get(module), name, None)


def _timm(name: str) -> Optional[type]:
    return _loaded("timm.layers.norm_act", name)


def retype(old: nn.Module, cls: type, drop: Tuple[str, ...] = (), **attrs: Any) -> nn.Module:
    """A ``cls`` instance holding ``old``'s tensors, children, hooks and attributes
    (except ``drop``), plus ``attrs``; no constructor runs."""
    new = cls.__new__(cls)
    for key, value in old.__dict__.items():
        if key not in drop:
            new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
    new.__dict__.update(attrs)
    return new


def _fused_activation(layer: nn.Module, fuse: bool) -> Optional[Tuple[str, float]]:
    """The activation the op can compute in place of ``layer.act`` (None: keep the module)."""
    if type(layer.act) is nn.Identity:
        return "identity", DEFAULT_NEGATIVE_SLOPE
    if not fuse or type(layer.drop) is not nn.Identity:
        return None  # a drop sits between the batch norm and the activation
    return activation_of_module(layer.act)


def convert(layer: nn.Module, fuse: bool) -> Optional[nn.Module]:
    """The bnfused twin of one timm / torchvision layer listed above, else None.

    ``fuse``: fuse the activation (``convert_model(fuse_activations=True)``);
    else it stays a separate module inside the new layer.
    """
    cls = type(layer)
    if cls is _timm("BatchNormAct2d") or cls is _timm("FrozenBatchNormAct2d"):
        frozen = cls is _timm("FrozenBatchNormAct2d")
        spec = _fused_activation(layer, fuse)
        new = retype(
            layer,
            FrozenBatchNormDropAct2d if frozen else BatchNormDropAct2d,
            activation=spec[0] if spec else "identity",
            negative_slope=spec[1] if spec else DEFAULT_NEGATIVE_SLOPE,
            num_features=layer.weight.shape[0],
            **{STOCK: cls},
        )
        if spec is not None:
            new.act = nn.Identity()
        return new
    if cls is _loaded("torchvision.ops.misc", "FrozenBatchNorm2d"):
        return retype(
            layer,
            FrozenBatchNorm2d,
            activation="identity",
            negative_slope=DEFAULT_NEGATIVE_SLOPE,
            num_features=layer.weight.shape[0],
            **{STOCK: cls},
        )
    return None


def to_stock(layer: nn.Module) -> Optional[nn.Module]:
    """The timm / torchvision layer a :func:`convert` result came from (its fused
    activation a module again), else None."""
    cls = layer.__dict__.get(STOCK)
    if cls is None:
        return None
    batch_norm = issubclass(cls, nn.modules.batchnorm._BatchNorm)
    new = retype(layer, cls, drop=_ADDED if batch_norm else _ADDED + ("num_features",))
    if getattr(layer, "activation", "identity") != "identity":
        act = activation_module(layer.activation, layer.negative_slope)
        if hasattr(act, "inplace"):
            act.inplace = True  # timm's default
        new.act = act
    return new


def frozen_twin(bn: nn.Module, frozen: FrozenBatchNorm2d) -> FrozenBatchNorm2d:
    """``frozen`` (made from ``bn`` by ``convert_frozen_batchnorm``) with ``bn``'s
    ``drop`` and ``act`` when ``bn`` has them (timm's layout), else ``frozen`` itself."""
    if not (
        isinstance(getattr(bn, "act", None), nn.Module)
        and isinstance(getattr(bn, "drop", None), nn.Module)
    ):
        return frozen
    stock = _timm("FrozenBatchNormAct2d")
    attrs = {STOCK: stock} if stock is not None else {}
    new = retype(frozen, FrozenBatchNormDropAct2d, **attrs)
    new.drop, new.act = bn.drop, bn.act
    return new
