"""The CUDA emulator itself: planted kernel bugs are reported, the fp16/bf16
conversions are bit-exact, and the launch plans of 1 to 1000 SMs, run in any
block order, give the float64 oracle's results bit-identically.
"""

import pathlib
import re

import pytest
import torch
from conftest import assert_policy, randn

import bnfused
from bnfused.op import cuda_emulated, reference, settings

emu = cuda_emulated.extension()
ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(emu is None, reason="bnfused._C_emulated is not built")


@pytest.fixture
def emulator():
    """The emulator, its settings restored after the test."""
    before = emu.settings()
    yield emu
    emu.configure(**before)


# --------------------------------------------------------------------------- planted bugs

# Each planted bug, and how the emulator reports it: an error message, or
# (for bugs that compute silently wrong values) a check of the results.
FAULTS = {
    "divergent_shuffle": "lanes 16,.*,31 of the mask exited without joining it",
    "divergent_barrier": r"__syncthreads at .* reached by 128 of 256 threads",
    "deadlock": "deadlock: .* wait at __syncthreads instead",
    "out_of_bounds_store": "out-of-bounds write .* after 'y'",
    "shared_overrun": "write past the end of a __shared__ variable",
    "block_too_large": "invalid configuration argument",
    "grid_y_too_large": "invalid configuration argument",
    "skipped_grid_sync": "deadlock: the block finished while other blocks wait at the grid sync",
    "divergent_grid_sync": "grid sync at .* reached by 128 of the block's 256 threads; the others exited",
    "grid_sync_without_cooperative_launch": "grid sync at .* in a kernel not launched cooperatively",
    "cooperative_grid_too_large": "too many blocks in cooperative launch",
}
# What the fixed twins compute.
FIXED = {
    "missing_barrier": [256 * 257 / 2],
    "divergent_shuffle": [32 * 33 / 2],
    "divergent_barrier": [1.0],
    "deadlock": [2.0],
    "counter_not_reset": [2 * 8186.0],
    "out_of_bounds_store": [3000.0],
    "shared_overrun": [1.0],
    "block_too_large": [1.0],
    "grid_y_too_large": [1.0],
    "missing_grid_sync": [6 * 7 / 2],
    "skipped_grid_sync": [1.0],
    "divergent_grid_sync": [1.0],
    "grid_sync_without_cooperative_launch": [1.0],
    "cooperative_grid_too_large": [1.0],
}


def test_every_planted_bug_is_covered():
    assert sorted(emu.planted_names()) == sorted(FIXED)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_raises(name):
    with pytest.raises(RuntimeError, match=FAULTS[name]):
        emu.run_planted(name)


@pytest.mark.parametrize("name", ["divergent_barrier", "divergent_grid_sync"])
def test_fault_names_the_kernel_line(name):
    """A barrier's site is the kernel's call, not the emulation header (bnfemu::SourceSite
    takes the caller's file and line in C++17, where std::source_location is missing)."""
    with pytest.raises(RuntimeError) as info:
        emu.run_planted(name)
    site = re.search(r"at (\S+):(\d+) ", str(info.value))
    assert site and site.group(1).endswith("planted_bugs.cpp"), str(info.value)
    source = pathlib.Path(site.group(1))
    if not source.is_absolute():
        source = ROOT / source
    line = source.read_text().splitlines()[int(site.group(2)) - 1]
    assert "__syncthreads" in line or "grid_sync" in line, line


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_twin_computes_the_right_value(name):
    got = emu.run_planted(name, True)
    if name == "counter_not_reset":
        assert got[0] == got[1] == pytest.approx(FIXED[name][0] / 2)
    else:
        assert got == FIXED[name]


def test_missing_barrier_reads_poisoned_shared_memory():
    """Thread 0 reads the other threads' slots before they ran: 0xFF bytes, a NaN sum."""
    (got,) = emu.run_planted("missing_barrier")
    assert got != got  # NaN


def test_counter_not_reset_breaks_the_second_launch():
    """The first launch is right; the second never finalizes and leaves its poisoned output."""
    first, second = emu.run_planted("counter_not_reset")
    assert first == pytest.approx(8186.0)
    assert second != second


def test_missing_grid_sync_reads_unwritten_partials(emulator):
    """A block runs until it ends or waits at a grid sync: without the sync, block 0 (first
    in forward order) sums partials the other blocks have not written, poisoned NaN."""
    emulator.configure(block_order="forward")
    (got,) = emu.run_planted("missing_grid_sync")
    assert got != got
    assert emu.run_planted("missing_grid_sync", True) == [21.0]


