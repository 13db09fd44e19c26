"""Put bnfused batch norms into an existing model.

:func:`convert_model` swaps every ``torch.nn.BatchNorm1d/2d/3d`` (and
``SyncBatchNorm``) for its bnfused twin and, with ``fuse_activations=True``,
rewrites ``bn -> act`` and ``bn -> add -> act`` into one fused call.
:func:`bnfused.to_torch` undoes both.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import fx, nn

from . import fx_graph as _fx
from . import timm_layers
from .fusion_log import FusionLog, activation_name, unfused_reason
from .fx_inline import Inliner
from .swap import (
    fused_classes,
    graph_fusable,
    is_plain_sequential,
    plain_classes,
    rebuild,
    replace_everywhere,
)


def _replace_plain(root: nn.Module, fuse: bool) -> nn.Module:
    classes = plain_classes()
    for path, m in list(root.named_modules()):
        new = timm_layers.convert(m, fuse)
        if new is None:
            cls = classes.get(type(m))
            if cls is None:
                continue
            new = rebuild(m, cls)
        if not path:
            return new  # the model is a single batch norm
        replace_everywhere(root, m, new)
    return root


GRAPH_FUSED = "_bnfused_graph_fused"  # on a timm layer fused by its caller's graph


@fx.wrap
def fused_residual(residual: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """The residual of a fused ``act(bn(input) + residual)`` call, checked at run time.

    Passes ``residual`` through when it has ``input``'s shape and dtype;
    broadcasts it (``expand``) and converts it when ``bn(input) + residual``
    would still have ``input``'s shape and dtype; raises otherwise (the fused
    op cannot produce a larger or promoted result).
    """
    if isinstance(residual, fx.Proxy):  # re-traced (GraphModule unpickling): stay one node
        return residual.tracer.create_proxy("call_function", fused_residual, (residual, input), {})
    if residual.shape == input.shape and residual.dtype == input.dtype:
        return residual
    if (
        torch.broadcast_shapes(residual.shape, input.shape) != input.shape
        or torch.result_type(input, residual) != input.dtype
    ):
        raise RuntimeError(
            f"bnfused: a fused batch-norm + add got a residual of shape {tuple(residual.shape)} "
            f"and dtype {residual.dtype} for an input of shape {tuple(input.shape)} and dtype "
            f"{input.dtype}; the sum would not have the input's shape and dtype. Convert the "
            "model with example_inputs=... so such adds are left unfused, or without "
            "fuse_activations"
        )
    return residual.to(input.dtype).expand(input.shape)


def _add_is_legal(
    bn: fx.Node, other: Any, in_place: bool, add: fx.Node, shapes: Optional[Dict[str, list]]
) -> Optional[str]:
    """None when ``add`` (``bn + other``) can become ``bnact(x, other)``; else why not."""
    if not isinstance(other, fx.Node) or other is bn:
        return "the add's other operand is not another tensor"
    if in_place and add.args[0] is not bn and not _fx.is_fresh_sum(other, add):
        return "the add writes in place into a tensor that others may read"
    if shapes is None or bn.name not in shapes:
        return None  # checked at run time by fused_residual
    for seen in shapes[bn.name]:  # every call of the module on the example inputs
        y, r, s = seen.get(bn.name), seen.get(other.name), seen.get(add.name)
        if y is None or r is None or s is None or y != s:
            return "the sum is larger or of another dtype than the batch norm's output"
    return None


def _worth_inlining(node: fx.Node, named: Dict[str, nn.Module]) -> bool:
    """Whether ``node``'s only use is an activation or an add with another tensor."""
    if len(node.users) != 1:
        return False
    user = next(iter(node.users))
    if _fx.activation_of(user, named) is not None and user.args[0] is node:
        return True
    operands = _fx.add_operands(user)
    return (
        operands is not None
        and node in operands[:2]
        and all(isinstance(o, fx.Node) for o in operands[:2])
    )


def _cannot_rewrite(
    bn: fx.Node, counts: Dict[str, int], mod: nn.Module, shared: set
) -> Optional[str]:
    """Why the call ``bn`` cannot be fused with anything (None: it can)."""
    if counts[bn.target] != 1:
        return "called more than once"
    if id(mod) in shared:
        return "shared between modules"
    if _fx.has_hooks(mod):
        return "has hooks"
    if len(bn.args) != 1 or bn.kwargs:
        return "called with more than one argument"
    if len(bn.users) != 1:
        return "batch-norm output used elsewhere" if bn.users else "its output is unused"
    return None


