"""Seeded random cases against torch and a float64 oracle, on whichever backend the suite runs.

Each case draws a shape (1-5 dims after N and C, odd sizes), dtype, layout
(contiguous, channels_last, strided), data offset and scale, train or eval,
momentum (including None), affine, running statistics, activation, residual
and eps; it runs two steps of forward + backward and judges y, dx, dweight,
dbias, dresidual and the running statistics by the correctness policy. A
failure prints the command that reruns its case alone.

``make test`` runs a budget of cases per backend; ``BNFUSED_FUZZ_CASES=N`` runs
seeds 0..N-1 instead (a longer run, e.g. ``BNFUSED_FUZZ_CASES=5000 pytest
tests/test_fuzz.py -x``). Seeds that once failed run always.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND, DEVICE, INTERPRETED, assert_policy
from torch import nn

import bnfused

CASES = int(os.environ.get("BNFUSED_FUZZ_CASES", "0")) or (
    24 if INTERPRETED or BACKEND == "cuda-emulated" else 160
)
# Past failures, kept whatever the budget: the backward of fp32 data whose mean is 1e4
# standard deviations away, with silu after a residual (dresidual, dweight); an input equal
# to the running mean at leaky_relu's kink (1721), or to the batch mean at relu's (2813).
REGRESSIONS = (340, 623, 1721, 2813)
TORCH_CLASSES = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
OURS = {1: bnfused.BatchNormAct1d, 2: bnfused.BatchNormAct2d, 3: bnfused.BatchNormAct3d}
ACTS = {
    "identity": lambda z: z,
    "relu": F.relu,
    "silu": F.silu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.1),
}


def draw_case(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    kind = pick([1, 1, 2, 2, 2, 3])
    spatial = {1: pick([0, 1]), 2: 2, 3: 3}[kind]
    training = pick([True, True, False])
    track = pick([True, True, False])
    batch_stats = training or not track  # without running statistics eval uses the batch's
    while True:
        shape = [int(torch.randint(1, 7, (1,), generator=g)), pick([1, 2, 3, 5, 8, 17, 32, 40])]
        shape += [int(torch.randint(1, 10, (1,), generator=g)) for _ in range(spatial)]
        if not batch_stats or math.prod(shape) // shape[1] > 1:
            break
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    if DEVICE.type == "cuda":
        dtypes.append(torch.float16)
    dtype = pick(dtypes)
    scale = pick([0.01, 0.3, 1.0, 10.0])
    # The offset is at most 1e4 standard deviations (the design's stability promise); in
    # 16-bit types at most 3, since a coarser grid puts whole groups of elements exactly on
    # the mean, where relu's gradient jumps and no rounding order is more right than another.
    shift = pick([0.0, 0.5, 3.0, 100.0, 1e4]) * scale
    if dtype in (torch.bfloat16, torch.float16):
        shift = min(shift, 3.0 * scale)
    return dict(
        seed=seed,
        kind=kind,
        shape=shape,
        dtype=dtype,
        training=training,
        layout=pick(["contiguous", "channels_last", "strided"])
        if len(shape) >= 4
        else pick(["contiguous", "strided"]),
        shift=shift,
        scale=scale,
        momentum=pick([0.1, None, 1.0, 0.0]),
        affine=pick([True, False]),
        track=track,
        activation=pick(list(ACTS)),
        residual=pick([False, True]),
        eps=pick([1e-5, 1e-3]),
    )


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(
            memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        )
    if layout == "strided":  # every other element of a wider buffer along the last dim
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _data(case, g, scale=1.0, shift=0.0):
    x = torch.randn(*case["shape"], dtype=torch.float64, generator=g) * scale + shift
    return _layout(x.to(device=DEVICE, dtype=case["dtype"]), case["layout"])


def _modules(case):
    C, dtype = case["shape"][1], case["dtype"]
    param_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    kw = dict(
        eps=case["eps"],
        momentum=case["momentum"],
        affine=case["affine"],
        track_running_stats=case["track"],
    )
    ref = TORCH_CLASSES[case["kind"]](C, device=DEVICE, dtype=param_dtype, **kw)
    with torch.no_grad():
        if ref.affine:
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        if ref.track_running_stats:
            ref.running_mean.uniform_(-0.2, 0.2).add_(case["shift"])
            ref.running_var.uniform_(0.5, 1.5).mul_(case["scale"] ** 2)
    ours = OURS[case["kind"]](
        C, device=DEVICE, dtype=param_dtype, activation=case["activation"], negative_slope=0.1, **kw
    )
    oracle = TORCH_CLASSES[case["kind"]](C, device=DEVICE, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    oracle.load_state_dict(ref.state_dict())
    for m in (ref, ours, oracle):
        m.train(case["training"])
    return ref, ours, oracle


def _step(module, x, r, dy, fused, act, ties=None):
    x = x.detach().clone().requires_grad_(True)
    r = None if r is None else r.detach().clone().requires_grad_(True)
    if fused:
        y = module(x, r)
    else:
        z = module(x)
        if ties is not None:  # exactly 0 there, the gradient unchanged
            z = z - torch.where(ties, z.detach(), torch.zeros_like(z))
        y = act(z if r is None else z + r)
    y.backward(dy)
    grads = {"dx": x.grad}
    if r is not None:
        grads["dresidual"] = r.grad
    if module.affine:
        grads.update(dweight=module.weight.grad, dbias=module.bias.grad)
    return y, grads


def _reproducer(seed: int) -> str:
    """The command that runs this case alone on this backend."""
    env = f"BNFUSED_BACKEND={BACKEND} BNFUSED_FUZZ_CASES={max(CASES, seed + 1)}"
    if INTERPRETED:
        env = "TRITON_INTERPRET=1 " + env
    return f"{env} pytest 'tests/test_fuzz.py::test_random_case[case_{seed}]'"


def _kink_ties(case, module, x):
    """Elements whose pre-activation is exactly 0 at relu's or leaky_relu's kink, or None.

    Only z = x - mean (no affine, no residual) is ever exactly 0 there: x equal to the
    running mean in eval, or to the batch mean (small bf16 batches). bnfused computes that
    z as exactly 0 and takes torch's derivative at 0 (relu 0, leaky_relu the slope); torch's
    modules compute x * invstd - mean * invstd and land on either side of 0 by their
    rounding, in float64 too, which in training moves the whole channel's dx through its
    sums. The float64 oracle is therefore given exactly 0 there (its gradient unchanged),
    so that it takes torch's derivative at 0 as well.
    """
    if case["activation"] not in ("relu", "leaky_relu") or case["affine"] or case["residual"]:
        return None
    x64 = x.double()
    if case["training"] or not case["track"]:
        mean = x64.mean(dim=[0] + list(range(2, x.dim())))
    else:
        mean = module.running_mean.double()
    return x64 == mean.view([1, -1] + [1] * (x.dim() - 2))


@pytest.mark.parametrize(
    "seed", [pytest.param(s, id=f"case_{s}") for s in sorted(set(range(CASES)) | set(REGRESSIONS))]
)
def test_random_case(seed):
    case = draw_case(seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    ref, ours, oracle = _modules(case)
    act = ACTS[case["activation"]]
    dtype = case["dtype"]
    for step in range(2):
        x = _data(case, g, case["scale"], case["shift"])
        r = _data(case, g) if case["residual"] else None
        dy = _data(case, g)
        for m in (ref, ours, oracle):
            m.zero_grad(set_to_none=True)
        ties = _kink_ties(case, ours, x)
        y_ref, g_ref = _step(ref, x, r, dy, False, act)
        y, got = _step(ours, x, r, dy, True, act)
        y_or, g_or = _step(
            oracle, x.double(), None if r is None else r.double(), dy.double(), False, act, ties
        )
        where = f"{case} step {step}; reproduce: {_reproducer(seed)}"
        assert y.dtype == dtype and y.shape == x.shape, where
        assert_policy(f"y ({where})", y, y_ref, y_or, dtype)
        for name in g_or:
            assert_policy(f"{name} ({where})", got[name], g_ref[name], g_or[name], dtype)
        if case["track"]:
            for name in ("running_mean", "running_var"):
                assert_policy(
                    f"{name} ({where})",
                    getattr(ours, name),
                    getattr(ref, name),
                    getattr(oracle, name),
                    dtype,
                )
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item(), where
