"""What :func:`bnfused.convert_model` fused, and why it left each other batch norm alone.

:class:`FusionLog` collects, by batch-norm path, the fused activation and
whether a residual was fused, or the reason the batch norm was not fused;
:mod:`bnfused.tools.coverage` turns it into a report.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from torch import fx, nn

from . import fx_graph as _fx

NO_ACTIVATION = "no activation follows"


class FusionLog:
    """``fused``: {path: (activation, negative_slope, has residual)};
    ``reasons``: {path: why the batch norm there was not fused}."""

    def __init__(self) -> None:
        self.fused: Dict[str, Tuple[str, float, bool]] = {}
        self.reasons: Dict[str, str] = {}

    def note(self, prefix: str, names: Iterable[str], reason: str) -> None:
        """Record ``reason`` for the batch norms ``prefix + name`` not fused yet."""
        for name in names:
            if prefix + name not in self.fused:
                self.reasons[prefix + name] = reason

    def record(
        self, prefix: str, done: Dict[str, Tuple[str, float, bool]], why: Dict[str, str]
    ) -> None:
        """The outcome of one module's rewrite; targets are relative to ``prefix``."""
        for target, spec in done.items():
            self.fused[prefix + target] = spec
            self.reasons.pop(prefix + target, None)
        self.note(prefix, why, "")
        for target, reason in why.items():
            if prefix + target not in self.fused:
                self.reasons[prefix + target] = reason


def activation_name(mod: Any) -> str:
    """The reason for a batch norm followed by module ``mod`` (not a fusable activation)."""
    cls = type(mod)
    if cls is nn.Identity:
        return NO_ACTIVATION
    if "activation" in cls.__module__ or cls.__module__.startswith("timm.layers.activations"):
        return f"unsupported activation {cls.__name__}"
    return f"{NO_ACTIVATION} ({cls.__name__} does)"


_KNOWN_FUNCTIONS = {
    "relu6",
    "hardswish",
    "hardsigmoid",
    "gelu",
    "sigmoid",
    "tanh",
    "mish",
    "elu",
    "selu",
    "celu",
    "softplus",
    "prelu",
    "hardtanh",
    "relu6_",
    "hardswish_",
    "sigmoid_",
    "tanh_",
    "elu_",
    "selu_",
    "celu_",
    "mish_",
    "silu_",
    "leaky_relu_",
}


def _function_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def unfused_reason(
    bn: fx.Node,
    modules: Dict[str, nn.Module],
    shapes: Optional[Dict[str, list]],
    add_is_legal: Callable[..., Optional[str]],
) -> str:
    """Why the call ``bn`` (one user, rewritable) was left unfused in its graph."""
    from .convert import fused_residual

    user = next(iter(bn.users))
    if user.op == "call_function" and user.target is fused_residual:
        return "the residual of another fused batch norm"
    operands = _fx.add_operands(user)
    if operands is not None and bn in operands[:2]:
        other = operands[1] if operands[0] is bn else operands[0]
        reason = add_is_legal(bn, other, operands[2], user, shapes)
        if reason is not None:
            return reason
        return "its input is written in place before the add"
    if _fx.activation_of(user, modules) is not None:
        return "its input is written in place before the activation"
    if user.op == "call_module":
        return activation_name(modules.get(user.target))
    if user.op in ("call_function", "call_method"):
        name = _function_name(user)
        if name.lower() in _KNOWN_FUNCTIONS:
            return f"unsupported activation {name}"
        return f"{NO_ACTIVATION} ({name} does)"
    return f"{NO_ACTIVATION} (it is the module's output)"