def _fuse_graph(
    module: nn.Module,
    graph: fx.Graph,
    shared: set,
    shapes: Optional[Dict[str, list]],
    why: Dict[str, str],
) -> Dict[str, Tuple[str, float, bool]]:
    """Rewrite fusable patterns in ``graph``.

    Returns {batch-norm target: (activation, slope, has residual)}; ``why`` gets,
    for each batch norm called here and left unfused, the reason.
    """
    named = dict(module.named_modules(remove_duplicate=False))
    _fx.skip_identities(graph, named)
    inliner = Inliner(module, graph_fusable, shared, _fx.trace_one_level)
    if inliner.run(graph, lambda n: _worth_inlining(n, named)):
        named = dict(module.named_modules(remove_duplicate=False))
        _fx.skip_identities(graph, named)
    counts = _fx.call_counts(graph)
    done: Dict[str, Tuple[str, float, bool]] = {}
    for with_act in (True, False):  # activations first: a sum of branches keeps its act
        for bn, mod in _fx.iter_call_modules(graph, named, graph_fusable):
            if bn.target in done or _cannot_rewrite(bn, counts, mod, shared) is not None:
                continue
            user = next(iter(bn.users))
            act = _fx.activation_of(user, named)
            if act is not None and user.args[0] is bn:
                if with_act and not _fx.input_written_between(bn, user, named):
                    user.replace_all_uses_with(bn)
                    graph.erase_node(user)
                    done[bn.target] = (*act, False)
                continue
            operands = _fx.add_operands(user)
            if operands is None or bn not in operands[:2]:
                continue
            a, b, in_place = operands
            other = b if a is bn else a
            if _add_is_legal(
                bn, other, in_place, user, shapes
            ) is not None or _fx.input_written_between(bn, user, named):
                continue
            last, act = user, ("identity", 0.01)
            if len(user.users) == 1:
                after = next(iter(user.users))
                after_act = _fx.activation_of(after, named)
                if after_act is not None and after.args[0] is user:
                    last, act = after, after_act
            if with_act != (last is not user):
                continue
            with graph.inserting_before(user):  # both the input and the residual exist here
                residual = graph.call_function(fused_residual, (other, bn.args[0]))
                fused = graph.call_module(bn.target, (bn.args[0], residual))
            last.replace_all_uses_with(fused)
            for node in (last, user, bn) if last is not user else (user, bn):
                graph.erase_node(node)
            done[bn.target] = (*act, True)
    for bn, mod in _fx.iter_call_modules(graph, named, graph_fusable):
        if bn.target not in done:
            why[bn.target] = _cannot_rewrite(bn, counts, mod, shared) or unfused_reason(
                bn, named, shapes, _add_is_legal
            )
    return done


def _fuse_sequential(
    seq: nn.Sequential, shared: set, why: Dict[str, str]
) -> Dict[str, Tuple[str, float, bool]]:
    """``[..., bn, act, ...]`` -> ``[..., bnact, Identity, ...]``: same indices and keys."""
    fusable = fused_classes()
    names = list(seq._modules)
    done: Dict[str, Tuple[str, float, bool]] = {}
    for name, next_name in zip(names, names[1:] + [None]):
        bn = seq._modules[name]
        if type(bn) not in fusable:
            continue
        if id(bn) in shared or _fx.has_hooks(bn):
            why[name] = "shared between modules" if id(bn) in shared else "has hooks"
            continue
        act = seq._modules[next_name] if next_name is not None else None
        spec = _fx.activation_of_module(act)
        if spec is None:
            why[name] = activation_name(act) if act is not None else "no activation follows"
            continue
        seq._modules[name] = rebuild(
            bn, fusable[type(bn)], activation=spec[0], negative_slope=spec[1]
        )
        seq._modules[next_name] = nn.Identity()
        done[name] = (*spec, False)
    return done


def _record_shapes(
    root: nn.Module, paths: Sequence[str], example_inputs: Tuple[Any, ...]
) -> Dict[str, Dict[str, list]]:
    """Per module path: for every call on ``example_inputs``, {node name: (shape, dtype)}.

    Runs a deep copy of the model, so no running statistic of ``root`` changes.
    """
    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    trial = copy.deepcopy(root)
    found: Dict[str, Dict[str, list]] = {p: {} for p in paths}
    handles = []
    for path in paths:
        m = trial.get_submodule(path) if path else trial
        try:
            gm = fx.GraphModule(m, _fx.trace_one_level(m))
        except Exception:
            continue

        def hook(_mod, args, kwargs, gm=gm, path=path):
            if kwargs:
                return
            ShapeProp(gm).propagate(*args)
            seen = {
                n.name: (tuple(n.meta["tensor_meta"].shape), n.meta["tensor_meta"].dtype)
                for n in gm.graph.nodes
                if isinstance(n.meta.get("tensor_meta"), TensorMetadata)
            }
            for n in gm.graph.nodes:
                if n.op == "call_module" and n.name in seen:
                    found[path].setdefault(n.name, []).append(seen)

        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        trial(*example_inputs)
    for h in handles:
        h.remove()
    return found


