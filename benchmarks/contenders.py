"""The modules and per-mode callables that race in each row.

Anchors are written as a torch user writes them (torchvision's ResNet style):
``nn.BatchNorm2d``; BN then ``nn.ReLU(inplace=True)``; BN, ``out += residual``,
then in-place ReLU. ``torch.compile`` compiles that same eager module. bnfused
runs ``BatchNorm2d`` / ``BatchNormAct2d`` with one backend forced per contender.

Kernel mode (``functional=True``) races the thinnest calls instead, so the
kernels' own time shows: ``torch.nn.functional.batch_norm`` (then in-place add
and ``relu_``) against one ``bnfused.functional.batch_norm`` call, with no
module in between.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

import bnfused

from .cases import Case

EAGER, COMPILE = "eager", "compile"


class BNReLU(nn.Module):
    """BN then in-place ReLU, as separate ops."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.bn = bn
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(x))


class BNAddReLU(nn.Module):
    """BN, add the residual, in-place ReLU: the ResNet block tail as separate ops."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.bn = bn
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, residual):
        out = self.bn(x)
        out += residual
        return self.relu(out)


def _torch_bn(ndim: int, channels: int) -> nn.Module:
    return {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[ndim](channels)


def eager_module(op: str, ndim: int, channels: int) -> nn.Module:
    """The torch anchor for ``op`` on ``ndim``-D input; parameters stay fp32."""
    bn = _torch_bn(ndim, channels)
    with torch.no_grad():  # non-trivial affine and running stats
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    if op == "bn":
        return bn
    return BNReLU(bn) if op == "bn_relu" else BNAddReLU(bn)


def fused_module(op: str, ndim: int, channels: int, state: Dict[str, torch.Tensor]) -> nn.Module:
    """bnfused module equivalent to :func:`eager_module`, loaded with the same state."""
    suffix = {3: "1d", 4: "2d", 5: "3d"}[ndim]
    if op == "bn":
        module = getattr(bnfused, "BatchNorm" + suffix)(channels)
    else:
        module = getattr(bnfused, "BatchNormAct" + suffix)(channels, activation="relu")
    module.load_state_dict(state)
    return module


class FunctionalCall(nn.Module):
    """Holds a BN's parameters and buffers and calls one function with them directly.

    ``mode_callable`` calls :meth:`forward` itself, skipping ``nn.Module.__call__``.
    """

    def __init__(self, op: str, state: Dict[str, torch.Tensor], fused: bool):
        super().__init__()
        self.op, self.fused = op, fused
        self.weight = nn.Parameter(state["weight"].clone())
        self.bias = nn.Parameter(state["bias"].clone())
        self.register_buffer("running_mean", state["running_mean"].clone())
        self.register_buffer("running_var", state["running_var"].clone())

    def forward(self, x, residual=None):
        if self.fused:
            return bnfused.functional.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training,
                0.1,
                1e-5,
                activation=None if self.op == "bn" else "relu",
                residual=residual,
            )
        y = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, 1e-5
        )
        if residual is not None:
            y += residual
        return y if self.op == "bn" else y.relu_()


class Inputs:
    """x, residual, output gradient for a case; grad-requiring copies for fwd_bwd."""

    def __init__(self, case: Case, device: torch.device):
        fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
        gen = dict(device=device, dtype=case.torch_dtype)
        self.x = torch.randn(case.shape, **gen).contiguous(memory_format=fmt)
        self.residual = (
            torch.randn(case.shape, **gen).contiguous(memory_format=fmt)
            if case.op == "bn_add_relu"
            else None
        )
        self.grad = torch.randn(case.shape, **gen).contiguous(memory_format=fmt)
        self.x_leaf = self.x.detach().clone(memory_format=fmt).requires_grad_()
        self.residual_leaf = (
            None
            if self.residual is None
            else self.residual.detach().clone(memory_format=fmt).requires_grad_()
        )


def mode_callable(
    module: nn.Module, inputs: Inputs, mode: str, backend: Optional[str] = None
) -> Callable[[], object]:
    """One call of ``module`` in ``mode``; ``backend`` forces a bnfused backend, and
    with a suffix (``cuda:two-pass``, ``cuda:persistent``) the CUDA kernels' path.

    train/eval run under ``torch.no_grad`` (the training forward still computes
    batch statistics and updates running stats). fwd_bwd runs the training
    forward with autograd and ``torch.autograd.grad`` for x, residual, weight
    and bias (no ``.grad`` accumulation).
    """
    params = [p for p in module.parameters() if p.requires_grad]

    call = module.forward if isinstance(module, FunctionalCall) else module

    def forward(x, residual):
        return call(x) if residual is None else call(x, residual)

    if mode in ("train", "eval"):

        def run():
            with torch.no_grad():
                return forward(inputs.x, inputs.residual)
    else:
        leaves = [inputs.x_leaf] + ([inputs.residual_leaf] if inputs.residual is not None else [])

        def run():
            y = forward(inputs.x_leaf, inputs.residual_leaf)
            return torch.autograd.grad(y, leaves + params, inputs.grad)

    if backend is None:
        return run
    name, _, path = backend.partition(":")  # "cuda:persistent": a backend and its CUDA path

    def run_forced():
        with bnfused.use_backend(name):
            if not path:
                return run()
            with bnfused.use_cuda_path(path):
                return run()

    return run_forced


def build(case: Case, device: torch.device, backends, with_compile: bool, functional: bool = False):
    """(modules by contender name, inputs): eager, compile (optional), one per backend.

    ``functional``: :class:`FunctionalCall` contenders (torch's and bnfused's
    functions) instead of modules.
    """
    ndim = len(case.shape)
    eager = eager_module(case.op, ndim, case.shape[1]).to(device)
    state = (eager.bn if case.op != "bn" else eager).state_dict()
    if functional:
        state = {k: v for k, v in state.items() if k != "num_batches_tracked"}
        eager = FunctionalCall(case.op, state, fused=False).to(device)
    modules: Dict[str, nn.Module] = {EAGER: eager}
    if with_compile:
        modules[COMPILE] = torch.compile(copy.deepcopy(eager), dynamic=False)
    for name in backends:
        modules[name] = (
            FunctionalCall(case.op, state, fused=True)
            if functional
            else fused_module(case.op, ndim, case.shape[1], state)
        ).to(device)
    return modules, Inputs(case, device)
