"""bnfused_C CPU kernels against a float64 oracle and torch eager in the same dtype.

Rule: error(bnfused vs oracle) <= 2 * error(torch vs oracle) + atol * scale,
with errors as max abs differences and scale = max(1, max |oracle|).
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import torch_activation

from bnfused.op.backend import compiled_extension

if compiled_extension() is None:  # loads bnfused._C with the settings passed to its kernels
    pytest.skip("compiled extension not built", allow_module_level=True)
OPS = torch.ops.bnfused_C

from bnfused.op.contract import IDENTITY, RELU, SILU, mask_bytes, uses_mask  # noqa: E402
from bnfused.op.contract import LEAKY_RELU as LEAKY  # noqa: E402

ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
EPS, MOMENTUM, SLOPE = 1e-5, 0.1, 0.1


def activate(z, act):
    return torch_activation(z, act, SLOPE)


def view_c(v, x):
    return v.view([1, -1] + [1] * (x.dim() - 2))


def oracle(x, w, b, rm, rv, r, training, act, dy):
    """float64 forward (y, mean, invstd, z, running stats) and autograd grads."""

    def leaf(t):
        return t.detach().double().clone().requires_grad_() if t is not None else None

    xd, wd, bd, rd = leaf(x), leaf(w), leaf(b), leaf(r)
    dims = [0] + list(range(2, x.dim()))
    n = x.numel() // x.shape[1]
    rm_new, rv_new = rm.double().clone(), rv.double().clone()
    if training:
        mean = xd.mean(dims)
        var = ((xd - view_c(mean, x)) ** 2).mean(dims)
        rm_new = (1 - MOMENTUM) * rm_new + MOMENTUM * mean.detach()
        rv_new = (1 - MOMENTUM) * rv_new + MOMENTUM * var.detach() * n / (n - 1)
    else:
        mean, var = rm.double(), rv.double()
    invstd = 1 / torch.sqrt(var + EPS)
    z = (xd - view_c(mean, x)) * view_c(invstd, x)
    if wd is not None:
        z = z * view_c(wd, x)
    if bd is not None:
        z = z + view_c(bd, x)
    if rd is not None:
        z = z + rd
    y = activate(z, act)
    y.backward(dy.double())
    grads = [t.grad if t is not None else None for t in (xd, wd, bd, rd)]
    return dict(
        y=y.detach(),
        mean=mean.detach(),
        invstd=invstd.detach(),
        z=z.detach(),
        rm=rm_new,
        rv=rv_new,
        dx=grads[0],
        dw=grads[1],
        db=grads[2],
        dr=grads[3],
    )


def torch_eager(x, w, b, rm, rv, r, training, act, dy):
    xt = x.clone().requires_grad_()
    wt = w.clone().requires_grad_() if w is not None else None
    bt = b.clone().requires_grad_() if b is not None else None
    rt = r.clone().requires_grad_() if r is not None else None
    rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(xt, rm, rv, wt, bt, training, MOMENTUM, EPS)
    if rt is not None:
        y = y + rt
    y = activate(y, act)
    y.backward(dy)
    grads = [t.grad if t is not None else None for t in (xt, wt, bt, rt)]
    return dict(y=y.detach(), rm=rm, rv=rv, dx=grads[0], dw=grads[1], db=grads[2], dr=grads[3])


def fused(x, w, b, rm, rv, r, training, act, dy):
    rm, rv = rm.clone(), rv.clone()
    y, mean, invstd, mask, _ = OPS.forward(x, w, b, rm, rv, r, training, MOMENTUM, EPS, act, SLOPE)
    need = [True, w is not None, b is not None, r is not None]
    dx, dw, db, dr = OPS.backward(
        dy, x, w, b, mean, invstd, mask, r, training, EPS, act, SLOPE, need
    )
    return dict(
        y=y,
        mean=mean,
        invstd=invstd,
        mask=mask,
        rm=rm,
        rv=rv,
        dx=dx,
        dw=dw if need[1] else None,
        db=db if need[2] else None,
        dr=dr if need[3] else None,
    )


def make_inputs(shape, dtype, channels_last, weight, residual, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]

    def rnd(*s, scale=1.0, shift=0.0):
        return torch.randn(*s, generator=g, dtype=torch.float64) * scale + shift

    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape))

    def layout(t):
        t = t.to(dtype)
        return t.contiguous(memory_format=fmt) if channels_last else t.contiguous()

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = layout(rnd(*shape, scale=1.0 + rnd(1).abs().item(), shift=offset + rnd(1).item()))
    w = (rnd(C) * 0.5 + 1).to(acc) if weight else None
    b = rnd(C).to(acc) if weight else None
    r = layout(rnd(*shape)) if residual else None
    rm, rv = rnd(C).to(acc) * 0.1, (rnd(C).abs() + 0.5).to(acc)
    dy = layout(rnd(*shape))
    return x, w, b, rm, rv, r, dy


def err(a, ref):
    return (a.double() - ref).abs().max().item()


def check_case(
    shape,
    dtype,
    channels_last=False,
    act=RELU,
    residual=True,
    weight=True,
    training=True,
    seed=0,
    offset=0.0,
):
    args = make_inputs(shape, dtype, channels_last, weight, residual, seed, offset)
    x, w, b, rm, rv, r, dy = args
    ref = oracle(x, w, b, rm, rv, r, training, act, dy)
    ours = fused(*args[:6], training, act, dy)
    try:
        theirs = torch_eager(*args[:6], training, act, dy)
    except RuntimeError:  # a dtype torch's CPU kernels lack: oracle-only check
        theirs = None
    atol = ATOL[dtype]
    assert ours["y"].dtype == dtype and ours["y"].shape == x.shape
    if channels_last:
        assert ours["y"].stride() == x.stride() and ours["dx"].stride() == x.stride()
    keys = ["y", "dx", "dw", "db", "dr"] + (["rm", "rv"] if training else [])
    for key in keys:
        if ref[key] is None:
            assert ours[key] is None
            continue
        scale = max(1.0, ref[key].abs().max().item())
        e_ours = err(ours[key], ref[key])
        e_torch = err(theirs[key], ref[key]) if theirs is not None else 0.0
        assert e_ours <= 2 * e_torch + atol * scale, (
            f"{key}: bnfused error {e_ours:.3g} vs torch {e_torch:.3g} (scale {scale:.3g}) "
            f"for {shape} {dtype} cl={channels_last} act={act} res={residual} w={weight} "
            f"train={training}"
        )
    assert ours["mask"].numel() == (mask_bytes(x.numel()) if uses_mask(act, residual) else 0)
    if ours["mask"].numel():
        check_mask(ours["mask"], ref["z"], x)
    return ours, ref


def check_mask(mask, z, x):
    """Bits in memory order equal z > 0 (away from z ~ 0), padding bits zero."""
    if x.dim() >= 4 and not x.is_contiguous():
        perm = [0] + list(range(2, x.dim())) + [1]
        z = z.permute(perm)
    z = z.reshape(-1)
    bits = ((mask.view(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(-1)
    numel = z.numel()
    assert not bits[numel:].any(), "padding bits must be zero"
    clear = z.abs() > 1e-3
    assert torch.equal(bits[:numel].bool()[clear], (z > 0)[clear])


SMALL_SHAPES = [
    (2, 3),
    (1, 4, 2),
    (5, 1, 7),
    (4, 2048),
    (3, 7, 11, 13),
    (2, 5, 3, 4, 5),
    (7, 3, 17),
    (2, 16, 1, 1),
    (13, 6, 5, 3),
    (64, 2),
    (1, 2, 9000),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
COMBOS = list(
    itertools.product([IDENTITY, RELU, LEAKY, SILU], [False, True], [True, False], [True, False])
)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
def test_small_shapes(shape, dtype):
    layouts = [False, True] if len(shape) >= 4 else [False]
    for i, cl in enumerate(layouts):
        for j in range(3):  # rotate through activation/residual/weight/training combos
            act, res, weight, training = COMBOS[(7 * hash(shape) % 97 + 5 * j + i) % len(COMBOS)]
            check_case(shape, dtype, cl, act, res, weight, training, seed=j + 10 * i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act,residual,weight,training", COMBOS)
def test_all_variants(act, residual, weight, training, dtype):
    for cl in (False, True):
        check_case((6, 10, 9, 7), dtype, cl, act, residual, weight, training, seed=act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_large(dtype, channels_last):
    check_case((16, 8, 96, 96), dtype, channels_last, RELU, True, True, True, seed=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape,channels_last",
    [((3, 16, 8, 8), True), ((3, 5, 8, 8), False), ((2, 3, 13, 1), False), ((4, 2, 5, 1), False)],
    ids=str,
)
def test_half_outputs_round_like_torch(shape, channels_last, dtype):
    """With mean 0, invstd 1 and weight 1, y = half(x + bias + residual) computed in float:
    every output element, NaN included, must equal torch's own rounding (vector paths,
    their ragged tails and the scalar loops alike)."""
    g = torch.Generator().manual_seed(14)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    r = (torch.randn(shape, generator=g) * 3).to(dtype)
    x[0, 0, 0, 0] = float("nan")
    if channels_last:
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    b = torch.randn(C, generator=g)
    w, rm, rv = torch.ones(C), torch.zeros(C), torch.ones(C)
    y = OPS.forward(x, w, b, rm, rv, r, False, MOMENTUM, 0.0, IDENTITY, 0.0)[0]
    expected = ((x.float() + view_c(b, x)) + r.float()).to(dtype)
    assert torch.equal(y.isnan(), expected.isnan())
    ok = ~expected.isnan()
    assert torch.equal(y.view(torch.int16)[ok], expected.view(torch.int16)[ok])
    dy = (torch.randn(shape, generator=g) * 3).to(dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    mean, invstd = torch.zeros(C), torch.ones(C)
    dx = OPS.backward(
        dy,
        x,
        w,
        b,
        mean,
        invstd,
        torch.empty(0, dtype=torch.uint8),
        None,
        False,
        0.0,
        IDENTITY,
        0.0,
        [True, False, False, False],
    )[0]
    assert torch.equal(dx.view(torch.int16), dy.view(torch.int16))  # eval: dx = dy * 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_rounding_of_subnormals_and_nan(channels_last):
    """y = x * w with subnormal bf16 x: the float products are subnormal and need
    rounding, which a flush-to-zero conversion (vcvtneps2bf16) would get wrong;
    such vectors must round bit for bit like torch, and NaN must stay NaN."""
    g = torch.Generator().manual_seed(5)
    shape = (4, 3, 8, 8)
    x = torch.randn(shape, generator=g)
    tiny = torch.randint(1, 128, shape, generator=g).float() * 2.0**-133  # bf16 subnormals
    pick = torch.rand(shape, generator=g)
    x = torch.where(pick < 0.3, tiny, x).to(torch.bfloat16)
    x[0, 1, 2, 3], x[1, 0, 0, 0] = float("nan"), -float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    C = shape[1]
    w = torch.tensor([1 + 2.0**-9, 1 - 2.0**-10, 1.0 + 3 * 2.0**-9])
    zeros, ones = torch.zeros(C), torch.ones(C)
    y = OPS.forward(x, w, zeros, zeros, ones, None, False, MOMENTUM, 0.0, IDENTITY, 0.0)[0]
    expected = (x.float() * view_c(w, x)).to(torch.bfloat16)
    assert torch.equal(y.isnan(), expected.isnan())
    ok = ~expected.isnan()
    assert (expected[ok].float().abs() < 1.2e-38).sum() > 50  # subnormal outputs present
    assert torch.equal(y.view(torch.int16)[ok], expected.view(torch.int16)[ok])


@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_past_the_cache(channels_last):
    """42 MB outputs: every pass outgrows the last-level cache, so y, dx and dresidual
    are written with streaming stores into memory advised to huge pages."""
    check_case((2, 16, 640, 512), torch.float32, channels_last, RELU, True, True, True, seed=13)


@pytest.mark.parametrize("shape", [(1, 1, 1100000), (4000, 3)], ids=str)
def test_large_few_channels(shape):
    check_case(shape, torch.float32, act=IDENTITY, residual=False, seed=4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape,channels_last",
    [((8, 4, 30, 30), False), ((8, 4, 30, 30), True), ((20000, 3), False), ((1, 2, 300000), False)],
    ids=str,
)
def test_mean_far_from_zero(shape, channels_last, dtype):
    ours, ref = check_case(shape, dtype, channels_last, RELU, False, True, True, seed=5, offset=1e4)
    if dtype != torch.bfloat16:  # bf16 cannot even hold 1e4 + randn
        tol = 1e-9 if dtype == torch.float64 else 1e-3
        assert err(ours["invstd"], ref["invstd"]) <= tol * ref["invstd"].abs().max().item()


def _hard_channels(kind, n, C):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, C, generator=g, dtype=torch.float64)
    if kind == "sorted":  # the mean drifts along the reduction
        x = torch.sort(x, dim=0).values * 3 + 100
    elif kind == "outlier_first":  # the first element, a natural shift, is far from the mean
        x[0] = 1e3
    elif kind == "step":
        x[: n // 2] += 50
    elif kind == "offset":
        x = x * 1e-2 + 1e3
    return x


@pytest.mark.parametrize("kind", ["sorted", "outlier_first", "step", "offset"])
@pytest.mark.parametrize("layout", ["rows", "channels_last", "planes"])
def test_statistics_of_hard_data(kind, layout):
    """float32 mean and variance stay within a few ulps of float64 on data that defeats
    one-pass sums: a drifting mean, an outlier where a shift would be taken, a step."""
    x64 = _hard_channels(kind, 12544, 32)
    if layout == "rows":
        x = x64.float()
    else:  # the same channels as (64, 32, 14, 14) in either memory order
        x = x64.reshape(64, 196, 32).permute(0, 2, 1).reshape(64, 32, 14, 14).float()
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    _, mean, invstd, _, _ = OPS.forward(
        x, None, None, None, None, None, True, MOMENTUM, 0.0, IDENTITY, 0.0
    )
    xd = x64.float().double()  # what the kernel saw, exactly
    m, v = xd.mean(0), xd.var(0, unbiased=False)
    mean_ulp = torch.finfo(torch.float32).eps * m.abs()
    assert ((mean.double() - m).abs() <= mean_ulp + 1e-6 * v.sqrt()).all()
    assert ((invstd.double() * v.sqrt() - 1).abs() <= 2e-6).all()


@pytest.mark.parametrize("mean_in_stds", [0.5, 3.0, 100.0])
def test_normalize_accuracy_many_channels(mean_in_stds):
    """C = 2048 channels_last normalizes with one FMA when every |mean| <= 4 std and
    centered otherwise: y stays within 4 ulps of the largest |y| either way (torch's own error is about 12)."""
    g = torch.Generator().manual_seed(12)
    C = 2048
    x = torch.randn(16, C, 3, 3, generator=g) * 2 + 2 * mean_in_stds
    x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    y = OPS.forward(x, w, b, None, None, None, True, MOMENTUM, EPS, IDENTITY, 0.0)[0]
    xd = x.double()
    m, v = xd.mean((0, 2, 3), keepdim=True), xd.var((0, 2, 3), unbiased=False, keepdim=True)
    yd = (xd - m) / (v + EPS).sqrt() * view_c(w.double(), x) + view_c(b.double(), x)
    err = (y.double() - yd).abs().max().item()
    assert err <= 4 * torch.finfo(torch.float32).eps * yd.abs().max().item()


def test_eval_uses_running_stats():
    x, w, b, rm, rv, r, dy = make_inputs((4, 6, 5, 5), torch.float32, False, True, False, 6)
    y, mean, invstd, mask, _ = OPS.forward(x, w, b, rm, rv, None, False, MOMENTUM, EPS, 0, 0.0)
    assert torch.equal(mean, rm)
    torch.testing.assert_close(invstd, 1 / torch.sqrt(rv + EPS))


def test_partial_outputs():
    x, w, b, rm, rv, r, dy = make_inputs((4, 6, 5, 5), torch.float32, True, True, True, 7)
    ref = fused(x, w, b, rm, rv, r, True, SILU, dy)
    y, mean, invstd, mask, _ = OPS.forward(x, w, b, rm, rv, r, True, MOMENTUM, EPS, SILU, SLOPE)
    for need in (
        [True, False, False, False],
        [False, True, True, False],
        [False, False, False, True],
        [False, True, False, False],
    ):
        outs = OPS.backward(dy, x, w, b, mean, invstd, mask, r, True, EPS, SILU, SLOPE, need)
        for wanted, got, key in zip(need, outs, ["dx", "dw", "db", "dr"]):
            if wanted:
                assert torch.equal(got, ref[key]), key


def test_deterministic_and_thread_independent():
    args = make_inputs((8, 3, 70, 70), torch.float32, False, True, True, 8)
    x, w, b, rm, rv, r, dy = args
    first = fused(*args[:6], True, RELU, dy)
    again = fused(*args[:6], True, RELU, dy)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fused(*args[:6], True, RELU, dy)
    finally:
        torch.set_num_threads(threads)
    for key, value in first.items():
        if value is not None:
            assert torch.equal(value, again[key]), key
            assert torch.equal(value, single[key]), key


@pytest.mark.parametrize("channels_last", [False, True])
def test_nan_propagates_within_channel(channels_last):
    x, w, b, rm, rv, r, dy = make_inputs((4, 3, 6, 6), torch.float32, channels_last, True, False, 9)
    x = x.clone()
    x[1, 1, 2, 3] = float("nan")
    out = fused(x, w, b, rm, rv, None, True, IDENTITY, dy)
    assert out["y"][:, 1].isnan().all() and out["dx"][:, 1].isnan().all()
    assert out["mean"][1].isnan() and out["rm"][1].isnan()
    for c in (0, 2):
        assert out["y"][:, c].isfinite().all() and out["dx"][:, c].isfinite().all()


@pytest.mark.parametrize(
    "cap,allowed",
    [
        ("baseline", {"baseline"}),
        ("avx2", {"avx2", "baseline"}),
        ("avx512", {"avx512", "avx2", "baseline"}),
        (None, {"avx512_bf16", "avx512", "avx2", "baseline"}),
    ],
)
def test_instruction_set_cap(cap, allowed):
    """BNFUSED_CPU_ISA caps the kernel table; the choice is reported by the backend."""
    env = {k: v for k, v in os.environ.items() if k != "BNFUSED_CPU_ISA"}
    if cap is not None:
        env["BNFUSED_CPU_ISA"] = cap
    code = (
        "import bnfused; reason = bnfused.backends()['cpu']['reason'];"
        "from bnfused.op.backend import compiled_extension;"
        "print(compiled_extension().cpu_kernel_isa(), reason)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] in allowed and out[0] in " ".join(out[1:])