def _fuse(
    root: nn.Module, example_inputs: Optional[Tuple[Any, ...]], log: Optional[FusionLog] = None
) -> nn.Module:
    log = log if log is not None else FusionLog()
    fusable = fused_classes()
    candidates = _fx.modules_with_descendants(root, graph_fusable)
    shapes = (
        _record_shapes(
            root, [p for p, m in candidates if not is_plain_sequential(m)], example_inputs
        )
        if example_inputs is not None
        else {}
    )
    shared = _fx.shared_module_ids(root)
    for path, module in candidates:
        prefix = f"{path}." if path else ""
        direct = [n for n, c in module.named_children() if graph_fusable(c)]
        if id(module) in shared:
            log.note(prefix, direct, f"its caller {path or '<root>'} is shared between modules")
            continue
        why: Dict[str, str] = {}
        if is_plain_sequential(module):
            log.record(prefix, _fuse_sequential(module, shared, why), why)
            continue
        try:
            graph = _fx.trace_one_level(module)
        except Exception as e:  # torch.fx raises many types for untraceable code
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.note(
                prefix,
                direct,
                f"untraceable module {path or '<root>'} "
                f"({type(module).__name__}: {type(e).__name__}: {reason})",
            )
            if direct:
                warnings.warn(
                    f"bnfused.convert_model: cannot trace {path or '<root>'} "
                    f"({type(module).__name__}) with torch.fx ({type(e).__name__}: "
                    f"{reason}); its batch norms were replaced without fusing "
                    "activations",
                    stacklevel=3,
                )
            continue
        done = _fuse_graph(
            module, graph, shared, shapes.get(path) if example_inputs is not None else None, why
        )
        log.record(prefix, done, why)
        if not done:
            continue
        for target, (activation, slope, _) in done.items():
            old = module.get_submodule(target)
            if type(old) in fusable:
                old = rebuild(old, fusable[type(old)])
                _fx.set_submodule(module, target, old)
            else:
                old.__dict__[GRAPH_FUSED] = True  # to_torch: the activation is the graph's
            old.activation, old.negative_slope = activation, slope
        new = _fx.install_graph(module, graph)
        if not path:
            root = new
        else:
            _fx.set_submodule(root, path, new)
    return root


def convert_model(
    module: nn.Module,
    fuse_activations: bool = False,
    inplace: bool = False,
    example_inputs: Any = None,
    _log: Optional[FusionLog] = None,
) -> nn.Module:
    """Replace the batch norms of ``module`` by bnfused ones, optionally fusing activations.

    Every ``torch.nn.BatchNorm1d/2d/3d`` becomes ``bnfused.BatchNorm1d/2d/3d``
    and ``torch.nn.SyncBatchNorm`` becomes ``bnfused.SyncBatchNorm`` (left as
    it is, with a warning, when that class is unavailable); timm's
    ``BatchNormAct2d`` / ``FrozenBatchNormAct2d`` and torchvision's
    ``FrozenBatchNorm2d`` become their bnfused twins (:mod:`.timm_layers`).
    Parameters and buffers keep their values, ``requires_grad``, dtype and
    device; modules keep train/eval mode, hooks and attributes. Subclasses of the torch classes and
    modules already from bnfused are left as they are.

    With ``fuse_activations=True`` each module whose own ``forward`` calls a
    batch-norm child is traced with ``torch.fx`` (children stay calls) and

    * ``act(bn(x))`` becomes ``bnact(x)``,
    * ``act(bn(x) + r)`` and ``bn(x) + r`` become ``bnact(x, r)``,

    (a call of a plain ``nn.Identity`` child in between is dropped), where
    ``act`` is ``nn.ReLU``/``nn.LeakyReLU``/``nn.SiLU`` (in place or not,
    shared or not), ``F.relu``/``torch.relu``/``Tensor.relu(_)``/
    ``F.leaky_relu``/``F.silu``, the add is ``+``/``+=``/``torch.add``/
    ``Tensor.add(_)``, and ``bnact`` is the batch norm itself turned, at its own
    path, into ``bnfused.BatchNormAct*d``. A pattern is fused only when the batch
    norm is called once, its output has no other user, and the add's other
    operand is a tensor; the residual's shape and dtype are checked when the
    model runs (:func:`fused_residual`), and, if ``example_inputs`` is given,
    on those inputs already, leaving adds that do not match unfused. Rewritten
    modules become ``torch.fx.GraphModule`` s holding the same children,
    parameters and buffers, so ``state_dict`` keys are unchanged; a module that
    ``torch.fx`` cannot trace (data-dependent control flow, a forward that
    depends on ``self.training``) keeps its code, with a warning naming it.

    Args:
        module: the model (any ``nn.Module``).
        fuse_activations: also fuse activations and residual adds.
        inplace: convert ``module`` itself (its parameters are the converted
            model's); else a deep copy is converted.
        example_inputs: a tensor or tuple of positional inputs of ``module``,
            used only to check the shapes of residual adds (on a copy).

    Returns:
        The converted model; use the return value (the root may be replaced).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_model expects an nn.Module, got {type(module).__name__}")
    root = module if inplace else copy.deepcopy(module)
    root = _replace_plain(root, fuse_activations)
    if fuse_activations:
        if example_inputs is not None and not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)
        root = _fuse(root, example_inputs, _log)
    return root
