"""The Triton kernels as the GPU compiler builds them, checked without a GPU.

Every specialization the launcher reaches is enumerated from the launcher
itself (inspection/codegen_triton.py); the pairwise cover of them is compiled
ahead of time for sm_90 and sm_80 in a fresh Triton cache. A kernel that does
not compile, spills, or loads/stores a whole tensor with scalar instructions on
aligned input fails here.
"""

import os

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip(
        "ahead-of-time compilation is checked without the interpreter", allow_module_level=True
    )

from triton.runtime.jit import JITFunction

from inspection import codegen_inspect as ci
from inspection import codegen_triton as ct
from inspection import codegen_triton_compile as ctc

ok, why = ct.supported()
if not ok:
    pytest.fail(why, pytrace=False)


@pytest.fixture(scope="module")
def reachable():
    return ct.reachable()


@pytest.fixture(scope="module")
def cover(reachable):
    return ct.covering(reachable)


@pytest.fixture(scope="module")
def compiled(cover):
    return ctc.compile_all(cover, ct.ARCHS)


def _package_kernels():
    from bnfused.op.triton import _backward, _forward

    return {
        v.fn.__name__
        for m in (_forward, _backward)
        for v in vars(m).values()
        if isinstance(v, JITFunction) and v.fn.__name__.endswith("_kernel")
    }


def test_every_kernel_of_the_package_is_reached(reachable):
    assert {s.name for s in reachable} == _package_kernels()


def test_the_domain_reaches_each_launcher_choice(reachable):
    seen = {}
    for s in reachable:
        for k, v in s.kwargs.items():
            seen.setdefault((s.name, k), set()).add(str(v))
    assert seen[("_bn_normalize_kernel", "ACTIVATION")] == {"0", "1", "2", "3"}
    assert seen[("_bn_backward_elementwise_kernel", "INDEX_64")] == {"True", "False"}
    assert len(seen[("_bn_stats_partial_kernel", "BLOCK_R")]) == 12  # 1 .. 2048
    assert len(seen[("_bn_backward_reduce_kernel", "BLOCK_C")]) >= 7  # 1 .. 64 at least
    assert any(s.aligned for s in reachable) and not all(s.aligned for s in reachable)


def test_cover_keeps_every_value_and_every_pair(reachable, cover):
    needed = set().union(*(ct._requirements(s) for s in reachable))
    kept = set().union(*(ct._requirements(s) for s in cover))
    assert needed == kept
    assert len(cover) < len(reachable)


def test_every_specialization_compiles_for_sm90_and_sm80(cover, compiled):
    done, failures = compiled
    report = [
        f"{s.name} [{s.label()}] sm_{arch}: {err.splitlines()[-1] if err else ''}"
        for s, arch, err in failures
    ]
    assert not failures, "Triton could not compile:\n" + "\n".join(report)
    assert len(done) == len(cover) * len(ct.ARCHS)


def test_no_spills(compiled):
    spilled = [
        f"{c.spec.name} [{c.spec.label()}] sm_{c.arch}: {c.resources}, {c.local_ops} local accesses"
        for c in compiled[0]
        if c.spills
    ]
    assert not spilled, "\n".join(spilled)


def test_whole_tensor_accesses_are_128_bit_on_aligned_input(compiled):
    aligned = [c for c in compiled[0] if c.spec.aligned]
    assert {c.spec.name for c in aligned} >= {
        "_bn_stats_partial_kernel",
        "_bn_normalize_kernel",
        "_bn_backward_reduce_kernel",
        "_bn_backward_elementwise_kernel",
    }
    scalar = [
        f"{c.spec.name} [{c.spec.label()}] sm_{c.arch}: loads {c.streaming_loads} "
        f"stores {c.streaming_stores}"
        for c in aligned
        if not c.vectorized
    ]
    assert not scalar, "scalar global accesses on aligned input:\n" + "\n".join(scalar)
    # Each bulk kernel moves its tensors with 128-bit accesses at all, not only "mostly".
    for c in aligned:
        if c.spec.name.endswith(
            ("_partial_kernel", "_normalize_kernel", "_reduce_kernel", "_elementwise_kernel")
        ):
            moved = [w for w in c.streaming_loads.values() if w]
            assert moved and all(w.get(ci.VECTOR_BITS) for w in moved), (c.spec.label(), moved)
