"""The persistent training path of the CUDA kernels: one cooperative kernel per
pass that holds its tile on chip across a grid-wide sync (x read once).

Runs the raw ops as tests/test_cuda_kernels.py does: on a GPU with the compiled
kernels, else under the CPU emulator. Checks that the path runs where it should
(forced, automatic from 256 KiB, never where the grid cannot be co-resident),
that it meets the accuracy policy against the float64 oracle, that its results
and activation mask match the two-pass kernels', and that it is deterministic in
every block order, through the grid syncs of multi-split plans.
"""

import pytest
import torch
from test_cuda_kernels import (
    DEV,
    EMULATED,
    GPU,
    LEAKY,
    RELU,
    SILU,
    check_all,
    make_case,
    memory_order,
    run_ours,
)

import bnfused
from bnfused.op import backend, cuda_emulated, settings

pytestmark = pytest.mark.skipif(
    not (GPU or EMULATED), reason="needs a GPU with bnfused CUDA kernels, or bnfused._C_emulated"
)


@pytest.fixture
def emulator():
    """The emulator's settings, restored after the test."""
    ext = cuda_emulated.extension()
    before = ext.settings()
    yield ext
    ext.configure(**before)


def kernels_launched(fn):
    """(result of fn(), the kernel templates it launched, in order)."""
    if EMULATED:
        ext = cuda_emulated.extension()
        before = ext.configure(count_traffic=True)
        try:
            ext.traffic()
            out = fn()
            names = [r["kernel"] for r in ext.traffic()]
        finally:
            ext.configure(count_traffic=before["count_traffic"])
    else:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = fn()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return out, names


def is_persistent(names):
    return bool(names) and all("ResidentOp" in n for n in names)


def is_two_pass(names):
    return bool(names) and not any("ResidentOp" in n for n in names)


# Shapes whose persistent plans have one split (no grid sync but the mask's) and several
# (partials merged after a grid sync), scalar and vector paths, mask words that straddle
# blocks (planes and rows that are not a multiple of 32 elements).
CASES = [
    ((4, 8, 5, 5), False, torch.float32),
    ((16, 3, 7, 7), False, torch.float32),
    ((32, 4, 32, 32), False, torch.bfloat16),
    ((32, 4, 32, 32), True, torch.float32),
    ((8, 300, 3, 3), True, torch.bfloat16),
    ((64, 3, 16, 16), False, torch.float16),
    ((256, 40), False, torch.float64),
    ((1000, 12), False, torch.float32),
    ((4, 6, 7, 9), True, torch.float64),
    ((2, 5, 3, 4, 6), False, torch.bfloat16),
]


@pytest.mark.parametrize("shape,nsc,dtype", CASES, ids=str)
@pytest.mark.parametrize("act", [RELU, LEAKY, SILU])
def test_persistent_path_meets_the_policy(shape, nsc, dtype, act):
    case = make_case(shape, dtype, nsc=nsc, residual=act == RELU)
    with bnfused.use_cuda_path("persistent"):
        _, names = kernels_launched(lambda: check_all(case, True, act))
        check_all(case, True, act, use_mask=False)
    assert is_persistent(names), names


@pytest.mark.parametrize("shape,nsc,dtype", CASES, ids=str)
def test_persistent_matches_two_pass(shape, nsc, dtype):
    """Same mask bit for bit; the statistics merge in another order, so values agree to
    rounding (bit-identical where both plans merge alike)."""
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    with bnfused.use_cuda_path("two-pass"):
        two = run_ours(case, True, RELU)
    with bnfused.use_cuda_path("persistent"):
        one = run_ours(case, True, RELU)
    assert torch.equal(one["mask"], two["mask"])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[
        dtype
    ]
    for key in ("y", "mean", "invstd", "rm", "rv", "dx", "dw", "db", "dres"):
        a, b = one[key].double(), two[key].double()
        assert torch.allclose(a, b, rtol=tol, atol=tol * (1 + b.abs().max().item())), key


@pytest.mark.skipif(not EMULATED, reason="block orders are the emulator's")
@pytest.mark.parametrize("shape,nsc,dtype", [CASES[2], CASES[3], CASES[4], CASES[1]], ids=str)
def test_persistent_is_bit_identical_in_every_block_order(emulator, shape, nsc, dtype):
    case = make_case(shape, dtype, nsc=nsc, residual=True)
    results = []
    with bnfused.use_cuda_path("persistent"):
        for order, seed in (("forward", 0), ("reversed", 0), ("shuffled", 1), ("shuffled", 7)):
            emulator.configure(block_order=order, seed=seed)
            results.append(run_ours(case, True, SILU))
    for other in results[1:]:
        for key, value in results[0].items():
            if value is not None:
                assert torch.equal(value, other[key]), key


def _bytes(shape, dtype):
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def test_auto_takes_the_persistent_path_from_256_KiB():
    small, large = (8, 16, 16, 16), (8, 32, 32, 32)  # 128 KiB and 1 MiB of fp32
    assert _bytes(small, torch.float32) < 256 * 1024 <= _bytes(large, torch.float32)
    with bnfused.use_cuda_path("auto"):
        for shape, persistent in ((small, False), (large, True)):
            case = make_case(shape, torch.float32)
            _, names = kernels_launched(lambda: run_ours(case, True, RELU))
            assert (is_persistent if persistent else is_two_pass)(names), (shape, names)
        _, names = kernels_launched(lambda: run_ours(make_case(large, torch.float32), False, RELU))
        assert is_two_pass(names), "eval mode has no statistics pass to fuse"


