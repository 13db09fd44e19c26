"""One graph for a forward whose optional arguments steer its Python code.

``torch.fx`` traces every argument as a Proxy, and a Proxy is never ``None``: a
forward starting with ``if shortcut is None: shortcut = x`` traces as if a
shortcut were always passed, and a graph built from that trace alone would drop
the ``x`` branch. :func:`check_optional_arguments` traces the forward again with
each subset of its optional arguments fixed at their defaults and accepts the
Proxy graph only when every such trace is that graph with each defaulted
argument replaced by one value:

* the default itself: the argument reaches the same ops either way, nothing to do;
* for a ``None`` default, a node of the graph: the argument's uses become
  ``default_if_none(argument, node)``, so one graph computes both cases.

Any other difference (a branch that adds or drops ops) raises ``RuntimeError``
and the caller leaves the module's code alone.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

Node = fx.Node
MAX_OPTIONAL = 4  # 2**4 - 1 extra traces at most; more optional arguments are not fused


@fx.wrap
def default_if_none(value: Any, default: Any) -> Any:
    """``default`` when ``value`` is None, else ``value``: a traced ``if value is None``."""
    if isinstance(value, fx.Proxy) or isinstance(default, fx.Proxy):  # re-traced: one node
        tracer = (value if isinstance(value, fx.Proxy) else default).tracer
        return tracer.create_proxy("call_function", default_if_none, (value, default), {})
    return default if value is None else value


def _optional_parameters(module: nn.Module) -> List[inspect.Parameter]:
    sig = inspect.signature(type(module).forward)
    return [
        p
        for p in list(sig.parameters.values())[1:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _guards(graph: fx.Graph, concrete: Sequence[Node]) -> set:
    """The checks fx adds for arguments fixed at a value (``_assert_is_none``, ``==``)."""
    found = set()
    for ph in concrete:
        for user in ph.users:
            found.add(user)
            found.update(
                u for u in user.users if u.op == "call_function" and u.target is torch._assert
            )
    return found


class _Matcher:
    """Matches a trace ``b`` (some arguments at their defaults) against the Proxy trace ``a``."""

    def __init__(self, defaults: Dict[Node, Any]):
        self.defaults = defaults  # placeholder of a -> the default it had in b
        self.to_a: Dict[Node, Node] = {}
        self.subs: Dict[Node, Tuple[str, Any]] = {}

    def same(self, x: Any, y: Any) -> bool:
        if isinstance(x, Node):
            if x in self.defaults:
                return self._substitute(x, y)
            return isinstance(y, Node) and self.to_a.get(y) is x
        if isinstance(y, Node):
            return False
        if isinstance(x, (tuple, list)):
            return (
                type(x) is type(y)
                and len(x) == len(y)
                and all(self.same(i, j) for i, j in zip(x, y))
            )
        if isinstance(x, dict):
            return (
                isinstance(y, dict) and list(x) == list(y) and all(self.same(x[k], y[k]) for k in x)
            )
        if isinstance(x, slice):
            return (
                isinstance(y, slice)
                and self.same(x.start, y.start)
                and self.same(x.stop, y.stop)
                and self.same(x.step, y.step)
            )
        return _equal_constants(x, y)

    def _substitute(self, ph: Node, y: Any) -> bool:
        if isinstance(y, Node):
            value = self.to_a.get(y)
            if value is None or value in self.defaults:
                return False
            sub = ("node", value)
        elif _equal_constants(y, self.defaults[ph]):
            sub = ("default", None)
        else:
            return False
        return self.subs.setdefault(ph, sub) == sub


def _equal_constants(x: Any, y: Any) -> bool:
    if x is y:
        return True
    if type(x) is not type(y) or isinstance(x, torch.Tensor):
        return False
    try:
        return bool(x == y)
    except Exception:
        return False


def _match(a: fx.Graph, b: fx.Graph, fixed: Dict[int, Any]) -> Optional[Dict[Node, Tuple]]:
    """Substitutions (placeholder of ``a`` -> ("default", None) or ("node", node of ``a``))
    under which ``a`` computes ``b``, where ``b`` fixed the placeholders at positions
    ``fixed`` at their defaults; None when there are none."""
    a_ph = [n for n in a.nodes if n.op == "placeholder"]
    b_ph = [n for n in b.nodes if n.op == "placeholder"]
    if len(a_ph) != len(b_ph):
        return None
    matcher = _Matcher({a_ph[i]: value for i, value in fixed.items()})
    for i, (x, y) in enumerate(zip(a_ph, b_ph)):
        if i not in fixed:
            matcher.to_a[y] = x
    guards = _guards(b, [b_ph[i] for i in fixed])
    a_rest = [n for n in a.nodes if n.op != "placeholder"]
    b_rest = [n for n in b.nodes if n.op != "placeholder" and n not in guards]
    if len(a_rest) != len(b_rest):
        return None
    for x, y in zip(a_rest, b_rest):
        if (
            x.op != y.op
            or x.target != y.target
            or not matcher.same(x.args, y.args)
            or not matcher.same(x.kwargs, y.kwargs)
        ):
            return None
        matcher.to_a[y] = x
    return matcher.subs


def check_optional_arguments(
    module: nn.Module, graph: fx.Graph, trace: Callable[[Dict[str, Any]], fx.Graph]
) -> fx.Graph:
    """``graph`` (the Proxy trace of ``module``), made to compute what ``module`` computes
    for every optional argument passed or left at its default.

    ``trace(concrete_args)`` traces ``module`` again. Raises ``RuntimeError``,
    naming the argument, when no single graph does.
    """
    params = _optional_parameters(module)
    if not params:
        return graph
    if len(params) > MAX_OPTIONAL:
        raise RuntimeError(
            f"its forward has {len(params)} optional arguments; bnfused checks "
            f"how at most {MAX_OPTIONAL} steer its code"
        )
    a_ph = [n for n in graph.nodes if n.op == "placeholder"]
    names = [n.target for n in a_ph]
    found: Dict[Node, Tuple] = {}
    for size in range(1, len(params) + 1):
        for subset in itertools.combinations(params, size):
            why = f"its forward branches on whether {', '.join(p.name for p in subset)} is passed"
            try:
                other = trace({p.name: p.default for p in subset})
            except Exception as e:
                raise RuntimeError(f"{why} (traced at the default: {type(e).__name__})") from e
            subs = _match(graph, other, {names.index(p.name): p.default for p in subset})
            if subs is None:
                raise RuntimeError(why)
            for ph, sub in subs.items():
                if found.setdefault(ph, sub) != sub:
                    raise RuntimeError(why)
    for ph, (kind, value) in found.items():
        if kind != "node":
            continue
        if ph.args != (None,):
            raise RuntimeError(
                f"its forward replaces {ph.target} when it is at its default {ph.args[0]!r}"
            )
        after = value if value.op != "placeholder" else a_ph[-1]
        with graph.inserting_after(after):
            chosen = graph.call_function(default_if_none, (ph, value))
        ph.replace_all_uses_with(chosen, delete_user_cb=lambda n, c=chosen: n is not c)
    return graph