def test_cooperative_limit_follows_the_reported_occupancy(emulator):
    """The largest cooperative grid is blocks_per_sm x SMs, as the occupancy API reports."""
    emulator.configure(sm_count=3, blocks_per_sm=1)
    assert emu.run_planted("cooperative_grid_too_large", True) == [1.0]
    with pytest.raises(RuntimeError, match="too many blocks in cooperative launch"):
        emu.run_planted("cooperative_grid_too_large")


def test_unknown_planted_kernel():
    with pytest.raises(ValueError, match="unknown planted kernel"):
        emu.run_planted("nothing")


# --------------------------------------------------------------------------- settings


def test_configure_validates_and_returns_previous(emulator):
    before = emulator.settings()
    previous = emulator.configure(sm_count=7, block_order="shuffled", seed=11)
    assert previous == before
    assert emulator.settings()["sm_count"] == 7
    assert emulator.settings()["block_order"] == "shuffled"
    with pytest.raises(ValueError, match="sm_count"):
        emulator.configure(sm_count=0)
    with pytest.raises(ValueError, match="block_order"):
        emulator.configure(block_order="sideways")
    assert emulator.settings()["sm_count"] == 7


def test_environment_settings_are_validated(monkeypatch):
    monkeypatch.setenv("BNFUSED_EMULATED_SMS", "x")
    with pytest.raises(ValueError, match="BNFUSED_EMULATED_SMS"):
        settings.emulated_device()
    monkeypatch.setenv("BNFUSED_EMULATED_SMS", "7")
    monkeypatch.setenv("BNFUSED_EMULATED_BLOCK_ORDER", "sideways")
    with pytest.raises(ValueError, match="BNFUSED_EMULATED_BLOCK_ORDER"):
        settings.emulated_device()
    monkeypatch.setenv("BNFUSED_EMULATED_BLOCK_ORDER", "reversed")
    monkeypatch.setenv("BNFUSED_EMULATED_SEED", "3")
    assert settings.emulated_device() == {"sm_count": 7, "block_order": "reversed", "seed": 3}
    monkeypatch.setenv("BNFUSED_EMULATED_REPLAYS", "-1")
    with pytest.raises(ValueError, match="BNFUSED_EMULATED_REPLAYS"):
        settings.emulated_device()


# --------------------------------------------------------------------------- graph replays


@pytest.mark.parametrize("path", ["two-pass", "persistent"])
@pytest.mark.parametrize(
    "shape,channels_last", [((6, 5, 7, 9), False), ((4, 24, 5, 5), True), ((300, 3), False)]
)
@pytest.mark.parametrize("activation,residual", [(0, False), (1, True), (3, True)])
def test_graph_replays_reproduce_the_first_launch(
    emulator, path, shape, channels_last, activation, residual
):
    """A captured CUDA graph replays its launches on the same buffers: the workspace keeps
    what the last launch left (no zero-filled fresh one per call, as in eager mode) and the
    outputs what they held. Each op here runs three times so, and every replay must give
    the first launch's bits (a counter or partial sum not reset by the kernels that used
    it breaks the second). Multi-block reductions: 7 SMs, 1 block each."""
    emulator.configure(sm_count=7, blocks_per_sm=1, cuda_path=path, replays=2)
    x = randn(*shape, channels_last=channels_last)
    r = randn(*shape, channels_last=channels_last) if residual else None
    w, b = randn(shape[1]), randn(shape[1])
    rm, rv = randn(shape[1]), randn(shape[1]).abs() + 0.5
    with bnfused.use_backend("cuda-emulated"):
        y, mean, invstd, mask, lo = torch.ops.bnfused.forward(
            x, w, b, rm, rv, r, True, 0.1, 1e-5, activation, 0.0
        )
        grads = torch.ops.bnfused.backward(
            randn(*shape, channels_last=channels_last),
            x,
            w,
            b,
            mean,
            invstd,
            mask,
            r,
            True,
            1e-5,
            activation,
            0.0,
            [True, True, True, residual],
            lo,
        )
    # The replays checked themselves; the results are still the oracle's.
    want = reference.forward(x, w, b, None, None, r, True, 0.1, 1e-5, activation, 0.0)[0]
    torch.testing.assert_close(y, want.to(y.dtype), rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(g).all() for g in grads if g.numel())