def test_two_pass_can_be_forced():
    case = make_case((8, 32, 32, 32), torch.float32)
    with bnfused.use_cuda_path("two-pass"):
        _, names = kernels_launched(lambda: run_ours(case, True, RELU))
    assert is_two_pass(names) and len(names) == 4


@pytest.mark.skipif(not EMULATED, reason="the emulated device's co-residency is set in the test")
def test_falls_back_to_two_pass_when_the_grid_cannot_be_resident(emulator):
    """A plan needs more co-resident blocks than the occupancy API reports: the two-pass
    kernels run (a cooperative launch that large would be refused), with the same policy."""
    emulator.configure(sm_count=1, blocks_per_sm=1)
    case = make_case((4, 8, 5, 5), torch.float32, residual=True)  # 8 channels: 8 blocks
    with bnfused.use_cuda_path("persistent"):
        _, names = kernels_launched(lambda: check_all(case, True, RELU))
    assert is_two_pass(names), names
    emulator.configure(blocks_per_sm=8)
    with bnfused.use_cuda_path("persistent"):
        _, names = kernels_launched(lambda: check_all(case, True, RELU))
    assert is_persistent(names), names


@pytest.mark.skipif(not EMULATED, reason="the emulated device's co-residency is set in the test")
@pytest.mark.parametrize("shape,passes", [((12, 32, 14, 14), 2), ((24, 32, 14, 14), 1)], ids=str)
def test_scalar_planes_hold_more_items(emulator, shape, passes):
    """bf16 14x14 planes are not whole 16-byte vectors: the scalar path, whose threads hold
    4x the vector path's item count (one register an item, not four). On 16 SMs x 2 blocks
    the 32 channels must each fit one block: with the vector counts (10 forward, 3 backward
    items of 256 threads) the backward of (12, ...) would take 4 splits and the forward of
    (24, ...) 2, and neither would be resident."""
    emulator.configure(sm_count=16, blocks_per_sm=2)
    case = make_case(shape, torch.bfloat16, residual=True)
    with bnfused.use_cuda_path("persistent"):
        _, names = kernels_launched(lambda: check_all(case, True, SILU))
    assert "ForwardResidentOp" in names[0], names
    assert (passes == 2) == is_persistent(names), names


@pytest.mark.skipif(not GPU, reason="needs a GPU: an activation larger than its chip")
def test_falls_back_to_two_pass_beyond_the_chip():
    case = make_case((64, 256, 56, 56), torch.bfloat16, nsc=True)  # 100 MB
    with bnfused.use_cuda_path("persistent"):
        _, names = kernels_launched(lambda: run_ours(case, True, RELU))
    assert is_two_pass(names), names


def test_mask_words_straddling_blocks_are_whole():
    """Planes of 49 elements: most mask words hold elements of two channels, so two blocks
    OR their bits into them; every bit must equal the pre-activation's sign."""
    case = make_case((16, 6, 7, 7), torch.float32, residual=True)
    with bnfused.use_cuda_path("persistent"):
        out = run_ours(case, True, RELU)
    shape = [1, 6, 1, 1]  # the pre-activation, recomputed from our statistics
    z = (
        (case["x"] - out["mean"].view(shape)) * out["invstd"].view(shape) * case["w"].view(shape)
        + case["b"].view(shape)
        + case["res"]
    )
    bits = torch.tensor(
        [(b >> i) & 1 for b in out["mask"].view(torch.uint8).tolist() for i in range(8)],
        dtype=torch.bool,
        device=DEV,
    )[: z.numel()]
    want = memory_order(z, False) > 0
    mismatch = (bits != want).nonzero().flatten()
    # Elements within rounding of zero may fall either way; none other.
    assert all(abs(memory_order(z, False)[i].item()) < 1e-5 for i in mismatch.tolist())


def test_use_cuda_path_validates_and_restores():
    before = backend.current_cuda_path()
    with bnfused.use_cuda_path("two-pass"):
        assert backend.current_cuda_path() == "two-pass"
        with bnfused.use_cuda_path("persistent"):
            assert backend.current_cuda_path() == "persistent"
        assert backend.current_cuda_path() == "two-pass"
    assert backend.current_cuda_path() == before
    with pytest.raises(ValueError, match="unknown CUDA path 'fused'"):
        with bnfused.use_cuda_path("fused"):
            pass


def test_environment_setting_is_validated(monkeypatch):
    monkeypatch.setenv("BNFUSED_CUDA_PATH", "one-pass")
    with pytest.raises(
        ValueError, match="BNFUSED_CUDA_PATH='one-pass' is not one of auto, two-pass, persistent"
    ):
        settings.cuda_path()
    monkeypatch.setenv("BNFUSED_CUDA_PATH", "persistent")
    assert settings.cuda_path() == "persistent"


@pytest.mark.skipif(not EMULATED, reason="reads the kernel names from the emulator")
@pytest.mark.parametrize("path,kernel", [("persistent", "ResidentOp"), ("two-pass", "StatsOp")])
def test_environment_reaches_the_kernels(path, kernel):
    """BNFUSED_CUDA_PATH is passed to the kernels when the extension loads."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, bnfused\n"
        "from bnfused.op import cuda_emulated as e\n"
        "e.configure(count_traffic=True)\n"
        "x = torch.randn(64, 16, 16, 16)\n"
        "e.forward(x, None, None, None, None, None, True, 0.1, 1e-5, 0, 0.0)\n"
        "print(e.traffic()[0]['kernel'])\n"
    )
    env = dict(os.environ, BNFUSED_CUDA_PATH=path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert kernel in out.stdout, out.stdout
