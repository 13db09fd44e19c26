"""``python -m bnfused``: the environment report for bug reports."""

import os
import subprocess
import sys

import pytest
import torch

import bnfused
from bnfused.op import backend
from bnfused.tools import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_module_prints_report():
    run = subprocess.run(
        [sys.executable, "-m", "bnfused"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert torch.__version__ in out
    assert bnfused.__version__ in out
    for name in bnfused.backends():
        assert f"  {name} " in out, name
    for label in (
        "triton:",
        "CUDA (torch):",
        "Python:",
        "CPU:",
        "git commit:",
        "CPU instruction set:",
        "CUDA archs compiled:",
        "CUDA device:",
        "environment variables:",
    ):
        assert label in out, label


@pytest.fixture
def fresh_availability():
    backend._availability.cache_clear()
    yield
    backend._availability.cache_clear()


def test_report_without_extension(monkeypatch, fresh_availability):
    why = "compiled extension not built or not loadable (test)"
    monkeypatch.setattr(backend, "_compiled", lambda: (None, why))
    report = environment.environment_report()
    assert torch.__version__ in report
    for name in backend.NAMES:
        assert f"  {name} " in report, name
    width = max(len(name) for name in backend.NAMES)
    assert f"  {'cpu':<{width}}  no   {why}" in report
    assert f"CPU instruction set:    none: {why}" in report
    assert f"CUDA archs compiled:    unknown: {why}" in report


def test_report_survives_failing_items(monkeypatch, fresh_availability):
    def broken():
        raise OSError("boom")

    monkeypatch.setattr(environment, "_find_cuobjdump", lambda: None)
    monkeypatch.setattr(environment, "_cuda_device", broken)
    monkeypatch.setattr(backend, "backends", broken)
    report = environment.environment_report()
    assert "CUDA device:            unknown (OSError: boom)" in report
    assert "backends (available, reason):\n  unknown (OSError: boom)" in report
    assert "CUDA archs compiled:" in report


def test_cuda_archs_read_without_cuobjdump(monkeypatch):
    mod, _ = backend._compiled()
    if mod is None or not backend._has_kernel("CUDA"):
        pytest.skip("the extension has no CUDA kernels")
    monkeypatch.setattr(environment, "_find_cuobjdump", lambda: None)
    line = environment._cuda_archs()
    assert "fatbinary headers" in line and "sm_" in line, line