# --------------------------------------------------------------------------- conversions


def _convert(kind, t):
    return torch.frombuffer(
        bytearray(emu.convert(kind, t.numpy().tobytes())),
        dtype=torch.float32 if kind.endswith("2float") else torch.int16,
    )


@pytest.mark.parametrize(
    "dtype,to,back",
    [
        (torch.float16, "float2half_rn", "half2float"),
        (torch.bfloat16, "float2bfloat16_rn", "bfloat162float"),
    ],
)
def test_half_conversions_are_bit_exact(dtype, to, back):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    as_float = bits.view(dtype).float()
    got = _convert(back, bits)
    finite = ~torch.isnan(as_float)
    assert torch.equal(got[finite], as_float[finite])
    assert torch.isnan(got[~finite]).all()
    # Rounding: random floats over the whole range, ties, subnormals, overflow.
    x = torch.cat(
        [
            torch.randn(200000) * 10.0 ** torch.randint(-9, 6, (200000,)).float(),
            as_float[finite],
            (as_float[finite].double() * (1 + 2.0**-11)).float(),
            (as_float[finite].double() * (1 + 2.0**-8)).float(),
            torch.tensor(
                [
                    65504.0,
                    65519.99,
                    65520.0,
                    1e30,
                    -1e30,
                    0.0,
                    -0.0,
                    2.0**-25,
                    2.0**-24 * 1.5,
                    2.0**-26,
                    float("inf"),
                ]
            ),
        ]
    )
    want = x.to(dtype).view(torch.int16)
    assert torch.equal(_convert(to, x), want)
    assert _convert(to, torch.tensor([float("nan")])).item() == 0x7FFF


# --------------------------------------------------------------------------- plans and orders

# Shapes whose reductions split over several blocks at some SM counts (NCS and NSC).
PLAN_SHAPES = [
    ((8, 3, 40, 40), False),
    ((64, 24, 6, 6), True),
    ((4096, 10), False),
    ((2, 5, 999), False),
]


def _run(x, res, dy, act=1):
    C = x.shape[1]
    w = torch.linspace(0.5, 1.5, C)
    b = torch.linspace(-0.3, 0.3, C)
    rm, rv = torch.zeros(C), torch.ones(C)
    y, mean, invstd, mask, _ = cuda_emulated.forward(
        x, w, b, rm, rv, res, True, 0.1, 1e-5, act, 0.0
    )
    grads = cuda_emulated.backward(
        dy, x, w, b, mean, invstd, mask, res, True, 1e-5, act, 0.0, [True] * 4
    )
    return (y, mean, invstd, mask, rm, rv) + tuple(grads)


@pytest.mark.parametrize("shape,nsc", PLAN_SHAPES, ids=str)
def test_sm_counts_and_block_orders(emulator, shape, nsc):
    """Each SM count's plan matches the oracle; block order never changes a bit."""
    fmt = torch.channels_last if nsc else torch.contiguous_format
    x = (torch.randn(shape) * 3 + 2).contiguous(memory_format=fmt)
    res = torch.randn(shape).contiguous(memory_format=fmt)
    dy = torch.randn(shape).contiguous(memory_format=fmt)
    C = shape[1]
    w, b = torch.linspace(0.5, 1.5, C), torch.linspace(-0.3, 0.3, C)
    y_or, _, _, _, _ = reference.forward(
        x.double(),
        w.double(),
        b.double(),
        torch.zeros(C).double(),
        torch.ones(C).double(),
        res.double(),
        True,
        0.1,
        1e-5,
        1,
        0.0,
    )
    y_torch = torch.relu(
        torch.nn.functional.batch_norm(x, torch.zeros(C), torch.ones(C), w, b, True, 0.1, 1e-5)
        + res
    )
    emulator.configure(count_traffic=True)
    grids = set()
    for sms in (1, 7, 132, 1000):
        first = None
        for order in ("forward", "reversed", "shuffled"):
            emulator.configure(sm_count=sms, block_order=order, seed=sms)
            out = _run(x, res, dy)
            grids.add(tuple(r["grid"] for r in emulator.traffic()))
            if first is None:
                first = out
                assert_policy(f"y at {sms} SMs", out[0], y_torch, y_or, torch.float32)
                continue
            for a, b in zip(first, out):
                assert torch.equal(a, b), f"results differ at sm_count={sms}, order={order}"
    assert len(grids) > 1, "the SM count should change the launch plans"
