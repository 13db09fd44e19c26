"""The private torch APIs bnfused uses, in one place, each checked by tests/test_torch_compat.py.

They serve speed (skipping two Python dispatch hops on plain eager calls),
forward-mode AD, fx bookkeeping and quantization fusion patterns. Where the
running torch lacks one, the stand-in takes the safe path (the dispatcher, or
aten ops; nothing preserved) and the name is listed by :func:`missing`, which
the test suite requires to be empty, so a torch release that removes one fails
CI loudly instead of silently slowing every call.
"""

from __future__ import annotations

from typing import Callable, List

import torch
import torch.autograd.forward_ad as _forward_ad

_MISSING: List[str] = []


def _query(name: str) -> Callable[[], bool]:
    """``torch._C.<name>``, or a stand-in answering "active" (the safe, slow path)."""
    found = getattr(torch._C, name, None)
    if found is None:
        _MISSING.append(f"torch._C.{name}")
        return lambda: True
    return found


is_tracing = _query("_is_tracing")
dispatch_mode_depth = _query("_len_torch_dispatch_stack")
function_mode_enabled = _query("_is_torch_function_mode_enabled")
functorch_transforms_active = _query("_are_functorch_transforms_active")

if hasattr(_forward_ad, "_current_level"):

    def forward_ad_active() -> bool:
        """Whether forward-mode AD is on: inside ``torch.autograd.forward_ad.dual_level()``,
        which ``torch.func.jvp`` and ``jacfwd`` enter too."""
        return _forward_ad._current_level >= 0
else:
    _MISSING.append("torch.autograd.forward_ad._current_level")

    def forward_ad_active() -> bool:
        return True  # the safe path: differentiable aten ops


if hasattr(torch.compiler, "is_compiling"):
    is_compiling = torch.compiler.is_compiling
else:  # torch < 2.3
    _MISSING.append("torch.compiler.is_compiling")
    is_compiling = torch._dynamo.is_compiling

# A tensor of a torch.func transform: vmap-batched (torch.func.vmap's, or the older vmap
# autograd.grad uses for is_grads_batched=True), or wrapped (grad, vjp: also once the
# transform has exited, when a vjp function runs).
_FUNCTORCH_QUERIES = [
    getattr(torch._C._functorch, name, None)
    for name in ("is_batchedtensor", "is_legacy_batchedtensor", "is_functorch_wrapped_tensor")
]
if None in _FUNCTORCH_QUERIES:
    _MISSING.append(
        "torch._C._functorch.is_batchedtensor / is_legacy_batchedtensor / "
        "is_functorch_wrapped_tensor"
    )


def is_functorch_tensor(t: torch.Tensor) -> bool:
    """Whether ``t`` belongs to a torch.func transform (True where this torch cannot tell:
    the safe path, the dispatcher)."""
    return any(query is None or query(t) for query in _FUNCTORCH_QUERIES)


# Runs the code below the autograd dispatch key (what an autograd kernel's body needs).
below_autograd = torch._C._AutoDispatchBelowAutograd


def has_kernel_for_dispatch_key(op: str, key: str) -> bool:
    """Whether ``op`` (``"ns::name"``) has a kernel registered for dispatch ``key``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


try:  # fx: attributes a GraphModule keeps through deepcopy and pickling
    from torch.fx.graph_module import (
        _USER_PRESERVED_ATTRIBUTES_KEY as USER_PRESERVED_ATTRIBUTES_KEY,
    )
except ImportError:
    _MISSING.append("torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY")
    USER_PRESERVED_ATTRIBUTES_KEY = "_user_preserved_attributes"


try:  # eager-mode quantization: (module types) -> fuser method, extended by bnfused
    from torch.ao.quantization.fuser_method_mappings import (
        _DEFAULT_OP_LIST_TO_FUSER_METHOD as FUSER_METHODS,
    )
except ImportError:
    _MISSING.append("torch.ao.quantization.fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD")
    FUSER_METHODS = {}


def missing() -> List[str]:
    """The private APIs this torch lacks (replaced by safe stand-ins)."""
    return list(_MISSING)
