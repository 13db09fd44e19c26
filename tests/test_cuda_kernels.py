"""Tests of the hand-written CUDA kernels (csrc/cuda) through their raw ops.

On a GPU with the compiled CUDA kernels they run ``torch.ops.bnfused_C`` on
CUDA tensors; without one, the same kernel sources under the CPU emulator
(``torch.ops.bnfused_emu``, the ``cuda-emulated`` backend) on CPU tensors, at
smaller shapes. Every result is compared with a float64 oracle written in
plain PyTorch and with torch's own batch norm in the same dtype: our error must
stay within twice torch's error plus a small tolerance. Skipped when neither
is built.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import torch_activation

import bnfused
from bnfused.op import cuda_emulated

try:
    from bnfused.op.backend import compiled_extension

    if compiled_extension() is None:
        raise ImportError("bnfused._C is not built")
    HAVE_EXT = True
except ImportError:
    HAVE_EXT = False


def _has_cuda_kernel():
    if not (HAVE_EXT and torch.cuda.is_available()):
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("bnfused_C::forward", "CUDA")
    except RuntimeError:
        return False


GPU = _has_cuda_kernel()
EMULATED = not GPU and cuda_emulated.extension() is not None
DEV = "cuda" if GPU else "cpu"
OPS = torch.ops.bnfused_C if GPU else torch.ops.bnfused_emu
gpu_only = pytest.mark.skipif(not GPU, reason="needs a GPU (CUDA streams, graphs, devices)")

pytestmark = [
    pytest.mark.skipif(
        not (GPU or EMULATED),
        reason="needs a GPU with bnfused CUDA kernels, or bnfused._C_emulated",
    ),
]


def synchronize():
    if GPU:
        torch.cuda.synchronize()


from bnfused.op.contract import IDENTITY, RELU, SILU  # noqa: E402
from bnfused.op.contract import LEAKY_RELU as LEAKY  # noqa: E402

ACTS = [IDENTITY, RELU, LEAKY, SILU]
SLOPE = 0.1
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Absolute slack on top of 2 x torch's error, relative to the oracle's magnitude.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

# ResNet-50 layers; under the emulator at a smaller batch and resolution.
RESNET50 = (
    [
        (8, 64, 56, 56),
        (8, 256, 56, 56),
        (8, 128, 28, 28),
        (8, 512, 28, 28),
        (8, 256, 14, 14),
        (8, 1024, 14, 14),
        (16, 512, 7, 7),
        (16, 2048, 7, 7),
    ]
    if GPU
    else [
        (2, 64, 28, 28),
        (2, 256, 14, 14),
        (2, 128, 28, 28),
        (2, 512, 14, 14),
        (4, 256, 14, 14),
        (2, 1024, 7, 7),
        (4, 512, 7, 7),
        (2, 2048, 7, 7),
    ]
)
ODD = [
    (2, 1),
    (2, 2048),
    (7, 13),
    (3, 5, 17),
    (3, 7, 11, 13),
    (2, 3, 5, 7, 11),
    (2, 3, 1, 1),
    (5, 33, 3, 3),
    (4, 24, 9, 9),
]
BIG_S = [(20, 6, 65536)] if GPU else [(4, 6, 65536)]


def sized(gpu_shape, emulated_shape):
    """A shape at GPU size, or the smaller one the emulator runs in CPU time."""
    return gpu_shape if GPU else emulated_shape


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def act_fn(z, act):
    return torch_activation(z, act, SLOPE)


def channels_last(x):
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def memory_order(t, nsc):
    """Elements of t in the order of its memory layout."""
    return (t.movedim(1, -1) if nsc else t).reshape(-1)


def make_case(shape, dtype, *, nsc=False, weight=True, residual=False, hard=False, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    C = shape[1]
    acc = acc_dtype(dtype)
    x = torch.randn(shape, device=DEV, generator=g, dtype=torch.float32)
    if hard:
        x = x + 1e4
    x = x.to(dtype)
    dy = torch.randn(shape, device=DEV, generator=g).to(dtype)
    res = torch.randn(shape, device=DEV, generator=g).to(dtype) if residual else None
    if nsc:
        x, dy = channels_last(x), channels_last(dy)
        res = channels_last(res) if res is not None else None
    w = (torch.rand(C, device=DEV, generator=g) + 0.5).to(acc) if weight else None
    b = torch.randn(C, device=DEV, generator=g).to(acc) if weight else None
    rm = (torch.randn(C, device=DEV, generator=g) * 0.1).to(acc)
    rv = (torch.rand(C, device=DEV, generator=g) + 0.5).to(acc)
    return dict(x=x, dy=dy, res=res, w=w, b=b, rm=rm, rv=rv)


def run_ours(case, training, act, momentum=0.1, eps=1e-5, use_mask=True, output_mask=(True,) * 4):
    rm, rv = case["rm"].clone(), case["rv"].clone()
    y, smean, sinv, mask, lo = OPS.forward(
        case["x"], case["w"], case["b"], rm, rv, case["res"], training, momentum, eps, act, SLOPE
    )
    bmask = mask if use_mask else mask[:0]
    dx, dw, db, dres = OPS.backward(
        case["dy"],
        case["x"],
        case["w"],
        case["b"],
        smean,
        sinv,
        bmask,
        case["res"],
        training,
        eps,
        act,
        SLOPE,
        list(output_mask),
        lo,
    )
    return dict(
        y=y, mean=smean, invstd=sinv, mask=mask, dx=dx, dw=dw, db=db, dres=dres, rm=rm, rv=rv
    )


def run_reference(case, training, act, dtype=None, momentum=0.1, eps=1e-5):
    """Batch norm + residual + activation through autograd.

    dtype=None: torch's F.batch_norm in the input's dtype. dtype=float64: the
    oracle, explicit formulas in float64.
    """
    x = case["x"]
    C = x.shape[1]
    shape = [1, C] + [1] * (x.dim() - 2)
    explicit = dtype is not None
    dt = dtype if explicit else x.dtype
    acc = torch.float64 if explicit else acc_dtype(x.dtype)
    xd = x.detach().to(dt).requires_grad_()
    w = case["w"] if case["w"] is not None else torch.ones(C, device=DEV)
    b = case["b"] if case["b"] is not None else torch.zeros(C, device=DEV)
    wd, bd = w.detach().to(acc).requires_grad_(), b.detach().to(acc).requires_grad_()
    rm, rv = case["rm"].to(acc).clone(), case["rv"].to(acc).clone()
    resd = case["res"].detach().to(dt).requires_grad_() if case["res"] is not None else None
    mean = invstd = None
    if explicit:
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // C
        if training:
            mean, var = xd.mean(dims), xd.var(dims, unbiased=False)
            with torch.no_grad():
                rm.mul_(1 - momentum).add_(momentum * mean)
                rv.mul_(1 - momentum).add_(momentum * var * n / max(n - 1, 1))
        else:
            mean, var = rm, rv
        invstd = torch.rsqrt(var + eps)
        z = (xd - mean.view(shape)) * invstd.view(shape) * wd.view(shape) + bd.view(shape)
    else:
        z = F.batch_norm(xd, rm, rv, wd, bd, training, momentum, eps)
    if resd is not None:
        z = z + resd
    z.retain_grad()
    y = act_fn(z, act)
    y.backward(case["dy"].to(dt))
    return dict(
        y=y.detach(),
        z=z.detach(),
        dx=xd.grad,
        dw=wd.grad,
        db=bd.grad,
        dres=z.grad,
        rm=rm,
        rv=rv,
        mean=None if mean is None else mean.detach(),
        invstd=None if invstd is None else invstd.detach(),
    )


def oracle(case, training, act, **kw):
    return run_reference(case, training, act, torch.float64, **kw)


def torch_same_dtype(case, training, act, **kw):
    return run_reference(case, training, act, None, **kw)


def assert_close(name, ours, want, ref, dtype):
    assert ours.shape == want.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(ours).any(), f"{name}: NaN in output"
    err = (ours.double() - want.double()).abs().max().item()
    ref_err = (ref.double() - want.double()).abs().max().item() if ref is not None else 0.0
    scale = want.double().abs().max().item()
    atol = TOL[dtype] * (1.0 + scale)
    assert err <= 2.0 * ref_err + atol, (
        f"{name}: error {err:.3e} > 2 x torch {ref_err:.3e} + {atol:.3e} (scale {scale:.3e})"
    )


def check_all(case, training, act, *, use_mask=True, momentum=0.1, eps=1e-5):
    dtype = case["x"].dtype
    ours = run_ours(case, training, act, momentum, eps, use_mask)
    want = oracle(case, training, act, momentum=momentum, eps=eps)
    ref = torch_same_dtype(case, training, act, momentum=momentum, eps=eps)
    for key in ("y", "dx", "dres"):
        assert_close(key, ours[key], want[key], ref[key], dtype)
    for key in ("dw", "db"):
        assert_close(key, ours[key].to(want[key].dtype), want[key], ref[key], dtype)
    if training:
        for key in ("rm", "rv"):
            assert_close(key, ours[key], want[key], ref[key], dtype)
        assert_close(
            "mean",
            ours["mean"],
            want["mean"],
            None,
            dtype if dtype == torch.float64 else torch.float32,
        )
    else:
        assert torch.equal(ours["rm"], case["rm"]) and torch.equal(ours["rv"], case["rv"])
        assert torch.equal(ours["mean"], case["rm"])
    # Layout of the outputs follows the input.
    assert ours["y"].stride() == case["x"].stride()
    assert ours["dx"].stride() == case["x"].stride()
    return ours, want


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", RESNET50 + ODD + BIG_S, ids=str)
@pytest.mark.parametrize("nsc", [False, True], ids=["ncs", "nsc"])
def test_shapes_dtypes_layouts(shape, dtype, nsc):
    if nsc and len(shape) not in (4, 5):
        pytest.skip("channels_last needs 4-D or 5-D input")
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    check_all(case, True, RELU)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "shape,nsc",
    [((4, 32, 10, 10), False), ((4, 32, 10, 10), True), ((6, 40), False), ((3, 5, 17), False)],
    ids=str,
)
def test_activations_residual_weight_mode(shape, nsc, dtype, act, residual, weight, training):
    case = make_case(shape, dtype, nsc=nsc, residual=residual, weight=weight)
    check_all(case, training, act)


@pytest.mark.parametrize("act", [RELU, LEAKY])
@pytest.mark.parametrize("nsc", [False, True])
def test_backward_recomputes_without_mask(act, nsc):
    case = make_case((4, 16, 12, 12), torch.float32, nsc=nsc, residual=True)
    with_mask, _ = check_all(case, True, act, use_mask=True)
    without, _ = check_all(case, True, act, use_mask=False)
    assert torch.allclose(with_mask["dx"], without["dx"], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "shape,nsc",
    [
        ((32, 16, 20, 20), False),
        ((32, 16, 20, 20), True),
        (sized((20, 6, 65536), (4, 6, 65536)), False),
        ((4096, 8), False),
    ],
    ids=str,
)
def test_hard_data_large_mean(shape, nsc, dtype):
    """|mean| = 1e4 x std: naive sum/sum-of-squares statistics would fail here."""
    case = make_case(shape, dtype, nsc=nsc, hard=True)
    ours, want = check_all(case, True, IDENTITY)
    var_ours = 1.0 / ours["invstd"].double() ** 2
    var_want = 1.0 / want["invstd"].double() ** 2
    assert (var_ours - var_want).abs().max().item() < 1e-3 * var_want.max().item() + 1e-6


@pytest.mark.parametrize("act", [RELU, LEAKY])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,nsc",
    [
        ((3, 5, 7, 11), False),
        ((3, 5, 7, 11), True),
        ((4, 64, 8, 8), True),
        ((2, 3, 17), False),
        ((9, 16), False),
    ],
    ids=str,
)
def test_mask_bits(shape, nsc, dtype, act):
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    ours = run_ours(case, True, act)
    want = oracle(case, True, act)
    numel = case["x"].numel()
    mask = ours["mask"]
    assert mask.dtype == torch.uint8 and mask.numel() == (numel + 31) // 32 * 4
    idx = torch.arange(mask.numel() * 8, device=DEV)
    bits = (mask[idx // 8] >> (idx % 8).to(torch.uint8)) & 1
    z = memory_order(want["z"], nsc)
    expect = (z > 0).to(torch.uint8)
    clear = z.abs() > 1e-2  # away from 0, rounding cannot flip the bit
    assert torch.equal(bits[:numel][clear], expect[clear])
    assert not bits[numel:].any(), "padding bits must be 0"
    # Bit i of byte i/8 is also bit i%32 of little-endian word i/32.
    words = mask.view(torch.int32)
    widx = torch.arange(numel, device=DEV)
    wbits = (words[widx // 32] >> (widx % 32).to(torch.int32)) & 1
    assert torch.equal(wbits.to(torch.uint8), bits[:numel])


def test_no_mask_without_residual_or_for_other_activations():
    case = make_case((2, 4, 3, 3), torch.float32, residual=False)
    assert run_ours(case, True, RELU)["mask"].numel() == 0
    case = make_case((2, 4, 3, 3), torch.float32, residual=True)
    assert run_ours(case, True, SILU)["mask"].numel() == 0


@pytest.mark.parametrize(
    "output_mask",
    [
        (True, False, False, False),
        (False, True, True, False),
        (False, False, False, True),
        (True, True, False, True),
    ],
    ids=str,
)
@pytest.mark.parametrize("training", [True, False])
def test_partial_outputs(output_mask, training):
    case = make_case((4, 24, 9, 9), torch.float32, residual=True)
    want = oracle(case, training, SILU)
    ours = run_ours(case, training, SILU, output_mask=output_mask)
    for flag, key in zip(output_mask, ("dx", "dw", "db", "dres")):
        if flag:
            assert_close(key, ours[key].to(want[key].dtype), want[key], None, torch.float32)


# --------------------------------------------------------------------------- robustness


def poison_allocator(nbytes_list, copies=4):
    """Leave freed blocks full of 0xFF bytes (NaN in every float dtype) in the caching allocator.
    (The emulator poisons every output itself.)"""
    if not GPU:
        return
    held = []
    for nbytes in nbytes_list:
        for _ in range(copies):
            held.append(torch.full((max(int(nbytes), 1),), 255, dtype=torch.uint8, device=DEV))
    del held


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,nsc",
    [
        ((20, 6, 4096), False),
        ((8, 64, 14, 14), True),
        (sized((16, 2048, 7, 7), (4, 512, 7, 7)), False),
        ((2, 2048), False),
    ],
    ids=str,
)
@pytest.mark.parametrize("training", [True, False])
def test_poisoned_memory(shape, nsc, dtype, training):
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    numel = case["x"].numel()
    elem = case["x"].element_size()
    C = shape[1]
    synchronize()
    poison_allocator([numel * elem, C * 8, C * 4, (numel + 31) // 32 * 4, 1 << 20, 1 << 22])
    ours = run_ours(case, training, LEAKY)
    synchronize()
    for key in ("y", "mean", "invstd", "dx", "dw", "db", "dres", "rm", "rv"):
        assert not torch.isnan(ours[key]).any(), f"NaN in {key}"
    want = oracle(case, training, LEAKY)
    assert_close("y", ours["y"], want["y"], torch_same_dtype(case, training, LEAKY)["y"], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize(
    "shape,nsc",
    [
        (sized((20, 6, 65536), (4, 6, 65536)), False),
        (sized((64, 32, 28, 28), (8, 32, 28, 28)), True),
        (sized((16, 2048, 7, 7), (4, 512, 7, 7)), False),
        ((4096, 64), False),
    ],
    ids=str,
)
def test_deterministic(shape, nsc, dtype):
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    a = run_ours(case, True, SILU)
    poison_allocator([1 << 22])
    b = run_ours(case, True, SILU)
    for key in ("y", "mean", "invstd", "dx", "dw", "db", "dres", "rm", "rv"):
        assert torch.equal(a[key], b[key]), f"{key} differs between identical runs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize(
    "shape,nsc",
    [((4, 16, 9, 9), False), ((4, 16, 8, 8), True), ((7, 40), False), ((3, 8, 64), False)],
    ids=str,
)
def test_misaligned_pointers_use_scalar_path(shape, nsc, dtype):
    """Views that start one element into a buffer are not 16-byte aligned."""
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    for key in ("x", "dy", "res"):
        t = case[key]
        buf = torch.empty(t.numel() + 1, dtype=dtype, device=DEV)
        view = torch.as_strided(buf, t.shape, t.stride(), storage_offset=1)
        view.copy_(t)
        assert view.data_ptr() % 16 != 0 and torch.equal(view, t)
        case[key] = view
    check_all(case, True, RELU)
    check_all(case, True, RELU, use_mask=False)


@gpu_only
@pytest.mark.parametrize("path", ["two-pass", "persistent"])
def test_cuda_graph_capture(path):
    case = make_case((8, 32, 14, 14), torch.float32, nsc=True, residual=True)
    with bnfused.use_cuda_path(path):
        _graph_capture_replays_eager(case)


def _graph_capture_replays_eager(case):
    rm, rv = case["rm"].clone(), case["rv"].clone()

    def step():
        y, sm, si, mask, _ = OPS.forward(
            case["x"], case["w"], case["b"], rm, rv, case["res"], True, 0.1, 1e-5, RELU, 0.0
        )
        grads = OPS.backward(
            case["dy"],
            case["x"],
            case["w"],
            case["b"],
            sm,
            si,
            mask,
            case["res"],
            True,
            1e-5,
            RELU,
            0.0,
            [True, True, True, True],
        )
        return (y, sm, si, mask) + tuple(grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    rm.copy_(case["rm"])
    rv.copy_(case["rv"])
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    rm_graph, rv_graph = rm.clone(), rv.clone()
    rm.copy_(case["rm"])
    rv.copy_(case["rv"])
    step()
    eager = step()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
    assert torch.equal(rm_graph, rm) and torch.equal(rv_graph, rv)


def test_running_stats_momentum_and_dtype():
    """Half-precision running stats are updated through an acc copy and written back."""
    case = make_case((6, 10, 5, 5), torch.float16)
    rm16, rv16 = case["rm"].half(), case["rv"].half()
    OPS.forward(case["x"], None, None, rm16, rv16, None, True, 0.3, 1e-5, 0, 0.0)
    want = oracle(case, True, IDENTITY, momentum=0.3)
    assert torch.allclose(rm16.float(), want["rm"].float(), atol=2e-3, rtol=2e-3)
    assert torch.allclose(rv16.float(), want["rv"].float(), atol=2e-3, rtol=2e-3)


@gpu_only
@pytest.mark.slow
def test_more_than_2_pow_31_elements():
    """Scalar path (misaligned) over > 2^31 elements: 64-bit indexing end to end."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GiB of GPU memory")
    n = 2**30 + 17
    buf = torch.empty(2 * n + 1, dtype=torch.bfloat16, device=DEV)
    x = buf[1:].view(1, 2, n)
    x.normal_()
    x[:, 1].add_(3.0)
    y, mean, invstd, _, _ = OPS.forward(x, None, None, None, None, None, True, 0.1, 1e-5, 0, 0.0)
    xf = x[0].float()
    mean_want = torch.stack([xf[c].double().mean() for c in range(2)])
    assert torch.allclose(mean.double(), mean_want, atol=1e-3)
    tail = (xf[:, -1000:] - mean.view(2, 1)) * invstd.view(2, 1)
    assert torch.allclose(y[0, :, -1000:].float(), tail, atol=2e-2)
    del buf, x, y


