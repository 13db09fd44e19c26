"""Parity with torch.nn.BatchNorm*d: outputs, grads and running stats over several steps.

Each value is judged against the float64 oracle (the reference in float64) by
the policy: bnfused's error at most twice torch's error in the same dtype.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_policy, randn
from torch import nn

import bnfused

# (input shape, module kind); every class the design names.
SHAPES = [
    ((2, 1), 1),
    ((4, 3), 1),
    ((3, 5, 7), 1),
    ((2, 2048), 1),
    ((1, 2, 2), 1),
    ((2, 3, 1, 1), 2),
    ((4, 8, 5, 5), 2),
    ((3, 17, 7, 3), 2),
    ((1, 3, 2, 1), 2),
    ((8, 2048, 1, 1), 2),
    ((2, 4, 3, 3, 3), 3),
    ((5, 7, 2, 3, 1), 3),
]
LARGE_SHAPES = [
    ((4, 64, 56, 56), 2),
    ((2, 6, 65536), 1),
    ((32, 512, 7, 7), 2),
    ((1024, 1024), 1),
    ((16, 3, 256, 256), 2),
]  # the last: 2^20 values per channel
DTYPES = [torch.float32, torch.float64, torch.bfloat16] + (
    [torch.float16] if DEVICE.type == "cuda" else []
)

TORCH_CLASSES = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
OURS = {1: bnfused.BatchNorm1d, 2: bnfused.BatchNorm2d, 3: bnfused.BatchNorm3d}


def make_pair(kind, C, dtype, **kwargs):
    """A torch module and a bnfused one with identical random state (fp32 params for bf16)."""
    param_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    ref = TORCH_CLASSES[kind](C, device=DEVICE, dtype=param_dtype, **kwargs)
    with torch.no_grad():
        if ref.affine:
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        if ref.track_running_stats:
            ref.running_mean.uniform_(-0.2, 0.2)
            ref.running_var.uniform_(0.5, 1.5)
    ours = OURS[kind](C, device=DEVICE, dtype=param_dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    oracle = OURS[kind](C, device=DEVICE, dtype=torch.float64, **kwargs)
    oracle.load_state_dict(ref.state_dict())
    return ref, ours, oracle


def run_step(module, x, dy, oracle=False):
    x = x.detach().clone().requires_grad_(True)
    if oracle:
        with bnfused.use_backend("reference"):
            y = module(x)
            y.backward(dy)
    else:
        y = module(x)
        y.backward(dy)
    grads = [x.grad] + ([module.weight.grad, module.bias.grad] if module.affine else [])
    return y, grads


def check_steps(kind, shape, dtype, channels_last, steps=3, train=True, **kwargs):
    C = shape[1]
    ref, ours, oracle = make_pair(kind, C, dtype, **kwargs)
    for m in (ref, ours, oracle):
        m.train(train)
    for step in range(steps):
        x = randn(*shape, dtype=dtype, channels_last=channels_last, shift=0.3)
        dy = randn(*shape, dtype=dtype, channels_last=channels_last)
        for m in (ref, ours, oracle):
            m.zero_grad(set_to_none=True)
        y_ref, g_ref = run_step(ref, x, dy)
        y, g = run_step(ours, x, dy)
        y_or, g_or = run_step(oracle, x.double(), dy.double(), oracle=True)
        assert y.dtype == dtype
        if channels_last and len(shape) > 3:
            fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
            assert y.is_contiguous(memory_format=fmt), "output must keep channels_last"
            assert g[0].is_contiguous(memory_format=fmt), "grad must keep channels_last"
        assert_policy(f"y step {step}", y, y_ref, y_or, dtype)
        for name, a, b, c in zip(("dx", "dweight", "dbias"), g, g_ref, g_or):
            assert_policy(f"{name} step {step}", a, b, c, dtype)
        if ours.track_running_stats:
            assert_policy(
                "running_mean", ours.running_mean, ref.running_mean, oracle.running_mean, dtype
            )
            assert_policy(
                "running_var", ours.running_var, ref.running_var, oracle.running_var, dtype
            )
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kind", SHAPES, ids=str)
def test_train_parity(shape, kind, dtype):
    check_steps(kind, shape, dtype, channels_last=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kind", [s for s in SHAPES if s[1] > 1], ids=str)
def test_channels_last_parity(shape, kind, dtype):
    check_steps(kind, shape, dtype, channels_last=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,kind", SHAPES[:6] + SHAPES[8:10], ids=str)
def test_eval_parity(shape, kind, dtype):
    check_steps(kind, shape, dtype, channels_last=False, steps=1, train=False)


@pytest.mark.parametrize(
    "options",
    [
        dict(momentum=None),
        dict(affine=False),
        dict(track_running_stats=False),
        dict(affine=False, track_running_stats=False),
        dict(momentum=0.5, eps=1e-3),
    ],
    ids=str,
)
@pytest.mark.parametrize("train", [True, False])
def test_options(options, train):
    check_steps(
        2, (4, 6, 3, 5), torch.float32, channels_last=False, steps=3, train=train, **options
    )


@pytest.mark.large
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,kind", LARGE_SHAPES, ids=str)
def test_large_parity(shape, kind, dtype):
    check_steps(kind, shape, dtype, channels_last=len(shape) == 4, steps=1)


def test_non_contiguous_input():
    ref, ours, oracle = make_pair(2, 5, torch.float32)
    base = randn(4, 9, 6, 5, shift=1.0)
    x = base[:, 2:7, ::2, :].transpose(2, 3)  # neither contiguous nor channels_last
    dy = randn(*x.shape)
    y_ref, g_ref = run_step(ref, x, dy)
    y, g = run_step(ours, x, dy)
    y_or, g_or = run_step(oracle, x.double(), dy.double(), oracle=True)
    assert_policy("y", y, y_ref, y_or, torch.float32)
    assert_policy("dx", g[0], g_ref[0], g_or[0], torch.float32)


def test_empty_batch():
    for kind, shape in ((2, (0, 3, 4, 4)), (1, (4, 3, 0)), (1, (0, 3))):
        ref, ours, _ = make_pair(kind, 3, torch.float32)
        x = torch.empty(shape, device=DEVICE, requires_grad=True)
        y = ours(x)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(ours.weight.grad, torch.zeros_like(ours.weight))
        ref(torch.empty(shape, device=DEVICE))
        assert torch.equal(ours.running_mean, ref.running_mean)
        assert torch.equal(ours.running_var, ref.running_var)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()


def test_hard_data_matches_oracle():
    """|mean| = 1e4 x std: a naive E[x^2]-E[x]^2 variance would lose every digit."""
    for dtype in (torch.float32, torch.float64):
        ref, ours, oracle = make_pair(2, 4, dtype)
        x = randn(8, 4, 6, 6, dtype=dtype, scale=1.0, shift=1e4)
        dy = randn(8, 4, 6, 6, dtype=dtype)
        y_ref, g_ref = run_step(ref, x, dy)
        y, g = run_step(ours, x, dy)
        y_or, g_or = run_step(oracle, x.double(), dy.double(), oracle=True)
        assert_policy("y", y, y_ref, y_or, dtype)
        assert_policy("dx", g[0], g_ref[0], g_or[0], dtype)
        assert_policy("running_var", ours.running_var, ref.running_var, oracle.running_var, dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "activation,residual",
    [("identity", False), ("silu", True), ("relu", False), ("leaky_relu", True)],
)
@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_far_mean_backward_uses_the_forward_mean(offset, activation, residual, channels_last):
    """fp32 data whose mean is 1e4-1e5 std away: save_mean alone is off by up to half an
    ulp of the mean (4e-3 std at 1e5), which the backward would see in x - mean, in the
    recomputed pre-activation and in every gradient. With the forward's save_mean_lo the
    gradients match a float64 computation on the same fp32 data to float32 rounding."""
    C = 3
    m = bnfused.BatchNormAct2d(C, activation=activation, negative_slope=0.1, device=DEVICE)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    shift = offset * (1 + torch.arange(C, dtype=torch.float64, device=DEVICE)).view(1, C, 1, 1) / 3
    x = (torch.randn(6, C, 5, 5, dtype=torch.float64, device=DEVICE) + shift).float()
    r = randn(6, C, 5, 5) if residual else None
    dy = randn(6, C, 5, 5)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
        r = r.contiguous(memory_format=torch.channels_last) if residual else None
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, r) if t is not None]
    m(*leaves).backward(dy)
    got = [t.grad for t in leaves] + [m.weight.grad, m.bias.grad]

    # The float64 oracle on the same fp32 values, written with torch ops only.
    x64 = x.double().requires_grad_(True)
    r64 = r.double().requires_grad_(True) if residual else None
    w64 = m.weight.detach().double().requires_grad_(True)
    b64 = m.bias.detach().double().requires_grad_(True)
    z = F.batch_norm(x64, None, None, w64, b64, training=True, eps=m.eps)
    z = z + r64 if residual else z
    act = {
        "identity": lambda t: t,
        "silu": F.silu,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, 0.1),
    }[activation]
    act(z).backward(dy.double())
    want = [x64.grad] + ([r64.grad] if residual else []) + [w64.grad, b64.grad]
    for name, ours, oracle in zip(
        ["dx"] + (["dresidual"] if residual else []) + ["dweight", "dbias"], got, want
    ):
        err = (ours.double() - oracle).abs().max().item()
        scale = oracle.abs().max().item()
        # float32 rounding of sums over 150 values, far below the 4e-3 of a rounded mean
        assert err <= 2e-5 * scale + 1e-6, f"{name}: error {err:.3g}, largest value {scale:.3g}"
    if residual:  # only the residual wants a gradient: the backward is one elementwise pass
        m.requires_grad_(False)
        r_only = r.detach().clone().requires_grad_(True)
        m(x, r_only).backward(dy)
        err = (r_only.grad.double() - r64.grad).abs().max().item()
        assert err <= 2e-5 * r64.grad.abs().max().item() + 1e-6, f"dresidual alone: {err:.3g}"


def test_nan_propagates_like_torch():
    ref, ours, _ = make_pair(2, 3, torch.float32)
    x = randn(2, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    y, y_ref = ours(x), ref(x)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.equal(torch.isnan(ours.running_mean), torch.isnan(ref.running_mean))


def test_state_dict_both_ways():
    ref = nn.BatchNorm2d(7, device=DEVICE)
    ours = bnfused.BatchNorm2d(7, device=DEVICE)
    ref(randn(4, 7, 3, 3))
    assert isinstance(ours, nn.BatchNorm2d)
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ours.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(7, device=DEVICE)
    back.load_state_dict(ours.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_fused_activation_matches_separate_ops():
    for act, fn in (
        ("relu", F.relu),
        ("silu", F.silu),
        ("leaky_relu", lambda t: F.leaky_relu(t, 0.2)),
    ):
        for with_residual in (False, True):
            ref = nn.BatchNorm2d(6, device=DEVICE)
            ours = bnfused.BatchNormAct2d(6, device=DEVICE, activation=act, negative_slope=0.2)
            ours.load_state_dict(ref.state_dict())
            x = randn(3, 6, 5, 5, shift=0.2).requires_grad_(True)
            r = randn(3, 6, 5, 5).requires_grad_(True) if with_residual else None
            dy = randn(3, 6, 5, 5)
            y_ref = fn(ref(x) + r if r is not None else ref(x))
            grads_ref = torch.autograd.grad(
                y_ref, [x, ref.weight, ref.bias] + ([r] if r is not None else []), dy
            )
            y = ours(x, r)
            grads = torch.autograd.grad(
                y, [x, ours.weight, ours.bias] + ([r] if r is not None else []), dy
            )
            torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
            for a, b in zip(grads, grads_ref):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours.running_var, ref.running_var)


@pytest.mark.parametrize(
    "act,fn", [("relu", F.relu), ("leaky_relu", F.leaky_relu), ("silu", F.silu)]
)
@pytest.mark.parametrize("with_residual", [False, True])
def test_nan_propagates_through_fused_activation(act, fn, with_residual):
    """relu(NaN) is NaN in torch; a max(z, 0) kernel would silently return 0."""
    ref = nn.BatchNorm2d(3, device=DEVICE)
    ours = bnfused.BatchNormAct2d(3, device=DEVICE, activation=act)
    x = randn(2, 3, 4, 4)
    r = randn(2, 3, 4, 4) if with_residual else None
    if with_residual:
        r[1, 2, 0, 0] = float("nan")
    else:
        x[1, 2, 0, 0] = float("nan")
    y_ref = fn(ref(x) + r) if with_residual else fn(ref(x))
    y = ours(x, r)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
