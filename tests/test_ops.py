"""The torch.library ops: opcheck, gradcheck/gradgradcheck, torch.compile, reference vs torch."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, INTERPRETED, randn
from torch import nn

import bnfused
from bnfused.op import reference
from bnfused.op.contract import IDENTITY, LEAKY_RELU, RELU, SILU

ACTIVATIONS = [IDENTITY, RELU, LEAKY_RELU, SILU]


def op_args(
    shape=(3, 4, 5, 2),
    dtype=torch.float32,
    activation=RELU,
    residual=True,
    training=True,
    channels_last=False,
    grad=True,
):
    C = shape[1]
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x = randn(*shape, dtype=dtype, channels_last=channels_last, shift=0.1)
    w = randn(C, dtype=pdtype, shift=1.0)
    b = randn(C, dtype=pdtype)
    rm = randn(C, dtype=pdtype, scale=0.1)
    rv = randn(C, dtype=pdtype, scale=0.1, shift=1.0)
    r = randn(*shape, dtype=dtype, channels_last=channels_last) if residual else None
    if grad:
        for t in (x, w, b) + ((r,) if r is not None else ()):
            t.requires_grad_(True)
    return (x, w, b, rm, rv, r, training, 0.1, 1e-5, activation, 0.01)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_opcheck_forward(activation, residual, training):
    args = op_args(activation=activation, residual=residual, training=training)
    tests = (
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_dynamic",
    )
    torch.library.opcheck(torch.ops.bnfused.forward.default, args, test_utils=tests)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_forward_layouts(channels_last):
    args = op_args(channels_last=channels_last)
    torch.library.opcheck(torch.ops.bnfused.forward.default, args)


@pytest.mark.parametrize("with_lo", [False, True], ids=["no_mean_lo", "mean_lo"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck_backward(activation, with_lo):
    x, w, b, rm, rv, r, training, m, eps, act, p = op_args(activation=activation, grad=False)
    _, mean, invstd, mask, lo = torch.ops.bnfused.forward(
        x, w, b, rm, rv, r, training, m, eps, act, p
    )
    dy = randn(*x.shape)
    args = (dy, x, w, b, mean, invstd, mask, r, training, eps, act, p, [True, True, True, True])
    args += (lo,) if with_lo else ()
    torch.library.opcheck(
        torch.ops.bnfused.backward.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_save_mean_lo(channels_last):
    """The forward's fifth output: the batch mean minus save_mean, (C,) in the accumulation
    dtype after a training forward, so that save_mean + save_mean_lo is the mean to far
    below float32's resolution; empty after an eval forward, zeros for an empty batch."""
    C = 5
    spread = torch.tensor([1.0, 0.01, 3.0, 1.0, 0.5], dtype=torch.float64, device=DEVICE)
    offset = torch.tensor([1e5, 1e4, -3e4, 0.0, 7.0], dtype=torch.float64, device=DEVICE)
    x = (
        torch.randn(4, C, 6, 5, dtype=torch.float64, device=DEVICE) * spread.view(1, C, 1, 1)
        + offset.view(1, C, 1, 1)
    ).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    _, mean, _, _, lo = torch.ops.bnfused.forward(
        x, None, None, rm, rv, None, True, 0.1, 1e-5, IDENTITY, 0.0
    )
    assert lo.shape == (C,) and lo.dtype == torch.float32 and lo.device == x.device
    exact = x.double().mean(dim=(0, 2, 3))
    err = (mean.double() + lo.double() - exact).abs()
    assert (err <= 1e-6 * spread + 1e-12 * exact.abs()).all(), err
    assert (lo.double().abs() <= exact.abs() * 2.0**-24 + 1e-6 * spread).all(), lo
    out = torch.ops.bnfused.forward(x, None, None, rm, rv, None, False, 0.1, 1e-5, IDENTITY, 0.0)
    assert out[4].numel() == 0
    empty = torch.ops.bnfused.forward(
        x[:0], None, None, None, None, None, True, 0.1, 1e-5, IDENTITY, 0.0
    )
    assert torch.equal(empty[4], torch.zeros(C, device=DEVICE))


@pytest.mark.skipif(INTERPRETED, reason="float64 gradcheck runs on the compiled/reference paths")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck(activation, residual, training):
    x, w, b, rm, rv, r, _, m, eps, act, p = op_args(
        shape=(3, 2, 3), dtype=torch.float64, activation=activation, residual=residual
    )

    def fn(x, w, b, *res):
        return bnfused.functional.batch_norm(
            x,
            rm.clone(),
            rv.clone(),
            w,
            b,
            training,
            m,
            eps,
            activation=["identity", "relu", "leaky_relu", "silu"][act],
            residual=res[0] if res else None,
            activation_param=0.2,
        )

    inputs = (x, w, b) + ((r,) if residual else ())
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True])
def test_reference_matches_torch_float64(activation, residual):
    """The oracle itself agrees with torch's ops in float64."""
    x, w, b, rm, rv, r, training, m, eps, act, p = op_args(
        dtype=torch.float64, activation=activation, residual=residual, grad=False
    )
    rm2, rv2 = rm.clone(), rv.clone()
    y, mean, invstd, mask, _ = reference.forward(x, w, b, rm, rv, r, True, m, eps, act, 0.2)
    z = F.batch_norm(x, rm2, rv2, w, b, True, m, eps) + (r if r is not None else 0)
    expect = {IDENTITY: z, RELU: F.relu(z), LEAKY_RELU: F.leaky_relu(z, 0.2), SILU: F.silu(z)}[act]
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-12)
    if mask.numel():
        assert torch.equal(reference.unpack_mask(mask, x), z > 0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_mask_roundtrip(channels_last):
    x = randn(3, 5, 4, 7, channels_last=channels_last)
    pos = x > 0
    mask = reference.pack_mask(pos, reference.memory_format(x))
    assert mask.numel() == reference.mask_bytes(x.numel()) and mask.dtype == torch.uint8
    assert torch.equal(reference.unpack_mask(mask, x), pos)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = bnfused.BatchNormAct2d(4, activation="relu")
        self.bn2 = bnfused.BatchNormAct2d(4, activation="relu")
        self.bn3 = bnfused.BatchNorm2d(4, momentum=None)

    def forward(self, x):
        out = self.bn1(self.conv(x))
        return self.bn3(self.bn2(self.conv(out), x))


def check_compiled_block(train, tol, **compile_options):
    """A compiled bnfused block matches eager: outputs, input grads, running stats."""
    torch._dynamo.reset()
    model = Block().to(DEVICE).train(train)
    twin = Block().to(DEVICE).train(train)
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(twin, fullgraph=True, **compile_options)
    for _ in range(3):
        x = randn(2, 4, 5, 5, shift=0.2).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        y, y2 = model(x), compiled(x2)
        torch.testing.assert_close(y2, y, rtol=tol, atol=tol)
        y.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=10 * tol, atol=10 * tol)
    for (k, v), v2 in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(v2, v, rtol=tol, atol=tol / 10, msg=k)


