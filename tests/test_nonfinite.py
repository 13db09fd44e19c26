"""NaN and Inf go where torch sends them, in every output of every activation.

torch's relu backward (threshold_backward) stops the gradient where z <= 0, so
a NaN pre-activation passes it; leaky_relu's passes it where z > 0, so NaN takes
the negative slope. The bit mask after a residual add stores the same decision.
NaN in ``x`` in eval mode, and NaN/Inf in the residual in training mode (the
batch statistics stay finite), keep the non-finite values local, so every other
element must still match torch.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnfused
from conftest import DEVICE, randn

ACTS = {"identity": lambda z: z, "relu": F.relu, "silu": F.silu,
        "leaky_relu": lambda z: F.leaky_relu(z, 0.2)}


def _run(module, x, residual, dy):
    x = x.clone().requires_grad_()
    r = residual.clone().requires_grad_() if residual is not None else None
    y = module(x) if r is None else module(x, r)
    grads = torch.autograd.grad(y, [t for t in (x, module.weight, module.bias, r) if t is not None],
                                dy)
    return (y,) + grads


def _torch_run(module, act, x, residual, dy):
    x = x.clone().requires_grad_()
    r = residual.clone().requires_grad_() if residual is not None else None
    z = module(x)
    y = act(z + r if r is not None else z)
    grads = torch.autograd.grad(y, [t for t in (x, module.weight, module.bias, r) if t is not None],
                                dy)
    return (y,) + grads


@pytest.mark.parametrize("channels_last", [False, True])
# NaN in x would spread over its channel in training; there it goes in the residual.
@pytest.mark.parametrize("training,residual", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("activation", list(ACTS))
def test_nan_and_inf_follow_torch(activation, training, residual, channels_last):
    shape = (3, 4, 5, 3)
    x, dy = randn(*shape, channels_last=channels_last), randn(*shape, channels_last=channels_last)
    r = randn(*shape, channels_last=channels_last) if residual else None
    target = r if training else x
    target[0, 1, 2, 0] = float("nan")
    target[1, 2, 0, 1] = float("inf")
    target[2, 3, 4, 2] = float("-inf")
    if not training:
        x[0, 0, 0, 0] = float("nan")  # also a NaN pre-activation without residual
    ours = bnfused.BatchNormAct2d(4, activation=activation, negative_slope=0.2, device=DEVICE)
    theirs = nn.BatchNorm2d(4, device=DEVICE)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(0.5, 1.5, 4))
            m.bias.copy_(torch.linspace(-0.3, 0.3, 4))
            m.running_mean.copy_(torch.linspace(-0.2, 0.2, 4))
            m.running_var.copy_(torch.linspace(0.5, 2.0, 4))
    ours.train(training), theirs.train(training)
    got = _run(ours, x, r, dy)
    want = _torch_run(theirs, ACTS[activation], x, r, dy)
    names = ["y", "dx", "dweight", "dbias", "dresidual"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, theirs.running_var, equal_nan=True)
