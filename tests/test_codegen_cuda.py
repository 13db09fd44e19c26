"""The CUDA kernels as nvcc built them for sm_90, read from the extension's cubins.

No spills; 128-bit global loads (and stores, for the elementwise passes) in
every 16-byte-vector instantiation, i.e. the path aligned input takes; and
registers and shared memory that let each kernel reside as many blocks per SM
as its launch plan sizes the grid for (csrc/cuda/device_common.cuh).
"""

import pytest

from inspection import codegen_cuda as cc
from inspection import codegen_inspect as ci

FAMILIES = {
    "forward_apply",
    "backward_apply",
    "reduce_ncs:StatsOp",
    "reduce_nsc:StatsOp",
    "reduce_ncs:GradSumOp",
    "reduce_nsc:GradSumOp",
    "persistent_ncs:ForwardResidentOp",
    "persistent_nsc:ForwardResidentOp",
    "persistent_ncs:BackwardResidentOp",
    "persistent_nsc:BackwardResidentOp",
}
DTYPES = {"float", "double", "__half", "__nv_bfloat16"}


@pytest.fixture(scope="module")
def kernels():
    path = cc.extension_path()
    if path is None:
        pytest.skip("bnfused._C is not built")
    found = cc.kernels(path)
    if not found:
        pytest.skip("bnfused._C was built without CUDA kernels (no toolkit at build time)")
    return found


def _name(k):
    return f"{k.name} ({k.resources})"


def test_every_kernel_family_dtype_and_path_is_in_the_cubins(kernels):
    seen = {(k.family, k.dtype, k.vector_path) for k in kernels}
    expected = {(f, d, v) for f in FAMILIES for d in DTYPES for v in (True, False)}
    assert expected <= seen, sorted(expected - seen)


def test_no_spills(kernels):
    spilled = [_name(k) for k in kernels if k.resources.spills or ci.local_memory_ops(k.sass) > 0]
    assert not spilled, "\n".join(spilled)


def test_vector_paths_load_and_store_128_bits(kernels):
    scalar = [
        f"{k.name}: LDG {ci.widths(k.sass, 'LDG')} STG {ci.widths(k.sass, 'STG')}"
        for k in kernels
        if k.vector_path and not k.vectorized
    ]
    assert not scalar, "\n".join(scalar)


def test_scalar_paths_have_no_vector_access(kernels):
    # The check above can fail: the unaligned instantiations have no 128-bit access at all.
    wide = [
        k.name
        for k in kernels
        if not k.vector_path
        and (ci.widths(k.sass, "LDG").get(128) or ci.widths(k.sass, "STG").get(128))
    ]
    assert not wide, wide
    assert not any(k.vectorized for k in kernels if not k.vector_path)


def test_registers_allow_the_blocks_per_sm_the_plans_assume(kernels):
    occ = cc.assumed_occupancy()
    short = []
    for k in kernels:
        need = cc.assumed_blocks(k, occ)
        have = cc.resident_blocks(k, occ["threads"])
        if have < need:
            short.append(
                f"{_name(k)}: {have} blocks of {occ['threads']} per SM, plan assumes {need}"
            )
    assert not short, "\n".join(short)


def test_assumed_occupancy_is_read_from_the_sources():
    occ = cc.assumed_occupancy()
    assert occ["threads"] == 256
    assert min(occ[f] for f in ("forward_apply", "backward_apply", "reduce", "persistent")) >= 1
