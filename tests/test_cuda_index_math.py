"""The CUDA kernels' launch plans and index functions at sizes past 2^31 elements,
evaluated on the host by the emulated build (no tensor is allocated, no GPU needed).

The 64-bit paths are the ones a 2^31-element tensor takes on a GPU: the integer
dividers must leave their 32-bit multiply-high path once a dividend can reach
2^31 (vectors of 8 bf16 keep it up to 2^34 elements), the plans must cover every
element with grid sizes the runtime accepts, and the element offsets and channels
the kernels compute must equal the exact ones (Python integers).
"""

import random

import pytest

from bnfused.op import cuda_emulated

emu = cuda_emulated.extension()
pytestmark = pytest.mark.skipif(emu is None, reason="bnfused._C_emulated is not built")

TWO_31 = 1 << 31
# (N, C, S, nsc, vec): NCHW planes and channels_last rows past 2^31 elements in all, with
# a plane, a channel or the rows alone past 2^31 in some.
SHAPES = [
    (4, 3, (1 << 30) + 8, False, 8),
    (2, 64, 1 << 25, False, 4),
    (1, 2, TWO_31 + 6, False, 2),
    (1, 1, TWO_31 + 1, False, 1),
    (1 << 24, 256, 1, True, 8),
    (3, 8, (1 << 29) + 5, True, 8),
    (1 << 20, 2049, 1, True, 1),
]


@pytest.mark.parametrize("N,C,S,nsc,vec", SHAPES, ids=str)
def test_plans_cover_every_element_within_launch_limits(N, C, S, nsc, vec):
    p = emu.probe_plans(N, C, S, nsc, vec)
    numel = N * C * S
    assert numel > TWO_31 and p["nsc"] == (nsc or S == 1)
    assert p["apply_vecs"] * vec == numel
    # The dividers take the 32-bit multiply-high path only when every dividend (a vector
    # index or a plane index) is below 2^31.
    assert p["channel_div_fast"] == (p["apply_vecs"] < TWO_31)
    if not p["apply_nsc_vec"]:  # channels_last vectors need no plane divider
        assert p["inner_div_fast"] == (p["apply_vecs"] < TWO_31)
    assert 1 <= p["apply_blocks"] <= 2**31 - 1
    assert 1 <= p["splits"] <= 512  # grid.y
    if p["nsc"]:
        assert p["rows"] == N * S and p["row_vecs"] * vec == C
        assert p["tiles"] * 32 >= p["row_vecs"] and p["lanes"] >= 1
        assert (p["splits"] - 1) * p["chunk"] < p["rows"] <= p["splits"] * p["chunk"]
    else:
        assert p["plane_vecs"] * vec == S and p["channel_vecs"] == N * S // vec
        assert (p["splits"] - 1) * p["chunk"] < p["channel_vecs"] <= p["splits"] * p["chunk"]
        assert p["plane_div_fast"] == (p["channel_vecs"] < TWO_31)


def _points(rng, count, last):
    return sorted(
        {0, 1, last}
        | {rng.randrange(last + 1) for _ in range(count)}
        | {min(last, TWO_31 // k + d) for k in (1, 2, 4, 8) for d in (-1, 0, 1)}
    )


@pytest.mark.parametrize("N,C,S,nsc,vec", [s for s in SHAPES if not s[3] and s[2] > 1], ids=str)
def test_reduction_offsets_are_exact(N, C, S, nsc, vec):
    rng = random.Random(0)
    plane_vecs = S // vec
    channel_vecs = N * plane_vecs
    cj = [
        (c, j)
        for c in sorted({0, C - 1, rng.randrange(C)})
        for j in _points(rng, 40, channel_vecs - 1)
    ]
    got = emu.probe_ncs_offsets(N, C, S, False, vec, cj)
    want = [((j // plane_vecs * C + c) * plane_vecs + j % plane_vecs) * vec for c, j in cj]
    assert got == want
    assert max(got) + vec <= N * C * S


@pytest.mark.parametrize("N,C,S,nsc,vec", SHAPES, ids=str)
def test_elementwise_channels_are_exact(N, C, S, nsc, vec):
    rng = random.Random(1)
    numel = N * C * S
    vs = _points(rng, 60, numel // vec - 1)
    got = emu.probe_vector_channels(N, C, S, nsc, vec, vs)
    if nsc or S == 1:
        want = [v * vec % C for v in vs]
    else:
        want = [v * vec // S % C for v in vs]
    assert got == want
