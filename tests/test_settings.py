"""Environment variables are validated: a typo is an error listing the valid values."""
import os
import subprocess
import sys

import pytest

from bnfused import settings


@pytest.mark.parametrize("name,value,valid", [
    ("BNFUSED_CPU_ISA", "avx-2", "avx512_bf16, avx512, avx2, baseline"),
    ("BNFUSED_CPU_HUGE_PAGES", "no", "0, 1"),
    ("BNFUSED_CPU_STREAM_BYTES", "1e6", "integer >= 0"),
])
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
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert "ValueError: BNFUSED_CPU_ISA='avx-2' is not one of avx512_bf16" in run.stderr
