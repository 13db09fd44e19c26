"""Memory traffic of the CUDA kernels, counted by the emulator: the passes the
design promises and fully coalesced vector paths. A change that adds a pass
over the activations, or breaks coalescing, fails here without a GPU.
"""

import pytest
import torch

from bnfused.op import cuda_emulated
from inspection.traffic import kernel_traffic, summarize

pytestmark = pytest.mark.skipif(
    cuda_emulated.extension() is None, reason="bnfused._C_emulated is not built"
)

# Aligned vector paths: fp32 planes of a multiple of 4 elements (NCHW), and
# rows of a multiple of 8 bf16 channels (channels_last).
ALIGNED = [
    ((8, 32, 16, 16), torch.float32, False),
    ((8, 64, 8, 8), torch.bfloat16, True),
    ((4, 32, 20, 20), torch.float16, True),
    ((16, 8, 12, 12), torch.float64, False),
]


def _bytes(r, kinds=("load", "store", "l2")):
    return sum(r[k]["bytes"] for k in kinds)


@pytest.mark.parametrize("sm_count", [7, 132])
@pytest.mark.parametrize("shape,dtype,nsc", ALIGNED, ids=str)
def test_bn_relu_moves_3S_forward_and_5S_backward(shape, dtype, nsc, sm_count):
    """Two-pass design: statistics read x; normalize reads x, writes y; the backward
    reduction reads dy and x; its elementwise pass reads dy and x and writes dx."""
    S = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    fwd = kernel_traffic(shape, dtype, nsc, "bn_relu", "train", sm_count)
    both = kernel_traffic(shape, dtype, nsc, "bn_relu", "fwd_bwd", sm_count)
    assert len(fwd) == 2 and len(both) == 4
    full = [_bytes(r, ("load", "store")) for r in both]
    assert full == [S, 2 * S, 2 * S, 3 * S]
    # Reduction partials (C-sized per split) stay a small fraction of S.
    assert sum(_bytes(r, ("l2",)) for r in both) < 0.1 * S


@pytest.mark.parametrize("sm_count", [16, 132])  # 16: the 32 channels of the first case fit
@pytest.mark.parametrize("shape,dtype,nsc", ALIGNED, ids=str)
def test_persistent_path_reads_x_once(shape, dtype, nsc, sm_count):
    """One cooperative kernel per pass: BN+ReLU forward reads x and writes y (2S),
    BN+add+ReLU also reads the residual (3S, plus its mask); the backward reads dy and x
    and writes dx (3S). What L2 serves stays small: the partial states (written and read
    once, C per split, a split holding at least 4 vectors per thread: under 10% at these
    small shapes) and the mask's atomics (a word per 32 elements, S/16 in 16 bits)."""
    S = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    relu = kernel_traffic(shape, dtype, nsc, "bn_relu", "fwd_bwd", sm_count, "persistent")
    assert [r["kernel"].split("<")[0].split("::")[-1] for r in relu] == [
        "ForwardResidentOp",
        "BackwardResidentOp",
    ]
    assert [_bytes(r, ("load", "store")) for r in relu] == [2 * S, 3 * S]
    add = kernel_traffic(shape, dtype, nsc, "bn_add_relu", "train", sm_count, "persistent")
    assert len(add) == 1
    mask_bytes = -(-torch.Size(shape).numel() // 32) * 4
    assert _bytes(add[0], ("load", "store")) == 3 * S + mask_bytes  # the mask zeroed once
    for r in relu + add:
        assert _bytes(r, ("l2",)) < (0.1 + 1 / 16) * S, r["kernel"]


@pytest.mark.parametrize("shape,dtype,nsc", ALIGNED, ids=str)
@pytest.mark.parametrize("op", ["bn", "bn_relu", "bn_add_relu"])
@pytest.mark.parametrize("path", ["two-pass", "persistent"])
def test_aligned_vector_paths_are_coalesced(shape, dtype, nsc, op, path):
    records = kernel_traffic(shape, dtype, nsc, op, "fwd_bwd", 132, path)
    for r in records:
        useful = _bytes(r, ("load", "store"))
        sectors = r["load"]["sectors"] + r["store"]["sectors"]
        assert useful / (32 * sectors) >= 0.95, (
            f"{r['kernel']}: sector efficiency {useful / (32 * sectors):.1%}"
        )


def test_summary_of_a_benchmark_case():
    shape, dtype = (8, 32, 16, 16), torch.float32
    s = summarize(
        kernel_traffic(shape, dtype, False, "bn_relu", "fwd_bwd", 132),
        shape,
        dtype,
        "bn_relu",
        "fwd_bwd",
        132,
    )
    assert 8.0 <= s["passes"] < 8.1
    assert s["sectors"] >= 0.99 and s["launches"] == 4
    assert s["blocks_per_sm"] > 0 and s["balance"] >= 1.0
