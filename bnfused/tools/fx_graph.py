"""torch.fx plumbing shared by :mod:`bnfused.convert` and :mod:`bnfused.fold`.

Graphs are traced one module at a time, with every child module kept as a
leaf (``call_module``). A module whose graph is rewritten is replaced, at its
own path, by a ``GraphModule`` that holds the same children, parameters,
buffers and plain attributes in the same order, so ``state_dict`` keys do not
change and the rest of the model keeps its classes and methods.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..op.torch_compat import USER_PRESERVED_ATTRIBUTES_KEY
from .fx_optional import check_optional_arguments

Node = fx.Node


class _OneLevelTracer(fx.Tracer):
    """Traces one module's own ``forward``; every child module stays a leaf call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace_one_level(module: nn.Module) -> fx.Graph:
    """The graph of ``module.forward`` with children as ``call_module`` nodes.

    A ``GraphModule`` gives a copy of its own graph. Raises ``RuntimeError``
    when the forward depends on ``self.training`` (the graph would freeze one
    mode) or on whether an optional argument is passed in a way one graph cannot
    express (:mod:`.fx_optional`), and whatever ``torch.fx`` raises when the
    forward cannot be traced.
    """
    if isinstance(module, fx.GraphModule):
        return copy.deepcopy(module.graph)
    mode = module.training
    codes = []
    try:
        for flag in (mode, not mode):
            module.training = flag  # this module only: children are not traced into
            graph = _OneLevelTracer().trace(module)
            codes.append(graph.python_code("self").src)
            if flag == mode:
                result = graph
    finally:
        module.training = mode
    if codes[0] != codes[1]:
        raise RuntimeError(
            "its forward depends on self.training, so one traced graph "
            "cannot serve both train and eval mode"
        )
    return check_optional_arguments(
        module, result, lambda concrete: _OneLevelTracer().trace(module, concrete)
    )


def modules_with_children(root: nn.Module, wanted) -> List[Tuple[str, nn.Module]]:
    """``(path, module)`` for each module having a direct child with ``wanted(child)``,
    deepest first (so children are rewritten before their parents)."""
    found = [(path, m) for path, m in root.named_modules() if any(wanted(c) for c in m.children())]
    found.reverse()
    return found


def modules_with_descendants(root: nn.Module, wanted) -> List[Tuple[str, nn.Module]]:
    """``(path, module)`` for each module (``wanted`` ones excluded) having a descendant
    with ``wanted(descendant)``, deepest first (children are rewritten before parents)."""
    found = [
        (path, m)
        for path, m in root.named_modules()
        if not wanted(m) and any(wanted(c) for c in m.modules() if c is not m)
    ]
    found.reverse()
    return found


def skip_identities(graph: fx.Graph, named: Dict[str, nn.Module]) -> None:
    """Drop calls of plain ``nn.Identity`` children (e.g. timm's disabled ``drop_block``
    between ``bn2`` and ``act2``), so ``act(Identity(bn(x)))`` fuses like ``act(bn(x))``."""
    for node in list(graph.nodes):
        mod = named.get(node.target) if node.op == "call_module" else None
        if (
            type(mod) is nn.Identity
            and len(node.args) == 1
            and not node.kwargs
            and not has_hooks(mod)
        ):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


