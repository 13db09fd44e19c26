"""The op contract is written once (bnfused/op/contract.py): every other copy must agree with it."""

import pathlib
import re

import pytest
import torch

import bnfused
from bnfused.op import contract

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _unqualified(schema) -> str:
    return str(schema).split("::", 1)[1]


def test_registered_ops_use_the_contract_schemas():
    assert (
        _unqualified(torch.ops.bnfused.forward.default._schema)
        == str(torch._C.parse_schema("bnfused::" + contract.FORWARD_SCHEMA)).split("::", 1)[1]
    )
    assert (
        _unqualified(torch.ops.bnfused.backward.default._schema)
        == str(torch._C.parse_schema("bnfused::" + contract.BACKWARD_SCHEMA)).split("::", 1)[1]
    )


def test_compiled_ops_declare_the_same_schemas():
    pytest.importorskip("bnfused._C", reason="compiled extension not built")
    for op in ("forward", "backward"):
        ours = getattr(torch.ops.bnfused, op).default._schema
        compiled = getattr(torch.ops.bnfused_C, op).default._schema
        assert _unqualified(compiled) == _unqualified(ours), op


def test_cpp_schema_strings_match_the_contract():
    """Read from the C++ source, so a drift fails even where the extension is not built."""
    text = (ROOT / "csrc" / "register.cpp").read_text()
    defs = re.findall(r'm\.def\(\s*((?:"[^"]*"\s*)+)\)', text)
    declared = ["".join(re.findall(r'"([^"]*)"', d)) for d in defs]
    assert declared == [contract.FORWARD_SCHEMA, contract.BACKWARD_SCHEMA]


def test_cpp_activation_enum_matches_the_codes():
    text = (ROOT / "csrc" / "bnfused.h").read_text()
    enum = re.search(r"enum class Activation : int \{([^}]*)\}", text).group(1)
    cpp = {name: int(value) for name, value in re.findall(r"k(\w+) = (\d+)", enum)}
    assert cpp == {
        "Identity": contract.IDENTITY,
        "Relu": contract.RELU,
        "LeakyRelu": contract.LEAKY_RELU,
        "Silu": contract.SILU,
    }
    assert sorted(contract.NAMES.values()) == [0, 1, 2, 3]


def test_mask_layout():
    # one bit per element, rounded up to whole 32-bit words
    assert [contract.mask_bytes(n) for n in (0, 1, 31, 32, 33, 64, 65)] == [0, 4, 4, 4, 8, 8, 12]
    assert not contract.uses_mask(contract.RELU, False)
    assert not contract.uses_mask(contract.SILU, True)
    assert not contract.uses_mask(contract.IDENTITY, True)
    assert contract.uses_mask(contract.RELU, True) and contract.uses_mask(contract.LEAKY_RELU, True)


def test_accumulation_dtypes():
    assert contract.acc_dtype(torch.float64) is torch.float64
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert contract.acc_dtype(dtype) is torch.float32


def test_layouts():
    x = torch.randn(2, 3, 4, 5)
    assert contract.memory_format(x) is torch.contiguous_format
    assert contract.memory_format(x.to(memory_format=torch.channels_last)) is torch.channels_last
    v = torch.randn(2, 3, 2, 4, 5).to(memory_format=torch.channels_last_3d)
    assert contract.memory_format(v) is torch.channels_last_3d
    strided = x[:, :, ::2]
    assert contract.canonical(strided).is_contiguous()
    assert torch.equal(contract.canonical(strided), strided)


@pytest.mark.parametrize(
    "path",
    [
        "bnfused.modules",
        "bnfused.convert",
        "bnfused.freeze",
        "bnfused.sync",
        "bnfused.functional",
        "bnfused.reference",
        "bnfused.backend",
        "bnfused.ops",
        "bnfused._activation",
    ],
)
def test_old_module_paths_still_import(path):
    import importlib

    module = importlib.import_module(path)
    assert module is not None and getattr(bnfused, path.split(".")[1]) is module


def test_layers_import_downwards_only():
    """op imports nothing above it; modules import nothing from tools."""
    package = ROOT / "bnfused"
    for layer, forbidden in (("op", ("modules", "tools")), ("modules", ("tools",))):
        for source in (package / layer).rglob("*.py"):
            text = source.read_text()
            for above in forbidden:
                assert not re.search(
                    rf"from \.+{above}\b|import bnfused\.{above}|bnfused\.{above}\.", text
                ), f"{source.relative_to(ROOT)} imports {above}"


def test_cuda_arch_list_and_what_it_runs_on():
    from bnfused.op.backend import archs_run_on, parse_arch_list

    assert parse_arch_list("8.0;9.0+PTX") == [(8, 0, False), (9, 0, True)]
    assert parse_arch_list("9.0 9.0a") == [(9, 0, False), (9, 0, False)]
    only_90 = parse_arch_list("9.0")
    assert archs_run_on(only_90, (9, 0))
    assert not archs_run_on(only_90, (8, 0)) and not archs_run_on(only_90, (10, 0))
    ampere = parse_arch_list("8.0")
    assert archs_run_on(ampere, (8, 6)) and not archs_run_on(ampere, (7, 5))
    ptx = parse_arch_list("9.0+PTX")
    assert archs_run_on(ptx, (10, 0)) and not archs_run_on(ptx, (8, 9))


def test_build_records_its_cuda_archs():
    from bnfused.op import backend

    if backend.compiled_extension() is None or not backend._has_kernel("CUDA"):
        pytest.skip("the extension has no CUDA kernels")
    archs = backend.compiled_cuda_archs()
    assert archs and all(isinstance(a, tuple) and len(a) == 3 for a in archs)
