"""The running-stat rule on every backend: batch mean and unbiased variance (from M2),
never rebuilt from invstd, with momentum=None applied on the device.

Three channels: a constant one (its running variance must reach exactly 0,
never a negative or eps-sized residue), one with variance 1e-9 (exact to float32
rounding), and an ordinary one; compared with the same update done in float64
on the same float32 data.
"""

import pytest
import torch
from conftest import DEVICE

import bnfused


def _batch(step, channels_last):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.empty(4, 3, 5, 6, dtype=torch.float64)
    x[:, 0] = 0.7 + step  # constant channel
    x[:, 1] = torch.randn(4, 5, 6, generator=g, dtype=torch.float64) * 3.1623e-5  # var ~1e-9
    x[:, 2] = torch.randn(4, 5, 6, generator=g, dtype=torch.float64) * 2 + 0.5
    x = x.to(torch.float32).to(DEVICE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
@pytest.mark.parametrize("momentum", [None, 0.1, 1.0])
@pytest.mark.parametrize("cls", ["BatchNorm2d", "BatchNormAct2d"])
def test_constant_and_tiny_variance_channels(cls, momentum, eps, channels_last):
    kwargs = {"activation": "relu"} if cls == "BatchNormAct2d" else {}
    bn = getattr(bnfused, cls)(3, eps=eps, momentum=momentum, device=DEVICE, **kwargs)
    mean64 = torch.zeros(3, dtype=torch.float64)
    var64 = torch.ones(3, dtype=torch.float64)
    for step in range(3):
        x = _batch(step, channels_last)
        bn(x)
        xd = x.detach().to("cpu", torch.float64).transpose(0, 1).reshape(3, -1)
        factor = 1.0 / (step + 1) if momentum is None else momentum
        mean64 = mean64 + factor * (xd.mean(1) - mean64)
        var64 = var64 + factor * (xd.var(1, unbiased=True) - var64)
        rv, rm = bn.running_var.to("cpu", torch.float64), bn.running_mean.to("cpu", torch.float64)
        assert (rv >= 0).all(), f"step {step}: negative running_var {rv.tolist()}"
        if momentum is None or momentum == 1.0:
            assert rv[0].item() == 0.0, f"step {step}: constant channel running_var {rv[0]!r}"
        # float32 rounding of an update done in float64: a few ulp, far below the
        # 1e-3 relative error of a variance rebuilt from invstd.
        torch.testing.assert_close(rv, var64, rtol=2e-6, atol=0)
        # A mean near 0 is exact to float32 rounding of the channel's values.
        scale = xd.abs().amax(1)
        assert ((rm - mean64).abs() <= 2e-6 * mean64.abs() + 1e-7 * scale).all(), (
            f"step {step}: running_mean {rm.tolist()} vs {mean64.tolist()}"
        )


def test_cumulative_average_empty_batch_leaves_stats():
    bn = bnfused.BatchNorm2d(3, momentum=None, device=DEVICE)
    bn(_batch(0, False))
    before = (bn.running_mean.clone(), bn.running_var.clone())
    bn(torch.empty(0, 3, 5, 6, device=DEVICE))
    torch.testing.assert_close(bn.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, before[1], rtol=0, atol=0)