def shared_module_ids(root: nn.Module) -> set:
    """ids of modules reachable under more than one path (rewriting them is unsafe)."""
    seen: Dict[int, int] = {}
    for _, m in root.named_modules(remove_duplicate=False):
        seen[id(m)] = seen.get(id(m), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def has_hooks(module: nn.Module) -> bool:
    """Whether forward/backward hooks are registered on ``module`` itself."""
    return any(
        getattr(module, name, None)
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


def call_counts(graph: fx.Graph) -> Dict[str, int]:
    """How many ``call_module`` nodes call each target."""
    counts: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` under ``root`` (the parent must exist)."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    parent._modules[name] = new


def install_graph(module: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A ``GraphModule`` running ``graph`` that keeps ``module``'s state and structure.

    Children (used or not), parameters, buffers, hooks and plain attributes are
    carried over in their original order, so ``state_dict`` keys are identical.
    Plain attributes also survive ``copy.deepcopy``.
    """
    graph.lint()
    # Unpickling re-traces with the stock Tracer (children kept as leaves, as here), so the
    # pickle needs no bnfused import.
    graph._tracer_cls = None
    if isinstance(module, fx.GraphModule):
        module.graph = graph
        module._tracer_cls = None
        module.recompile()
        return module
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    gm._modules = module._modules.copy()
    gm._parameters = module._parameters.copy()
    gm._buffers = module._buffers.copy()
    gm._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    gm.training = module.training
    preserved = {}
    for key, value in module.__dict__.items():
        if "hooks" in key and key.startswith("_"):
            setattr(gm, key, copy.copy(value))
        elif (
            not key.startswith("_")
            and key not in ("training", "forward")
            and key not in gm.__dict__
        ):
            gm.__dict__[key] = value
            preserved[key] = value
    if preserved:
        gm.meta.setdefault(USER_PRESERVED_ATTRIBUTES_KEY, {}).update(preserved)
    return gm


# ----------------------------------------------------------------------------
# Recognizing activations and adds in a graph

_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_LEAKY_FUNCTIONS = (F.leaky_relu, F.leaky_relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def _only(
    args: Sequence[Any], kwargs: Dict[str, Any], allowed_kwargs: Sequence[str], max_args: int
) -> bool:
    return len(args) <= max_args and all(k in allowed_kwargs for k in kwargs)


def activation_of_module(mod: Any) -> Optional[Tuple[str, float]]:
    """``(name, negative_slope)`` of an activation module bnfused can fuse, else None."""
    if not isinstance(mod, nn.Module) or has_hooks(mod):
        return None
    if type(mod) is nn.ReLU:
        return "relu", 0.01
    if type(mod) is nn.LeakyReLU:
        return "leaky_relu", float(mod.negative_slope)
    if type(mod) is nn.SiLU:
        return "silu", 0.01
    return None


def activation_of(node: Node, modules: Dict[str, nn.Module]) -> Optional[Tuple[str, float]]:
    """``(name, negative_slope)`` when ``node`` applies a fusable activation to
    ``node.args[0]`` and does nothing else (in place or not); else None."""
    args, kwargs = node.args, node.kwargs
    if not args or not isinstance(args[0], Node):
        return None
    if node.op == "call_module":
        if len(args) != 1 or kwargs:
            return None
        return activation_of_module(modules.get(node.target))
    if node.op == "call_function":
        target = node.target
        if target in _RELU_FUNCTIONS and _only(args, kwargs, ("inplace",), 2):
            return "relu", 0.01
        if target in _LEAKY_FUNCTIONS and _only(args, kwargs, ("negative_slope", "inplace"), 3):
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return ("leaky_relu", float(slope)) if isinstance(slope, (int, float)) else None
        if target is F.silu and _only(args, kwargs, ("inplace",), 2):
            return "silu", 0.01
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return ("relu", 0.01) if len(args) == 1 and not kwargs else None
    return None


def add_operands(node: Node) -> Optional[Tuple[Any, Any, bool]]:
    """``(a, b, in_place)`` when ``node`` computes ``a + b`` (``in_place``: written into
    ``a``); None for other nodes, ``alpha != 1`` or an ``out=`` argument."""
    args, kwargs = node.args, node.kwargs
    if len(args) != 2 or any(k != "alpha" for k in kwargs) or kwargs.get("alpha", 1) != 1:
        return None
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return args[0], args[1], node.target is operator.iadd
    if node.op == "call_method" and node.target in ("add", "add_"):
        return args[0], args[1], node.target == "add_"
    return None


def is_fresh_sum(node: Node, reader: Node) -> bool:
    """Whether ``node`` is a new tensor (an out-of-place add, or an in-place add into
    one) read by ``reader`` alone, so an in-place add into it may become out of place."""
    if len(node.users) != 1 or next(iter(node.users)) is not reader:
        return False
    operands = add_operands(node)
    if operands is None:
        return False
    return not operands[2] or (isinstance(operands[0], Node) and is_fresh_sum(operands[0], node))


def input_written_between(bn: Node, user: Node, modules: Dict[str, nn.Module]) -> bool:
    """Whether a node between ``bn`` and ``user`` may write into ``bn``'s input in place
    (moving the batch norm down to ``user`` would then read the written values)."""
    x = bn.args[0]
    node = bn.next
    while node is not user:
        if x in node.args[:1] and (
            str(node.target).endswith("_")
            or node.target is operator.iadd
            or node.kwargs.get("inplace")
            or (
                node.op == "call_module"
                and getattr(modules.get(node.target), "inplace", False) is not False
            )
        ):
            return True
        node = node.next
    return False


def emit_activation(graph: fx.Graph, x: Node, activation: str, negative_slope: float) -> Node:
    """Append ``activation(x)`` as a stock ``torch.nn.functional`` call (identity: ``x``)."""
    if activation == "relu":
        return graph.call_function(F.relu, (x,))
    if activation == "leaky_relu":
        return graph.call_function(F.leaky_relu, (x,), {"negative_slope": negative_slope})
    if activation == "silu":
        return graph.call_function(F.silu, (x,))
    return x


def bn_call_inputs(node: Node) -> Tuple[Any, Any]:
    """``(input, residual)`` of a call to a batch-norm module (residual may be None)."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    residual = node.args[1] if len(node.args) > 1 else node.kwargs.get("residual")
    return x, residual


def iter_call_modules(
    graph: fx.Graph, modules: Dict[str, nn.Module], wanted
) -> Iterator[Tuple[Node, nn.Module]]:
    """``(node, module)`` for each ``call_module`` node whose module satisfies ``wanted``."""
    for node in list(graph.nodes):
        if node.op == "call_module":
            mod = modules.get(node.target)
            if mod is not None and wanted(mod):
                yield node, mod
