"""Batch norms at the end of a child module, made visible to the caller's graph.

``x + self.f(x)`` with ``f = Sequential(conv, bn)`` (torchvision RegNet and
video ResNets, timm ``ConvNormAct`` branches) hides the batch norm from the
add: it is the child's last call. :func:`inline_batch_norm_tails` replaces such
a call by the child's own graph, its calls retargeted at the child's path
(``f.0``, ``f.1``), so the caller's graph holds ``conv -> bn -> add -> act``
and fuses it. The child keeps its modules, parameters and buffers, so
``state_dict`` keys do not change; its own ``forward`` is no longer called.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import fx, nn

from . import fx_graph as _fx

MAX_DEPTH = 4  # nested children followed to find the batch norm


def _prefixed(graph: fx.Graph, caller: fx.Graph, call: fx.Node, prefix: str) -> Optional[fx.Node]:
    """Copy ``graph`` into ``caller`` before ``call``; returns the copied output value."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    env: Dict[fx.Node, object] = {}
    for i, ph in enumerate(placeholders):
        if ph.target.startswith("*"):
            return None
        if i < len(call.args):
            env[ph] = call.args[i]
        elif ph.target in call.kwargs:
            env[ph] = call.kwargs[ph.target]
        elif ph.args:
            env[ph] = ph.args[0]
        else:
            return None
    if len(call.args) > len(placeholders) or any(
        k not in [p.target for p in placeholders[len(call.args) :]] for k in call.kwargs
    ):
        return None
    out = None
    with caller.inserting_before(call):
        for node in graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                out = fx.map_arg(node.args[0], lambda n: env[n])
                break
            new = caller.node_copy(node, lambda n: env[n])
            if node.op in ("call_module", "get_attr"):
                new.target = f"{prefix}.{node.target}"
            env[node] = new
    return out


class Inliner:
    """Inlines, into one caller's graph, the children whose output is a batch norm's."""

    def __init__(
        self,
        module: nn.Module,
        is_batch_norm: Callable[[nn.Module], bool],
        shared: set,
        trace: Callable[[nn.Module], fx.Graph],
    ):
        self.module, self.is_batch_norm, self.shared = module, is_batch_norm, shared
        self.trace = trace

    def _child_graph(self, child: nn.Module) -> Optional[fx.Graph]:
        if (
            self.is_batch_norm(child)
            or id(child) in self.shared
            or _fx.has_hooks(child)
            or not any(self.is_batch_norm(m) for m in child.modules())
        ):
            return None
        try:
            graph = self.trace(child)
        except Exception:
            return None
        _fx.skip_identities(graph, dict(child.named_modules(remove_duplicate=False)))
        return graph

    def _ends_in_batch_norm(self, child: nn.Module, graph: fx.Graph, depth: int) -> bool:
        out = next(n for n in graph.nodes if n.op == "output").args[0]
        if not isinstance(out, fx.Node) or out.op != "call_module" or len(out.users) != 1:
            return False
        if _fx.call_counts(graph)[out.target] != 1:
            return False
        last = child.get_submodule(out.target)
        if self.is_batch_norm(last):
            return True
        inner = self._child_graph(last) if depth < MAX_DEPTH else None
        return inner is not None and self._ends_in_batch_norm(last, inner, depth + 1)

    def run(self, graph: fx.Graph, worth_it: Callable[[fx.Node], bool]) -> bool:
        """Inline every call whose output ``worth_it`` (e.g. reaches an add or an
        activation), repeatedly, so nested tails come out too; whether any was."""
        changed, any_change = True, False
        while changed:
            changed = False
            counts = _fx.call_counts(graph)
            for node in list(graph.nodes):
                if node.op != "call_module" or counts[node.target] != 1 or not worth_it(node):
                    continue
                child = self.module.get_submodule(node.target)
                inner = self._child_graph(child)
                if inner is None or not self._ends_in_batch_norm(child, inner, 1):
                    continue
                out = _prefixed(inner, graph, node, node.target)
                if out is None:
                    continue
                node.replace_all_uses_with(out)
                graph.erase_node(node)
                changed = any_change = True
                break
        return any_change
