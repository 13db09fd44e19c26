"""Tensors past 2^31 elements: 64-bit indexing in the CPU kernels, checked in float64.

One bf16 tensor of 2^31 + 40 elements (4.3 GB) goes through a training forward
(statistics, running statistics, y) and a backward (dx, dweight, dbias); the
statistics and gradient sums are recomputed in float64 chunk by chunk, and y
and dx are checked where a 32-bit index would wrap (around 2^31 and at the very
end). It needs about 13 GB beyond what is in use and is skipped, with the
reason, on a machine that does not have it.
"""

import pytest
import torch
from conftest import BACKEND, DEVICE

import bnfused  # noqa: F401  (registers the ops)
from bnfused.modules.functional import batch_norm_with_stats

N, C, L = 2, 4, (1 << 28) + 5  # N * C * L = 2^31 + 40
NEEDED_GIB = 19.5  # x, y and dx (13 GB) plus headroom for the float64 checks
CHUNK = 1 << 24


def _available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / (1 << 20)
    except (OSError, KeyError, ValueError):
        return 0.0


pytestmark = [
    pytest.mark.skipif(
        DEVICE.type != "cpu" or BACKEND != "cpu",
        reason="the >2^31-element check runs the compiled CPU kernels",
    ),
    pytest.mark.skipif(
        _available_gib() < NEEDED_GIB,
        reason=f"needs {NEEDED_GIB} GiB of available memory, {_available_gib():.1f} GiB available",
    ),
]


def _channel_chunks(t: torch.Tensor, c: int):
    """float64 chunks of channel c of an (N, C, L) tensor."""
    for n in range(t.shape[0]):
        for j in range(0, t.shape[2], CHUNK):
            yield t[n, c, j : j + CHUNK].double()


def _positions():
    """(n, c, l) near flat index 2^31 (where int32 wraps), at both ends, and a few random."""
    flat = [0, 1, (1 << 31) - 2, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, N * C * L - 1]
    flat += torch.randint(0, N * C * L, (16,)).tolist()
    return [(f // (C * L), (f // L) % C, f % L) for f in flat]


def test_forward_and_backward_past_2_31_elements():
    assert N * C * L > 1 << 31
    x = torch.empty(N, C, L, dtype=torch.bfloat16)
    for n in range(N):  # fills in slices: randn of the whole tensor would need a float32 copy
        for c in range(C):
            x[n, c].normal_(mean=float(c) - 1.5, std=1.0 + c)
    weight = torch.randn(C, dtype=torch.float32).abs_() + 0.5
    bias = torch.randn(C, dtype=torch.float32)
    running_mean, running_var = torch.zeros(C), torch.ones(C)
    x.requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)

    y, mean, invstd = batch_norm_with_stats(
        x, running_mean, running_var, w, b, training=True, momentum=0.5, eps=1e-5
    )
    count = N * L
    xd = x.detach()
    for c in range(C):
        shift = float(c) - 1.5  # the mean drawn: shifted sums stay exact in float64
        s = s2 = 0.0
        for chunk in _channel_chunks(xd, c):
            d = chunk - shift
            s += d.sum().item()
            s2 += (d * d).sum().item()
        m = shift + s / count
        m2 = s2 - s * s / count
        var = m2 / count
        torch.testing.assert_close(mean[c].item(), m, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(invstd[c].item(), (var + 1e-5) ** -0.5, rtol=1e-5, atol=0)
        torch.testing.assert_close(running_mean[c].item(), 0.5 * m, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            running_var[c].item(), 0.5 + 0.5 * m2 / (count - 1), rtol=1e-5, atol=0
        )
    mean64, invstd64 = mean.double(), invstd.double()
    for n, c, l in _positions():
        want = (xd[n, c, l].double() - mean64[c]) * invstd64[c] * weight[c].double() + bias[c]
        torch.testing.assert_close(y[n, c, l].double(), want, rtol=1e-2, atol=1e-2)

    dy = y.detach()  # the gradient: any bf16 tensor serves, this one costs no memory
    y.backward(dy)
    dx = x.grad
    sum_dy = torch.zeros(C, dtype=torch.float64)
    sum_dy_xhat = torch.zeros(C, dtype=torch.float64)
    for c in range(C):
        for dchunk, xchunk in zip(_channel_chunks(dy, c), _channel_chunks(xd, c)):
            sum_dy[c] += dchunk.sum()
            sum_dy_xhat[c] += (dchunk * (xchunk - mean64[c]) * invstd64[c]).sum()
    torch.testing.assert_close(b.grad.double(), sum_dy, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(w.grad.double(), sum_dy_xhat, rtol=1e-4, atol=1e-2)
    for n, c, l in _positions():
        xhat = (xd[n, c, l].double() - mean64[c]) * invstd64[c]
        want = (
            weight[c].double()
            * invstd64[c]
            * (dy[n, c, l].double() - sum_dy[c] / count - xhat * sum_dy_xhat[c] / count)
        )
        torch.testing.assert_close(dx[n, c, l].double(), want, rtol=2e-2, atol=2e-2)
