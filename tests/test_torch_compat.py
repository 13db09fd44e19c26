"""Every private torch API bnfused relies on exists and answers as bnfused assumes.

A torch release that removes or changes one fails here, loudly, instead of
bnfused silently taking the slow path on every call.
"""

import copy

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import bnfused  # noqa: F401  (registers torch.ops.bnfused)
from bnfused.op import torch_compat as tc


def test_nothing_is_missing():
    assert tc.missing() == []


def test_queries_are_false_in_plain_eager():
    assert not tc.is_compiling() and not tc.is_tracing()
    assert tc.dispatch_mode_depth() == 0 and not tc.function_mode_enabled()
    assert not tc.functorch_transforms_active() and not tc.forward_ad_active()


def test_queries_see_what_they_guard():
    seen = {}

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Dispatch():
        seen["dispatch"] = tc.dispatch_mode_depth()
    with TorchFunctionMode():
        seen["function"] = tc.function_mode_enabled()

    def probe(x):
        seen["functorch"] = tc.functorch_transforms_active()
        return x * 2

    torch.func.vmap(probe)(torch.randn(3, 2))

    def forward_mode(x):
        seen["forward_ad"] = tc.forward_ad_active()
        return x * 2

    torch.func.jvp(forward_mode, (torch.randn(2),), (torch.randn(2),))
    with torch.autograd.forward_ad.dual_level():
        seen["dual_level"] = tc.forward_ad_active()

    def traced(x):
        seen["tracing"] = seen.get("tracing", False) or tc.is_tracing()  # the check run is not
        return x + 1

    torch.jit.trace(traced, torch.randn(2))
    assert seen == {
        "dispatch": 1,
        "function": True,
        "functorch": True,
        "tracing": True,
        "forward_ad": True,
        "dual_level": True,
    }


def test_below_autograd_drops_the_graph():
    x = torch.randn(3, requires_grad=True)
    with tc.below_autograd():
        y = torch.ops.aten.mul(x, 2)
    assert y.grad_fn is None


def test_dispatch_key_query():
    assert tc.has_kernel_for_dispatch_key("bnfused::forward", "CPU")
    assert not tc.has_kernel_for_dispatch_key("bnfused::forward", "XLA")


def test_fx_preserved_attributes_survive_deepcopy():
    gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    gm.meta.setdefault(tc.USER_PRESERVED_ATTRIBUTES_KEY, {})["note"] = 7
    gm.note = 7
    assert copy.deepcopy(gm).note == 7