# --------------------------------------------------------------------------- edges and bad input


def test_channels_beyond_grid_y_limit():
    """C > 65535 channels: NCS puts channels on gridDim.x, NSC tiles them; both must cover all."""
    check_all(make_case((2, 70000, 3), torch.float32, residual=True), True, RELU)
    check_all(make_case((3, 70000), torch.float16, residual=True), True, LEAKY)


@pytest.mark.parametrize("act", [IDENTITY, RELU, LEAKY])
@pytest.mark.parametrize("nsc", [False, True], ids=["ncs", "nsc"])
def test_nan_propagates_like_torch(act, nsc):
    """relu/leaky_relu keep NaN (torch.relu does); eval statistics keep NaN local to its element."""
    case = make_case((4, 8, 6, 6), torch.float32, nsc=nsc)
    x = case["x"].clone()
    x[1, 3, 2, 4] = float("nan")
    x[2, 5, 0, 0] = float("nan")
    case["x"] = x
    ours = run_ours(case, False, act)
    want = torch_same_dtype(case, False, act)
    assert torch.equal(torch.isnan(ours["y"]), torch.isnan(want["y"]))
    assert torch.isnan(ours["y"]).sum().item() == 2
    finite = ~torch.isnan(want["y"])
    assert torch.allclose(ours["y"][finite], want["y"][finite], atol=1e-5)


