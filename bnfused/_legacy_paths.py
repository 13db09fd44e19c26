"""The module paths of bnfused 0.1.0, kept importable.

Pickled models (``torch.save`` of a whole module, fx ``GraphModule``s) name
the module that defined each class, so ``bnfused.modules.BatchNorm2d``,
``bnfused.convert``, ``bnfused.freeze`` and ``bnfused.sync`` must keep
resolving after the package was split into ``op``, ``modules`` and ``tools``.
"""

from __future__ import annotations

import importlib
import sys

OLD_TO_NEW = {
    "bnfused._activation": "bnfused.op.contract",
    "bnfused.backend": "bnfused.op.backend",
    "bnfused.ops": "bnfused.op.ops",
    "bnfused.reference": "bnfused.op.reference",
    "bnfused.settings": "bnfused.op.settings",
    "bnfused.triton": "bnfused.op.triton",
    "bnfused.functional": "bnfused.modules.functional",
    "bnfused.sync": "bnfused.modules.sync",
    "bnfused.sync_functional": "bnfused.op.sync",
    "bnfused.modules.sync_functional": "bnfused.op.sync",
    "bnfused.convert": "bnfused.tools.convert",
    "bnfused.fold": "bnfused.tools.fold",
    "bnfused.freeze": "bnfused.tools.freeze",
    "bnfused.keras": "bnfused.tools.keras",
    "bnfused.unfuse": "bnfused.tools.unfuse",
    "bnfused.environment": "bnfused.tools.environment",
    "bnfused._fx": "bnfused.tools.fx_graph",
    "bnfused._swap": "bnfused.tools.swap",
}


def install() -> None:
    """Make every old path an alias of the module now holding its code."""
    package = sys.modules["bnfused"]
    for old, new in OLD_TO_NEW.items():
        module = importlib.import_module(new)
        sys.modules.setdefault(old, module)
        setattr(package, old.rsplit(".", 1)[1], module)
