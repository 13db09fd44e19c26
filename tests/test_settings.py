"""Environment variables are validated: a typo is an error listing the valid values."""

import os
import subprocess
import sys

import pytest

from bnfused.op import settings


@pytest.mark.parametrize(
    "name,value,valid",
    [
        ("BNFUSED_CPU_ISA", "avx-2", "avx512_bf16, avx512, avx2, baseline"),
        ("BNFUSED_CPU_HUGE_PAGES", "no", "0, 1"),
        ("BNFUSED_CPU_STREAM_BYTES", "1e6", "integer >= 0"),
    ],
)
def test_bad_value_names_the_valid_ones(monkeypatch, name, value, valid):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}='{value}' is not .*{valid}"):
        settings.check_cpu_kernel_settings()


def test_good_values(monkeypatch):
    for isa in settings.CPU_ISAS:
        monkeypatch.setenv("BNFUSED_CPU_ISA", isa)
        assert settings.cpu_isa() == isa
    monkeypatch.setenv("BNFUSED_CPU_STREAM_BYTES", "0")
    monkeypatch.setenv("BNFUSED_CPU_HUGE_PAGES", "0")
    assert settings.cpu_stream_bytes() == 0 and settings.cpu_huge_pages() is False
    for name in ("BNFUSED_CPU_ISA", "BNFUSED_CPU_STREAM_BYTES", "BNFUSED_CPU_HUGE_PAGES"):
        monkeypatch.delenv(name)
    assert settings.cpu_isa() is None and settings.cpu_stream_bytes() is None
    assert settings.cpu_huge_pages() is True


def test_a_typo_stops_the_first_call_not_a_silent_other_kernel():
    code = "import torch, bnfused; bnfused.BatchNorm2d(3)(torch.randn(2, 3, 4, 4))"
    env = dict(os.environ, BNFUSED_CPU_ISA="avx-2")
    env.pop("BNFUSED_BACKEND", None)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "ValueError: BNFUSED_CPU_ISA='avx-2' is not one of avx512_bf16" in run.stderr


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, **env)
    full.pop("BNFUSED_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120
    )


def test_settings_reach_the_kernels_from_python_only():
    """BNFUSED_CPU_ISA is applied by Python (compiled_extension), never read by the C++ code."""
    pytest.importorskip("bnfused._C", reason="compiled extension not built")
    through_python = (
        "import torch, bnfused; from bnfused.op.backend import compiled_extension;"
        "bnfused.BatchNorm2d(3)(torch.randn(2, 3, 4, 4));"
        "print(compiled_extension().cpu_kernel_isa())"
    )
    run = _run(through_python, BNFUSED_CPU_ISA="baseline")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "baseline"
    # the extension used directly, told nothing: the environment variable does not leak in
    direct = "import bnfused._C as C; C.configure_cpu(3, -1, True); print(C.cpu_kernel_isa())"
    run = _run(direct, BNFUSED_CPU_ISA="baseline")
    assert run.returncode == 0, run.stderr
    cpu_flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2 " in cpu_flags:
        assert run.stdout.strip() != "baseline"


def test_settings_cannot_change_after_the_first_op():
    pytest.importorskip("bnfused._C", reason="compiled extension not built")
    code = (
        "import torch, bnfused; from bnfused.op.backend import compiled_extension;"
        "bnfused.BatchNorm2d(3)(torch.randn(2, 3, 4, 4)); C = compiled_extension();"
        "C.configure_cpu(*__import__('bnfused').op.settings.cpu_kernel_settings());"
        "C.configure_cpu(0, 0, False)"
    )
    run = _run(code)
    assert run.returncode != 0
    assert (
        "ValueError: bnfused: the CPU kernel settings cannot change after the first op"
        in run.stderr
    )
    bad = _run("import bnfused._C as C; C.configure_cpu(7, -1, True)")
    assert "ValueError: bnfused: isa_cap must be 0..3" in bad.stderr


def test_kernel_settings_tuple(monkeypatch):
    for name in ("BNFUSED_CPU_ISA", "BNFUSED_CPU_STREAM_BYTES", "BNFUSED_CPU_HUGE_PAGES"):
        monkeypatch.delenv(name, raising=False)
    assert settings.cpu_kernel_settings() == (3, -1, True)
    monkeypatch.setenv("BNFUSED_CPU_ISA", "avx2")
    monkeypatch.setenv("BNFUSED_CPU_STREAM_BYTES", "4096")
    monkeypatch.setenv("BNFUSED_CPU_HUGE_PAGES", "0")
    assert settings.cpu_kernel_settings() == (1, 4096, False)
    monkeypatch.setenv("BNFUSED_CPU_ISA", "baseline")
    assert settings.cpu_kernel_settings()[0] == 0