@pytest.mark.skipif(INTERPRETED, reason="compile is exercised on the compiled/reference paths")
@pytest.mark.parametrize("train", [True, False])
def test_compile_fullgraph(train):
    check_compiled_block(train, 1e-5)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_compile_reduce_overhead_cuda_graphs():
    """mode="reduce-overhead" replays CUDA graphs: any launch off the current stream,
    host sync or data-dependent allocation breaks it."""
    check_compiled_block(True, 1e-4, mode="reduce-overhead")


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher's Python mode."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [True, False])
def test_eager_direct_call_matches_the_op(training):
    """Plain eager calls skip the dispatcher; the numbers are the registered op's, bit for bit."""
    x, w, b, rm, rv, r, _, m, eps, act, p = op_args(activation=RELU, training=training)
    rm2, rv2 = rm.clone(), rv.clone()
    assert bnfused.op.ops.direct_call_ok(x, w, b, rm, rv, r)
    y, mean, invstd, _, _ = bnfused.op.ops.forward(x, w, b, rm, rv, r, training, m, eps, act, p)
    y2, mean2, invstd2, _, _ = torch.ops.bnfused.forward(
        x, w, b, rm2, rv2, r, training, m, eps, act, p
    )
    for ours, op in ((y, y2), (mean, mean2), (invstd, invstd2), (rm, rm2), (rv, rv2)):
        assert torch.equal(ours, op)
    dy = randn(*y.shape)
    grads = torch.autograd.grad(y, (x, w, b, r), dy)
    grads2 = torch.autograd.grad(y2, (x, w, b, r), dy)
    for g, g2 in zip(grads, grads2):
        assert torch.equal(g, g2)


def test_dispatch_modes_still_see_the_ops():
    """Under a dispatch mode the module goes through torch.ops.bnfused, forward and backward."""
    bn = bnfused.BatchNormAct2d(4, device=DEVICE)
    x = randn(3, 4, 5, 2).requires_grad_(True)
    with _RecordOps() as rec:
        assert not bnfused.op.ops.direct_call_ok(x)
        bn(x, randn(3, 4, 5, 2)).sum().backward()
    assert "bnfused.forward.default" in rec.names and "bnfused.backward.default" in rec.names


@pytest.mark.skipif(
    INTERPRETED, reason="the transform is backend-independent; kept off the interpreter for time"
)
@pytest.mark.parametrize("activation", [RELU, SILU])
def test_torch_func_grad_matches_autograd(activation):
    """torch.func.grad (and grad of grad) through the fused op equal torch.autograd's."""
    x = randn(4, 3, 5, 2, dtype=torch.float64, shift=0.3)
    w = randn(3, dtype=torch.float64, shift=1.0)
    act = {RELU: "relu", SILU: "silu"}[activation]

    def loss(x):
        y = bnfused.functional.batch_norm(x, None, None, w, None, True, activation=act)
        return (y * y.detach().sign()).square().sum()

    gx = torch.func.grad(loss)(x)
    xa = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(xa), xa, create_graph=True)
    torch.testing.assert_close(gx, expected, rtol=1e-12, atol=1e-12)
    if activation == SILU:
        ggx = torch.func.grad(lambda x: torch.func.grad(loss)(x).sum())(x)
        (expected2,) = torch.autograd.grad(expected.sum(), xa)
        torch.testing.assert_close(ggx, expected2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("code", [-1, 4, 7])
def test_unknown_activation_code_is_the_same_error_everywhere(code):
    x = randn(4, 3, 5)
    with pytest.raises(RuntimeError, match=f"unknown activation code {code}; expected 0 identity"):
        torch.ops.bnfused.forward(x, None, None, None, None, None, True, 0.1, 1e-5, code, 0.0)
    _, mean, invstd, _, _ = torch.ops.bnfused.forward(
        x, None, None, None, None, None, True, 0.1, 1e-5, 0, 0.0
    )
    empty = torch.empty(0, dtype=torch.uint8, device=x.device)
    with pytest.raises(RuntimeError, match=f"unknown activation code {code}"):
        torch.ops.bnfused.backward(
            randn(4, 3, 5),
            x,
            None,
            None,
            mean,
            invstd,
            empty,
            None,
            True,
            1e-5,
            code,
            0.0,
            [True, False, False, False],
        )