def test_one_value_per_channel_matches_reference():
    """n == 1 (torch's modules refuse it; the op computes it): var 0, unbiased running var NaN."""
    from bnfused.op import reference

    case = make_case((1, 6), torch.float32, residual=True)
    ours = run_ours(case, True, RELU)
    rm, rv = case["rm"].clone(), case["rv"].clone()
    y, mean, invstd, mask, _ = reference.forward(
        case["x"], case["w"], case["b"], rm, rv, case["res"], True, 0.1, 1e-5, RELU, SLOPE
    )
    assert torch.allclose(ours["y"], y, atol=1e-6)
    assert torch.allclose(ours["mean"], mean) and torch.allclose(ours["invstd"], invstd)
    assert torch.equal(ours["mask"], mask)
    assert torch.allclose(ours["rm"], rm.float())
    assert torch.isnan(ours["rv"]).all() and torch.isnan(rv).all()


def _backward_args(case, mask, **override):
    args = dict(
        dy=case["dy"],
        x=case["x"],
        w=case["w"],
        b=case["b"],
        mean=None,
        invstd=None,
        mask=mask,
        res=case["res"],
        act=RELU,
    )
    args.update(override)
    return args


def _call_backward(a):
    return OPS.backward(
        a["dy"],
        a["x"],
        a["w"],
        a["b"],
        a["mean"],
        a["invstd"],
        a["mask"],
        a["res"],
        True,
        1e-5,
        a["act"],
        SLOPE,
        [True] * 4,
    )


