"""Triton backend vs the float64 reference, with torch's own error as the yardstick.

Runs on a GPU when one is visible, else on CPU tensors in Triton's interpreter:

    TRITON_INTERPRET=1 BNFUSED_BACKEND=triton python -m pytest -q tests/test_triton.py

(TRITON_INTERPRET must be set before triton is first imported.) Every output
of the backend must be within ``2 * torch_error + atol`` of the float64
reference, where ``torch_error`` is torch's own error in the same dtype on the
same data and ``atol`` is a few units in the last place of the dtype.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "the Triton backend needs a GPU, or TRITON_INTERPRET=1 (set before triton is "
        "imported) to run on CPU tensors",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed")

import bnfused  # noqa: E402
from bnfused.op import reference  # noqa: E402
from bnfused.op import triton as triton_backend  # noqa: E402
from bnfused.op.contract import IDENTITY, LEAKY_RELU, RELU, SILU  # noqa: E402
from bnfused.op.triton import _launch  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRET else "cuda")
EPS, MOMENTUM, SLOPE = 1e-5, 0.1, 0.07
ACTIVATIONS = [IDENTITY, RELU, LEAKY_RELU, SILU]
ACT_IDS = ["identity", "relu", "leaky_relu", "silu"]


def _act(z, activation):
    if activation == RELU:
        return F.relu(z)
    if activation == LEAKY_RELU:
        return F.leaky_relu(z, SLOPE)
    if activation == SILU:
        return F.silu(z)
    return z


def _layout(t, channels_last):
    if not channels_last or t.dim() < 4:
        return t.contiguous()
    return t.contiguous(
        memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    )


def _data(shape, dtype, channels_last, affine=(True, True), residual=True, offset=0.0):
    """Fresh non-zero inputs: x, weight, bias, running stats (fp32 for half input), residual, dy."""
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    C = shape[1]
    x = _layout(torch.randn(shape, dtype=torch.float64) * 1.5 + offset + 0.3, channels_last)
    mk = dict(dtype=pdtype, device=DEVICE)
    return dict(
        x=x.to(dtype=dtype, device=DEVICE),
        w=(torch.rand(C, **mk) + 0.5) if affine[0] else None,
        b=torch.randn(C, **mk) if affine[1] else None,
        rm=torch.randn(C, **mk) + offset,
        rv=torch.rand(C, **mk) + 0.5,
        res=_layout(torch.randn(shape, dtype=dtype, device=DEVICE), channels_last)
        if residual
        else None,
        dy=_layout(torch.randn(shape, dtype=dtype, device=DEVICE), channels_last),
    )


def _f64(t):
    return None if t is None else t.detach().double()


def _err(got, want):
    if got.numel() == 0:
        return 0.0
    return (got.double() - want.double()).abs().max().item()


def _check(name, got, oracle, baseline, dtype, scale=None):
    """Backend error vs the float64 oracle <= 2x torch's error + a few ulps; never NaN.

    ``scale`` (default: the largest oracle value) sets the ulp floor; for
    per-channel sums it is the largest sum of absolute terms, the magnitude that
    bounds any fp32 accumulation (torch on CPU accumulates in double, so its own
    error there is only the final rounding).
    """
    assert not torch.isnan(got).any(), f"{name}: NaN"
    if scale is None:
        scale = oracle.abs().max().item() if oracle.numel() else 1.0
    atol = 4 * torch.finfo(dtype).eps * max(1.0, scale)
    err, base = _err(got, oracle), _err(baseline, oracle)
    assert err <= 2 * base + atol, f"{name}: error {err:.3g} > 2 * torch's {base:.3g} + {atol:.3g}"


def _torch_run(d, training, activation):
    """torch eager in the input dtype: outputs, grads, updated running stats, batch stats."""
    x = d["x"].clone().requires_grad_()
    w = d["w"].clone().requires_grad_() if d["w"] is not None else None
    b = d["b"].clone().requires_grad_() if d["b"] is not None else None
    res = d["res"].clone().requires_grad_() if d["res"] is not None else None
    rm, rv = d["rm"].clone(), d["rv"].clone()
    y = F.batch_norm(x, rm, rv, w, b, training, MOMENTUM, EPS)
    y = _act(y + res if res is not None else y, activation)
    y.backward(d["dy"])
    with torch.no_grad():
        _, mean, invstd = torch.ops.aten.native_batch_norm(
            d["x"], d["w"], d["b"], None, None, True, MOMENTUM, EPS
        )
    grads = [t.grad if t is not None else None for t in (x, w, b, res)]
    return y.detach(), grads, rm, rv, mean, invstd


def _oracle_run(d, training, activation):
    """The float64 reference: forward, pre-activation z, backward."""
    x, w, b, res = _f64(d["x"]), _f64(d["w"]), _f64(d["b"]), _f64(d["res"])
    rm, rv = _f64(d["rm"]), _f64(d["rv"])
    z = reference.forward(
        x, w, b, rm.clone(), rv.clone(), res, training, MOMENTUM, EPS, IDENTITY, SLOPE, upcast=True
    )[0]
    y, mean, invstd, mask, _ = reference.forward(
        x, w, b, rm, rv, res, training, MOMENTUM, EPS, activation, SLOPE, upcast=True
    )
    grads = reference.backward(
        _f64(d["dy"]),
        x,
        w,
        b,
        mean,
        invstd,
        mask,
        res,
        training,
        EPS,
        activation,
        SLOPE,
        [True, w is not None, b is not None, True],
        upcast=True,
    )
    # Largest per-channel sums of |g| and |g * xhat|: the scale of the dbias/dweight sums.
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    xhat = (x - mean.view(shape)) * invstd.view(shape)
    sums = {
        "db": grads[3].abs().sum(dims).max().item(),
        "dw": (grads[3] * xhat).abs().sum(dims).max().item(),
    }
    return y, z, mean, invstd, grads, rm, rv, sums


def _run_and_compare(d, training, activation):
    dtype = d["x"].dtype
    rm, rv = d["rm"].clone(), d["rv"].clone()
    y, mean, invstd, mask, _ = triton_backend.forward(
        d["x"], d["w"], d["b"], rm, rv, d["res"], training, MOMENTUM, EPS, activation, SLOPE
    )
    want = [True, d["w"] is not None, d["b"] is not None, d["res"] is not None]
    grads = triton_backend.backward(
        d["dy"],
        d["x"],
        d["w"],
        d["b"],
        mean,
        invstd,
        mask,
        d["res"],
        training,
        EPS,
        activation,
        SLOPE,
        want,
    )
    o_y, o_z, o_mean, o_invstd, o_grads, o_rm, o_rv, sums = _oracle_run(d, training, activation)
    t_y, t_grads, t_rm, t_rv, t_mean, t_invstd = _torch_run(d, training, activation)

    assert y.dtype == dtype and y.shape == d["x"].shape and y.stride() == d["x"].stride()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == acc and invstd.dtype == acc and mean.shape == (d["x"].shape[1],)
    _check("y", y, o_y, t_y, dtype)
    if training:
        _check("save_mean", mean, o_mean, t_mean, acc)
        _check("save_invstd", invstd, o_invstd, t_invstd, acc)
    else:
        assert torch.equal(mean, d["rm"].to(acc))
        _check("save_invstd", invstd, o_invstd, torch.rsqrt(d["rv"].to(acc) + EPS), acc)
    pdtype = d["rm"].dtype
    _check("running_mean", rm, o_rm, t_rm, pdtype)
    _check("running_var", rv, o_rv, t_rv, pdtype)
    if not training:
        assert torch.equal(rm, d["rm"]) and torch.equal(rv, d["rv"])
    _check_mask(mask, y, o_z, activation, d["res"] is not None)
    for name, got, o, t, flag in zip(("dx", "dw", "db", "dres"), grads, o_grads, t_grads, want):
        if not flag:
            assert got.numel() == 0, f"{name} was not asked for"
            continue
        like = d["x"] if name in ("dx", "dres") else (d["w"] if name == "dw" else d["b"])
        assert got.dtype == like.dtype and got.shape == like.shape and got.stride() == like.stride()
        _check(name, got, o, t, dtype, sums.get(name))


def _check_mask(mask, y, z, activation, has_residual):
    if activation not in (RELU, LEAKY_RELU) or not has_residual:
        assert mask.numel() == 0
        return
    numel = y.numel()
    assert mask.dtype == torch.uint8 and mask.numel() == reference.mask_bytes(numel)
    fmt = reference.memory_format(y)
    bits = reference.unpack_mask(mask, y)
    clear = z.abs() > 1e-2  # away from 0 the sign cannot depend on rounding
    assert torch.equal(bits[clear], (z > 0)[clear]), "mask bits disagree with the oracle's sign"
    if activation == RELU:
        assert torch.equal(bits, y > 0), "mask bits disagree with the output's sign"
    # Padding bits (past numel, up to whole 32-bit words) are zero.
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    flat = ((mask.view(-1, 1) >> shifts) & 1).reshape(-1)
    assert not flat[numel:].any()
    assert torch.equal(flat[:numel].bool(), reference._memory_order(bits, fmt))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_activations_fp32(activation, residual, training, channels_last):
    torch.manual_seed(1)
    d = _data((3, 5, 4, 6), torch.float32, channels_last, residual=residual)
    _run_and_compare(d, training, activation)


@pytest.mark.parametrize(
    "affine", [(False, False), (True, False), (False, True)], ids=["none", "weight", "bias"]
)
@pytest.mark.parametrize("activation", [RELU, SILU], ids=["relu", "silu"])
def test_without_affine(affine, activation):
    torch.manual_seed(2)
    for training in (True, False):
        d = _data((4, 3, 5, 3), torch.float32, True, affine=affine)
        _run_and_compare(d, training, activation)


@pytest.mark.parametrize(
    "shape,channels_last",
    [
        ((7, 3), False),
        ((2, 1), False),
        ((2, 1, 3, 1), False),
        ((3, 7, 5, 11), False),
        ((3, 7, 5, 11), True),
        ((2, 3, 3, 4, 5), False),
        ((2, 3, 3, 4, 5), True),
        ((5, 1, 7), False),
        ((2, 13, 1, 1), True),
    ],
)
def test_shapes(shape, channels_last):
    torch.manual_seed(3)
    for activation in (LEAKY_RELU, SILU):
        d = _data(shape, torch.float32, channels_last)
        _run_and_compare(d, True, activation)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_half(activation, channels_last, dtype):
    torch.manual_seed(4)
    for training in (True, False):
        d = _data((4, 6, 5, 7), dtype, channels_last)
        _run_and_compare(d, training, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_hard_data_large_mean(dtype, channels_last):
    """|mean| 1e4 times the spread: statistics must stay exact (no E[x^2] - E[x]^2)."""
    torch.manual_seed(5)
    d = _data((4, 3, 8, 9), dtype, channels_last, offset=1e4)
    _run_and_compare(d, True, RELU)


def test_fp64():
    torch.manual_seed(6)
    for channels_last in (False, True):
        d = _data((3, 4, 5, 6), torch.float64, channels_last)
        _run_and_compare(d, True, SILU)
        _run_and_compare(d, False, LEAKY_RELU)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_many_tiles_splits_and_programs(monkeypatch, channels_last):
    """Tiny tiles so every reduction loops over tiles, splits rows and merges partials."""
    monkeypatch.setattr(_launch, "tile_elements", lambda device: 16)
    monkeypatch.setattr(_launch, "programs_target", lambda device: 20)
    monkeypatch.setattr(_launch, "elementwise_bytes", lambda device: 2)
    geo = _launch.geometry(_layout(torch.empty(3, 5, 7, 9), channels_last))
    rl = _launch.reduce_launch(geo, DEVICE)
    assert rl.splits > 1 and rl.tiles_per_split > 1
    torch.manual_seed(7)
    for activation in (RELU, SILU):
        d = _data((3, 5, 7, 9), torch.float32, channels_last, offset=100.0)
        _run_and_compare(d, True, activation)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_huge_spread_splits_take_float64(monkeypatch, channels_last):
    """fp32 sums overflow past a spread of ~1e18: the splits where they do are taken again in
    float64 and merged in float64, in every channel of a block or only some of its splits."""
    monkeypatch.setattr(_launch, "tile_elements", lambda device: 16)
    monkeypatch.setattr(_launch, "programs_target", lambda device: 20)
    torch.manual_seed(9)
    x64 = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    x64[:, 1] *= 1e25  # every split overflows
    x64[0, 3] *= 1e30  # only the first sample's splits do
    x64[1, 4, 2, 2] = 3e38  # next to float32's largest value, and the other sign
    x64[2, 4, 0, 1] = -3e38
    x64[1, 0, 3, 3] = float("inf")  # an Inf channel keeps torch's +Inf mean and NaN variance
    x64[0, 0] *= 1e30
    x = _layout(x64.float(), channels_last)
    x64 = x.double()
    rm, rv = torch.zeros(5, device=DEVICE), torch.ones(5, device=DEVICE)
    y, mean, invstd, _, _ = triton_backend.forward(
        x.to(DEVICE), None, None, rm, rv, None, True, 0.5, EPS, IDENTITY, SLOPE
    )
    mean64 = x64.mean(dim=(0, 2, 3))
    var64 = x64.var(dim=(0, 2, 3), unbiased=False)
    var64[0] = float("nan")
    assert torch.isfinite(mean[1:]).all() and torch.isfinite(invstd[1:]).all()
    # the mean's error in units of the channel's std (+3e38 and -3e38 cancel in channel 4)
    assert mean[0].item() == float("inf")
    assert ((mean[1:].cpu().double() - mean64[1:]) / var64[1:].sqrt()).abs().max() < 1e-6
    torch.testing.assert_close(
        invstd.cpu().double(), (var64 + EPS).rsqrt(), rtol=1e-6, atol=0, equal_nan=True
    )
    torch.testing.assert_close(rm.cpu().double(), 0.5 * mean.cpu().double(), rtol=1e-6, atol=0)
    unbiased = var64 * (x64.numel() / 5) / (x64.numel() / 5 - 1)
    torch.testing.assert_close(
        rv.cpu(), (0.5 + 0.5 * unbiased).float(), rtol=1e-6, atol=0, equal_nan=True
    )
    want = (x64 - mean64[:, None, None]) * (var64 + EPS).rsqrt()[:, None, None]
    torch.testing.assert_close(y[:, 1:].cpu().double(), want[:, 1:], rtol=1e-5, atol=1e-5)
    assert y[:, 0].isnan().all()


def test_empty_batch():
    x = torch.randn(0, 3, 4, 4, device=DEVICE)
    rm, rv = torch.randn(3, device=DEVICE), torch.rand(3, device=DEVICE) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y, mean, invstd, mask, _ = triton_backend.forward(
        x, None, None, rm, rv, None, True, MOMENTUM, EPS, RELU, SLOPE
    )
    assert y.shape == x.shape and torch.equal(rm, rm0) and torch.equal(rv, rv0)
    exp = reference.forward(x, None, None, rm0, rv0, None, True, MOMENTUM, EPS, RELU, SLOPE)
    assert torch.equal(mean, exp[1]) and torch.allclose(invstd, exp[2])
    grads = triton_backend.backward(
        x,
        x,
        None,
        None,
        mean,
        invstd,
        mask,
        None,
        True,
        EPS,
        RELU,
        SLOPE,
        [True, True, True, False],
    )
    assert grads[0].shape == x.shape and torch.equal(grads[1], torch.zeros(3, device=DEVICE))


def test_public_api_runs_triton(monkeypatch):
    """bnfused.BatchNorm2d / BatchNormAct2d with the triton backend forced, vs torch."""
    calls = []
    for op in ("forward", "backward"):
        real = getattr(triton_backend, op)
        monkeypatch.setattr(
            triton_backend, op, lambda *a, _real=real, _op=op: calls.append(_op) or _real(*a)
        )
    torch.manual_seed(8)
    x = torch.randn(4, 6, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    ours = bnfused.BatchNorm2d(6).to(DEVICE)
    theirs = torch.nn.BatchNorm2d(6).to(DEVICE)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with bnfused.use_backend("triton"):
        ya = ours(xa)
        ya.square().sum().backward()
    yb = theirs(xb)
    yb.square().sum().backward()
    assert calls == ["forward", "backward"]
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)
    act = bnfused.BatchNormAct2d(6, activation="relu").to(DEVICE)
    with bnfused.use_backend("triton"):
        out = act(x, residual=x.flip(0))
    assert calls[-1] == "forward"
    expected = F.relu(
        F.batch_norm(x, None, None, act.weight, act.bias, training=True, eps=act.eps) + x.flip(0)
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_availability_reports_interpreter():
    ok, reason = triton_backend.availability()
    assert ok and "Triton" in reason
    assert bnfused.backends()["triton"]["available"]
