"""fp32 statistics of the CUDA kernels on shifted data (|mean| = 1e4 x std), run by
the emulator: as accurate as torch's CPU kernel and the other backends, with no
float64 pass (the statistics kernel accumulates around a per-channel pivot).
"""

import pytest
import torch
from conftest import assert_policy

from bnfused.op import cuda_emulated, reference

emu = cuda_emulated.extension()
pytestmark = pytest.mark.skipif(emu is None, reason="bnfused._C_emulated is not built")

SHAPES = [
    ((32, 16, 20, 20), False),
    ((32, 16, 20, 20), True),
    ((4, 8, 33, 31), False),
    ((20, 6, 4096), False),
    ((4096, 8), False),
    ((6, 24, 9, 9), True),
]


@pytest.fixture(params=[1, 132], ids=lambda s: f"{s}sm")
def sm_count(request):
    before = emu.configure(sm_count=request.param)
    yield request.param
    emu.configure(**before)


@pytest.mark.parametrize("shape,channels_last", SHAPES, ids=str)
def test_shifted_fp32_statistics_match_the_oracle(shape, channels_last, sm_count):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    C = shape[1]
    x = (
        (
            torch.randn(shape, dtype=torch.float64) * 0.7
            + torch.randn(C, dtype=torch.float64).view([1, C] + [1] * (len(shape) - 2)) * 1e4
        )
        .float()
        .contiguous(memory_format=fmt)
    )
    dy = torch.randn(shape).contiguous(memory_format=fmt)
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    y, mean, invstd, mask, _ = cuda_emulated.forward(
        x, w, b, None, None, None, True, 0.1, 1e-5, 0, 0.0
    )
    dx, dw, db, _ = cuda_emulated.backward(
        dy, x, w, b, mean, invstd, mask, None, True, 1e-5, 0, 0.0, [True, True, True, False]
    )
    y_or, mean_or, invstd_or, _, _ = reference.forward(
        x.double(), w.double(), b.double(), None, None, None, True, 0.1, 1e-5, 0, 0.0
    )
    dx_or, dw_or, db_or, _ = reference.backward(
        dy.double(),
        x.double(),
        w.double(),
        b.double(),
        mean_or,
        invstd_or,
        mask,
        None,
        True,
        1e-5,
        0,
        0.0,
        [True, True, True, False],
    )
    xt = x.detach().clone().requires_grad_()
    wt, bt = w.clone().requires_grad_(), b.clone().requires_grad_()
    _, mean_t, invstd_t = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    yt = torch.nn.functional.batch_norm(xt, None, None, wt, bt, True, 0.1, 1e-5)
    yt.backward(dy)
    rel = ((invstd.double() - invstd_or) / invstd_or).abs().max().item()
    assert rel < 1e-6, f"invstd relative error {rel:.2e}"
    assert_policy("invstd", invstd, invstd_t, invstd_or, torch.float64)  # floor 1e-10: no slack
    assert_policy("mean", mean, mean_t, mean_or, torch.float32)
    assert_policy("y", y, yt, y_or, torch.float32)
    assert_policy("dx", dx, xt.grad, dx_or, torch.float32)
    assert_policy("dweight", dw, wt.grad, dw_or, torch.float32)
    assert_policy("dbias", db, bt.grad, db_or, torch.float32)


@pytest.mark.parametrize(
    "shape,channels_last",
    [((1, 3, 2, 4, 4), False), ((3, 5, 7, 3), False), ((8, 16, 5, 5), True), ((999, 8), False)],
    ids=str,
)
def test_large_mean_y_keeps_the_precision_of_the_true_mean(shape, channels_last, sm_count):
    """|mean| = 1e5, std 10: half an ulp of the fp32 mean is 4e-4 std, which y must not show."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    C = shape[1]
    sign = torch.where(torch.rand(C) < 0.5, -1.0, 1.0).double()
    shift = (1e5 + torch.rand(C, dtype=torch.float64) * 1e3) * sign
    x = (
        (torch.randn(shape, dtype=torch.float64) * 10 + shift.view([1, C] + [1] * (len(shape) - 2)))
        .float()
        .contiguous(memory_format=fmt)
    )
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    y, mean, _, _, _ = cuda_emulated.forward(x, w, b, None, None, None, True, 0.1, 1e-5, 0, 0.0)
    y_or, mean_or, _, _, _ = reference.forward(
        x.double(), w.double(), b.double(), None, None, None, True, 0.1, 1e-5, 0, 0.0
    )
    yt = torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    assert (mean.double() - mean_or).abs().max().item() > 0, "the fp32 mean rounds: data too easy"
    err = (y.double() - y_or).abs().max().item()
    assert err < 2e-5, f"y error {err:.2e} against float64"
    assert_policy("y", y, yt, y_or, torch.float32)


@pytest.mark.parametrize(
    "shape,channels_last",
    [((32, 16, 20, 20), False), ((32, 16, 20, 20), True), ((4096, 8), False), ((5, 7, 3, 3), True)],
    ids=str,
)
def test_channels_past_fp32_sums_are_taken_in_double(shape, channels_last, sm_count):
    """Spreads of 1e19-1e37 next to ordinary channels: no overflow, float64's statistics."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    C = shape[1]
    view = [1, C] + [1] * (len(shape) - 2)
    magnitude = torch.tensor(
        [1e19, 1.0, 1e30, 3.0, 3e37, 1e-3, 1e25, 1.0] * 2, dtype=torch.float64
    )[:C]
    x = (
        (torch.randn(shape, dtype=torch.float64) * magnitude.view(view))
        .float()
        .contiguous(memory_format=fmt)
    )
    rm, rv = torch.randn(C), torch.rand(C) + 0.5
    rm_or, rv_or = rm.double(), rv.double()
    y, mean, invstd, _, _ = cuda_emulated.forward(
        x, None, None, rm, rv, None, True, 0.5, 1e-5, 0, 0.0
    )
    y_or, mean_or, invstd_or, _, _ = reference.forward(
        x.double(), None, None, rm_or, rv_or, None, True, 0.5, 1e-5, 0, 0.0
    )
    mean_err = ((mean.double() - mean_or).abs() / magnitude).max().item()
    assert mean_err < 1e-6, f"mean error {mean_err:.2e} standard deviations"
    torch.testing.assert_close(invstd.double(), invstd_or, rtol=1e-6, atol=0)
    torch.testing.assert_close(y.double(), y_or, rtol=1e-5, atol=1e-5)
    rm_err = ((rm.double() - rm_or).abs() / (magnitude + 1)).max().item()
    assert rm_err < 1e-6, f"running_mean error {rm_err:.2e} standard deviations"
    torch.testing.assert_close(rv, rv_or.float(), rtol=1e-6, atol=0)  # Inf past float32's range
