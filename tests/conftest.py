"""Shared test setup: which device and backend the suite exercises, and the accuracy policy.

The suite runs against whatever backend bnfused chooses, or the one forced by
``BNFUSED_BACKEND``. ``BNFUSED_TEST_DEVICE`` picks the device (default: cuda when
available, else cpu). Triton on CPU runs under its interpreter, which is slow:
there the suite keeps to small shapes.
"""

import os
import zlib

import pytest
import torch
import torch.nn.functional as F

import bnfused

DEVICE = torch.device(
    os.environ.get("BNFUSED_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
)
BACKEND = os.environ.get("BNFUSED_BACKEND") or bnfused.op.backend.choose(DEVICE)
INTERPRETED = BACKEND == "triton" and DEVICE.type == "cpu"

# Absolute floor of the policy (torch.testing-like), relative to the magnitude of the oracle.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh random data per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_report_header(config):
    return f"bnfused backend={BACKEND} device={DEVICE} backends={bnfused.backends()}"


def pytest_collection_modifyitems(config, items):
    if not INTERPRETED:
        return
    skip = pytest.mark.skip(reason="large shape: too slow under the Triton interpreter")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def policy_error(ours, theirs, oracle, dtype):
    """(our error, allowed error) against the float64 oracle: 2x torch's error + atol."""
    ours, theirs, oracle = (t.detach().to(torch.float64) for t in (ours, theirs, oracle))
    scale = max(1.0, oracle.abs().max().item()) if oracle.numel() else 1.0
    if oracle.numel() == 0:
        return 0.0, 0.0
    err = (ours - oracle).abs().max().item()
    torch_err = (theirs - oracle).abs().max().item()
    return err, 2 * torch_err + ATOL[dtype] * scale


def assert_policy(name, ours, theirs, oracle, dtype):
    """ours must match the oracle as well as torch does (see DESIGN: correctness policy)."""
    assert ours.shape == oracle.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(oracle.shape)}"
    assert not torch.isnan(ours).any() or torch.isnan(oracle).any(), f"{name}: NaN in output"
    err, allowed = policy_error(ours, theirs, oracle, dtype)
    assert err <= allowed, f"{name}: error {err:.3g} > allowed {allowed:.3g} (dtype {dtype})"


def randn(*shape, dtype=torch.float32, channels_last=False, scale=1.0, shift=0.0):
    """Fresh non-zero random data on the test device."""
    x = torch.randn(*shape, dtype=torch.float64, device=DEVICE) * scale + shift
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        )
    return x


def torch_activation(z, act, slope):
    """act(z) with torch's own ops, for the activation codes 0 identity, 1 relu,
    2 leaky_relu (negative slope ``slope``), 3 silu: an oracle independent of bnfused."""
    if act == 1:
        return F.relu(z)
    if act == 2:
        return F.leaky_relu(z, slope)
    if act == 3:
        return F.silu(z)
    return z