@gpu_only
@pytest.mark.parametrize("what", ["grad_output", "save_mean", "save_invstd", "mask", "residual"])
def test_backward_rejects_tensors_on_other_devices(what):
    """A CPU tensor beside CUDA input must raise, not be dereferenced as a device pointer."""
    case = make_case((2, 4, 3, 3), torch.float32, residual=True)
    _, mean, invstd, mask, _ = OPS.forward(
        case["x"], case["w"], case["b"], None, None, case["res"], True, 0.1, 1e-5, RELU, SLOPE
    )
    a = _backward_args(case, mask, mean=mean, invstd=invstd)
    key = {
        "grad_output": "dy",
        "save_mean": "mean",
        "save_invstd": "invstd",
        "mask": "mask",
        "residual": "res",
    }[what]
    if what == "residual":
        a["mask"] = mask[:0]  # the residual is read only when z is recomputed
    a[key] = a[key].cpu()
    with pytest.raises(RuntimeError, match=f"{what} is on cpu"):
        _call_backward(a)
    synchronize()  # the context is still healthy


def test_backward_rejects_bad_residual_and_mask():
    case = make_case((2, 4, 3, 3), torch.float32, residual=True)
    _, mean, invstd, mask, _ = OPS.forward(
        case["x"], case["w"], case["b"], None, None, case["res"], True, 0.1, 1e-5, RELU, SLOPE
    )
    base = _backward_args(case, mask, mean=mean, invstd=invstd)
    bad = [
        (dict(mask=mask[:0], res=case["res"][:, :, :2]), "residual of size"),
        (dict(mask=mask[:0], res=case["res"].double()), "residual dtype"),
        (dict(mask=mask.view(torch.int8)), "uint8"),
        (dict(act=SILU), "only valid for relu/leaky_relu"),
    ]
    for override, message in bad:
        with pytest.raises(RuntimeError, match=message):
            _call_backward(dict(base, **override))
