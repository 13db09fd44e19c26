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
from conftest import DEVICE, randn
from torch import nn

import bnfused

ACTS = {
    "identity": lambda z: z,
    "relu": F.relu,
    "silu": F.silu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.2),
}


def _run(module, x, residual, dy):
    x = x.clone().requires_grad_()
    r = residual.clone().requires_grad_() if residual is not None else None
    y = module(x) if r is None else module(x, r)
    grads = torch.autograd.grad(
        y, [t for t in (x, module.weight, module.bias, r) if t is not None], dy
    )
    return (y,) + grads


def _torch_run(module, act, x, residual, dy):
    x = x.clone().requires_grad_()
    r = residual.clone().requires_grad_() if residual is not None else None
    z = module(x)
    y = act(z + r if r is not None else z)
    grads = torch.autograd.grad(
        y, [t for t in (x, module.weight, module.bias, r) if t is not None], dy
    )
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
        torch.testing.assert_close(
            a, b, rtol=2e-5, atol=2e-5, equal_nan=True, msg=lambda m: f"{name}: {m}"
        )
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, theirs.running_var, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "rows"])
def test_infinite_value_in_training_gives_torch_running_mean(layout):
    """+Inf in a channel: mean and running_mean +Inf (torch's sum), not NaN; +Inf and -Inf: NaN."""
    shape = (6, 4) if layout == "rows" else (6, 4, 3, 2)
    x = randn(*shape)
    x[(0, 1) + (0,) * (len(shape) - 2)] = float("inf")
    x[(1, 2) + (1,) * (len(shape) - 2)] = float("-inf")
    x[(0, 3) + (0,) * (len(shape) - 2)] = float("inf")
    x[(2, 3) + (0,) * (len(shape) - 2)] = float("-inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cls, stock = (
        (bnfused.BatchNorm1d, nn.BatchNorm1d)
        if layout == "rows"
        else (bnfused.BatchNorm2d, nn.BatchNorm2d)
    )
    ours, theirs = cls(4, device=DEVICE), stock(4, device=DEVICE)
    torch.testing.assert_close(ours(x), theirs(x), equal_nan=True)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, theirs.running_var, equal_nan=True)
    assert ours.running_mean[1].item() == float("inf") and ours.running_mean[2].item() == -float(
        "inf"
    )


@pytest.mark.parametrize("shape", [(6, 3, 4, 2), (4, 32, 8, 16)], ids=["scalar", "vectors"])
@pytest.mark.parametrize("magnitude", [1e19, 1e30, 3e37])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_huge_finite_values_do_not_overflow(magnitude, layout, shape):
    """fp32 data near the top of its range: the statistics are taken without overflow.

    Judged against float64 (torch is exact on strided inputs, where it accumulates in
    double, and overflows on contiguous ones: y becomes the bias). The backward stays
    finite too: dx's coefficient of (x - mean), about weight / var, is below float32's
    range past a spread of 1e19, so the kernels apply weight * invstd after the
    centering; and the sum of g * (x - mean), which leaves float32's range near 3e37, stays
    finite (scaled by a power of two near invstd on the CPU, summed again in double by the
    CUDA kernels, summed as g * xhat by Triton). The vector-sized shape takes the CPU's
    vector paths in both layouts.
    """
    N, C, H, W = shape
    base = randn(N, C, H, W if layout != "strided" else 2 * W, dtype=torch.float64)
    x64 = base[..., ::2] if layout == "strided" else base
    x = (x64 * magnitude).float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = (base * magnitude).float()[..., ::2]
    x64 = x.double()
    dy = randn(*x.shape)
    ours = bnfused.BatchNorm2d(C, momentum=0.5, device=DEVICE)
    oracle = nn.BatchNorm2d(C, momentum=0.5, device=DEVICE, dtype=torch.float64)
    xg, xg64 = x.clone().requires_grad_(), x64.clone().requires_grad_()
    y, y64 = ours(xg), oracle(xg64)
    y.backward(dy), y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xg.grad.double(), xg64.grad, rtol=1e-4, atol=1e-4 / magnitude)
    torch.testing.assert_close(ours.weight.grad.double(), oracle.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad.double(), oracle.bias.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean.double(), oracle.running_mean, rtol=1e-5, atol=0)
    # the running variance is the float32 rounding of float64's (Inf beyond float32's range)
    torch.testing.assert_close(ours.running_var, oracle.running_var.float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_nonfinite_grad_at_a_stopped_relu_is_stopped(residual, training, channels_last):
    """Inf and NaN in grad_output where relu's input is <= 0: torch's threshold_backward
    passes an exact 0 there, so every gradient stays what it is without them (a product
    dy * 0 would be NaN and spread over the channel's sums)."""
    shape = (3, 4, 5, 3)
    x, dy = randn(*shape, channels_last=channels_last), randn(*shape, channels_last=channels_last)
    r = randn(*shape, channels_last=channels_last) if residual else None
    ours = bnfused.BatchNormAct2d(4, activation="relu", device=DEVICE).train(training)
    theirs = nn.BatchNorm2d(4, device=DEVICE).train(training)
    with torch.no_grad():
        z = theirs.eval()(x) if not training else F.batch_norm(x, None, None, training=True)
        theirs.train(training)
        if r is not None:
            z = z + r
    stopped = (z <= 0).nonzero()
    for k, value in enumerate((float("inf"), float("-inf"), float("nan"))):
        dy[tuple(stopped[k * 7])] = value
    got = _run(ours, x, r, dy)
    want = _torch_run(theirs, F.relu, x, r, dy)
    for name, a, b in zip(["y", "dx", "dweight", "dbias", "dresidual"], got, want):
        assert not b.isnan().any()
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=lambda m: f"{name}: {m}")


def test_momentum_none_keeps_torchs_inf_once_the_variance_overflows():
    """momentum=None updates (1 - f) * running + f * batch, as torch: a batch variance
    past float32's range gives running_var Inf, not lerp's Inf - Inf = NaN."""
    ours = bnfused.BatchNorm1d(3, momentum=None, device=DEVICE)
    theirs = nn.BatchNorm1d(3, momentum=None, device=DEVICE)
    for scale in (1.0, 1e20, 1e25):
        x = randn(8, 3) * scale
        ours(x), theirs(x)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
        torch.testing.assert_close(ours.running_var, theirs.running_var, equal_nan=True)
    assert torch.isinf(theirs.running_var).all() and torch.isinf(ours.running_var).all()
