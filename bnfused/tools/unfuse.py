"""Back to stock torch: a model without bnfused modules, for places bnfused is not installed."""

from __future__ import annotations

import copy
import operator
from typing import Dict

from torch import fx, nn

from . import fx_graph as _fx
from . import timm_layers
from .convert import GRAPH_FUSED, fused_residual
from .swap import (
    ACT_ATTRS,
    activation_module,
    fused_classes,
    is_plain_sequential,
    rebuild,
    replace_everywhere,
    stock_classes,
)


def _graph_fused(fused: set):
    """Whether a module's activation / residual is applied by the graph calling it."""
    return lambda m: type(m) in fused or bool(m.__dict__.get(GRAPH_FUSED))


def _unfuse_graph(graph: fx.Graph, named: Dict[str, nn.Module], fused: set) -> bool:
    """Replace every fused call ``bnact(x, r)`` by ``act(bn(x) + r)`` in stock ops;
    whether there was one."""
    found = False
    for node, mod in _fx.iter_call_modules(graph, named, _graph_fused(fused)):
        found = True
        x, residual = _fx.bn_call_inputs(node)
        guard = residual
        with graph.inserting_before(node):
            out = graph.call_module(node.target, (x,))
            if isinstance(residual, fx.Node):
                if guard.op == "call_function" and guard.target is fused_residual:
                    residual = guard.args[0]
                out = graph.call_function(operator.add, (out, residual))
            out = _fx.emit_activation(graph, out, mod.activation, mod.negative_slope)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        if isinstance(guard, fx.Node) and guard is not residual and not guard.users:
            graph.erase_node(guard)
        if mod.__dict__.pop(GRAPH_FUSED, False):  # a timm layer: its own act stays identity
            mod.activation = "identity"
    return found


def _unfuse_sequential(seq: nn.Sequential, fused: set) -> bool:
    """``[..., bnact, Identity, ...]`` -> ``[..., bnact, act, ...]`` (the batch norm itself
    is made stock later); False, changing nothing, when a fused child has no Identity after it."""
    names = list(seq._modules)
    slots = []
    for i, name in enumerate(names):
        mod = seq._modules[name]
        if type(mod) in fused and mod.activation != "identity":
            after = names[i + 1] if i + 1 < len(names) else None
            if after is None or type(seq._modules[after]) is not nn.Identity:
                return False
            slots.append((after, activation_module(mod.activation, mod.negative_slope)))
    for name, act in slots:
        seq._modules[name] = act
    return True


def to_torch(module: nn.Module, inplace: bool = False) -> nn.Module:
    """The same model made of stock torch modules only.

    ``bnfused.BatchNorm*d`` becomes ``torch.nn.BatchNorm*d`` and
    ``bnfused.SyncBatchNorm`` ``torch.nn.SyncBatchNorm``, holding the same
    tensors; a layer converted from timm or torchvision goes back to its
    class. A fused ``BatchNormAct`` call ``bnact(x, r)`` becomes
    ``act(bn(x) + r)``: in an ``nn.Sequential`` the ``nn.Identity`` that
    :func:`bnfused.convert_model` left after it becomes the activation module
    again; elsewhere the calling module's ``torch.fx`` graph gets a stock
    batch norm, ``+`` and ``torch.nn.functional`` activation. ``state_dict``
    keys and outputs are unchanged; the result pickles without bnfused.

    Raises ``RuntimeError`` when a module calling a fused batch norm cannot be
    traced, ``ValueError`` for a bare ``BatchNormAct`` (it has no stock
    equivalent with the same ``state_dict``), ``TypeError`` for other bnfused
    modules without a stock equivalent.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"to_torch expects an nn.Module, got {type(module).__name__}")
    stock = stock_classes()
    fused = set(fused_classes().values())
    if type(module) in fused:
        raise ValueError(
            f"to_torch: a bare {type(module).__name__} has no stock equivalent "
            "with the same state_dict; convert the model that calls it"
        )
    root = module if inplace else copy.deepcopy(module)
    # Rewritten modules first: their graphs may call fused grandchildren (inlined children).
    done = set()
    for _path, parent in _fx.modules_with_descendants(root, _graph_fused(fused)):
        if isinstance(parent, fx.GraphModule):
            graph = _fx.trace_one_level(parent)
            named = dict(parent.named_modules(remove_duplicate=False))
            calls = [named[n.target] for n in graph.nodes if n.op == "call_module"]
            if _unfuse_graph(graph, named, fused):
                done.update(id(m) for m in calls)
                _fx.install_graph(parent, graph)
    for path, parent in _fx.modules_with_children(root, lambda c: type(c) in fused):
        if isinstance(parent, fx.GraphModule) or all(
            id(c) in done for c in parent.children() if type(c) in fused
        ):
            continue
        if is_plain_sequential(parent) and _unfuse_sequential(parent, fused):
            continue
        try:
            graph = _fx.trace_one_level(parent)
        except Exception as e:  # torch.fx raises many types for untraceable code
            raise RuntimeError(
                f"to_torch: cannot trace {path or '<root>'} "
                f"({type(parent).__name__}), which calls a fused batch norm: "
                f"{type(e).__name__}: {e}"
            ) from e
        _unfuse_graph(graph, dict(parent.named_modules(remove_duplicate=False)), fused)
        new = _fx.install_graph(parent, graph)
        if not path:
            root = new
        else:
            _fx.set_submodule(root, path, new)
    for path, m in list(root.named_modules()):
        back = timm_layers.to_stock(m)
        if back is not None:
            if not path:
                return back
            replace_everywhere(root, m, back)
            continue
        cls = stock.get(type(m))
        if cls is None:
            if type(m).__module__.split(".")[0] == "bnfused":
                raise TypeError(
                    f"to_torch: {path or '<root>'} is a {type(m).__name__}, which "
                    "has no stock torch equivalent"
                )
            continue
        new = rebuild(m, cls, drop=ACT_ATTRS)
        if not path:
            return new
        replace_everywhere(root, m, new)
    return root
