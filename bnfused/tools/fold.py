"""Fold eval-mode batch norms into the convolution or linear layer before them.

For inference: ``bn(conv(x))`` with frozen statistics is one affine map per
output channel, so it is absorbed into the convolution's weight and bias.
"""

from __future__ import annotations

import copy
import itertools
import operator
import warnings
from typing import List

import torch
from torch import fx, nn

from . import fx_graph as _fx
from .convert import fused_residual
from .swap import activation_module, batch_norm_classes, is_plain_sequential

_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@fx.wrap
def folded_linear_output(y: torch.Tensor) -> torch.Tensor:
    """``y``, checked to be ``(N, C)``: a BatchNorm1d folded into a Linear layer
    normalized the last dimension, which is the channel dimension only in 2-D."""
    if isinstance(y, fx.Proxy):  # re-traced (GraphModule unpickling): stay one node
        return y.tracer.create_proxy("call_function", folded_linear_output, (y,), {})
    if y.dim() != 2:
        raise RuntimeError(
            f"bnfused.fold_batchnorm folded a BatchNorm1d into a Linear layer, "
            f"which is exact only for 2-D (N, C) outputs; got shape "
            f"{tuple(y.shape)}"
        )
    return y


def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Scale ``layer``'s weight and set its bias so that ``layer(x) == bn(layer_old(x))``
    with ``bn``'s running statistics. Computed in float64, stored in the layer's dtype;
    ``requires_grad`` of the weight is kept (a new bias follows the weight)."""
    weight = layer.weight
    with torch.no_grad():
        dev = weight.device
        f64 = dict(dtype=torch.float64, device=dev)
        scale = torch.rsqrt(bn.running_var.to(**f64) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(**f64)
        shift = -bn.running_mean.to(**f64) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(**f64)
        if layer.bias is not None:
            shift = shift + layer.bias.to(**f64) * scale
        new_weight = weight.to(torch.float64) * scale.view([-1] + [1] * (weight.dim() - 1))
        bias_like = layer.bias if layer.bias is not None else weight
        new_bias = shift.to(bias_like.dtype)
        new_weight = new_weight.to(weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=bias_like.requires_grad)


def _foldable(layer, bn, shared: set, training: List[str], path: str) -> bool:
    """Whether ``bn`` (called on ``layer``'s output) can be folded into ``layer``."""
    if (
        type(layer) not in _FOLD_INTO
        or id(layer) in shared
        or id(bn) in shared
        or _fx.has_hooks(layer)
        or _fx.has_hooks(bn)
    ):
        return False
    out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_features:
        return False
    if bn.training:
        training.append(path)
        return False
    return bn.running_mean is not None and bn.running_var is not None


def _fold_sequential(
    seq: nn.Sequential, shared: set, bn_classes: set, training: List[str], prefix: str
) -> bool:
    """``[conv, bn(act)]`` -> ``[conv', act or Identity]`` in place; False, changing
    nothing, when a Linear is involved (its 2-D check needs a graph)."""
    names = list(seq._modules)
    pairs = [
        (a, b)
        for a, b in itertools.pairwise(names)
        if type(seq._modules[b]) in bn_classes and type(seq._modules[a]) in _FOLD_INTO
    ]
    if any(isinstance(seq._modules[a], nn.Linear) for a, _ in pairs):
        return False
    for a, b in pairs:
        layer, bn = seq._modules[a], seq._modules[b]
        if _foldable(layer, bn, shared, training, prefix + b):
            fold_into(layer, bn)
            seq._modules[b] = activation_module(
                getattr(bn, "activation", "identity"), getattr(bn, "negative_slope", 0.01)
            )
    return True


def _only_feeds(x: fx.Node, bn: fx.Node) -> bool:
    """Whether ``x`` is used by ``bn`` only (a fused residual's shape check on ``x`` counts
    as part of ``bn``)."""
    for user in x.users:
        is_check = (
            user.op == "call_function"
            and user.target is fused_residual
            and user.args[1] is x
            and set(user.users) == {bn}
        )
        if user is not bn and not is_check:
            return False
    return True


def _fold_graph(
    parent: nn.Module,
    graph: fx.Graph,
    shared: set,
    bn_classes: set,
    training: List[str],
    prefix: str,
) -> bool:
    named = dict(parent.named_modules(remove_duplicate=False))
    counts = _fx.call_counts(graph)
    changed = False
    for node, bn in _fx.iter_call_modules(graph, named, lambda m: type(m) in bn_classes):
        x, residual = _fx.bn_call_inputs(node)
        if not isinstance(x, fx.Node) or x.op != "call_module":
            continue
        layer = named.get(x.target)
        if (
            not _only_feeds(x, node)
            or counts[x.target] != 1
            or counts[node.target] != 1
            or not _foldable(layer, bn, shared, training, prefix + node.target)
        ):
            continue
        fold_into(layer, bn)
        with graph.inserting_before(node):
            out = x
            if isinstance(layer, nn.Linear):
                out = graph.call_function(folded_linear_output, (out,))
            if isinstance(residual, fx.Node):
                guard = residual
                if guard.op == "call_function" and guard.target is fused_residual:
                    residual = guard.args[0]
                out = graph.call_function(operator.add, (out, residual))
            out = _fx.emit_activation(
                graph,
                out,
                getattr(bn, "activation", "identity"),
                getattr(bn, "negative_slope", 0.01),
            )
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        if isinstance(residual, fx.Node) and guard is not residual and not guard.users:
            graph.erase_node(guard)
        _fx.set_submodule(parent, node.target, nn.Identity())
        changed = True
    return changed


def fold_batchnorm(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold batch norms in eval mode into the ``Conv1d/2d/3d`` or ``Linear`` before them.

    For inference. A batch norm (``torch.nn`` or bnfused, fused ``BatchNormAct``
    included) is folded when it is in eval mode with running statistics, its
    input is the output of a ``Conv*d``/``Linear`` child used by nothing else,
    and both layers are called once, are not shared and have no hooks.
    The layer's weight and bias absorb the normalization (computed in float64,
    stored in the layer's dtype; a bias is added when it had none); the batch
    norm's place in the graph keeps only its residual add and activation, and
    the module itself becomes ``nn.Identity``. Grouped convolutions fold like
    any other (the scale is per output channel). A batch norm after a
    ``Linear`` is folded for 2-D ``(N, C)`` use and checked at run time.

    Batch norms still in training mode are left as they are, with a warning.
    ``state_dict`` keys change (the batch norms' entries go, new biases come).

    Args:
        module: the model; modules are traced one at a time with ``torch.fx``.
        inplace: fold into ``module`` itself instead of a deep copy.

    Returns:
        The folded model (use the return value: the root may be replaced).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(module).__name__}")
    root = module if inplace else copy.deepcopy(module)
    bn_classes = batch_norm_classes()
    shared = _fx.shared_module_ids(root)
    training: List[str] = []
    for path, parent in _fx.modules_with_children(root, lambda c: type(c) in bn_classes):
        prefix = path + "." if path else ""
        if id(parent) in shared:
            continue
        if is_plain_sequential(parent) and _fold_sequential(
            parent, shared, bn_classes, training, prefix
        ):
            continue
        try:
            graph = _fx.trace_one_level(parent)
        except Exception as e:  # torch.fx raises many types for untraceable code
            warnings.warn(
                f"bnfused.fold_batchnorm: cannot trace {path or '<root>'} "
                f"({type(parent).__name__}) with torch.fx ({type(e).__name__}); its "
                "batch norms were not folded",
                stacklevel=2,
            )
            continue
        if not _fold_graph(parent, graph, shared, bn_classes, training, prefix):
            continue
        new = _fx.install_graph(parent, graph)
        if not path:
            root = new
        else:
            _fx.set_submodule(root, path, new)
    if training:
        shown = ", ".join(training[:5]) + (", ..." if len(training) > 5 else "")
        warnings.warn(
            f"bnfused.fold_batchnorm: {len(training)} batch norm(s) in training mode "
            f"were not folded ({shown}); call .eval() first",
            stacklevel=2,
        )
    return root
