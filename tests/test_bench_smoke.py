"""Smoke test of the benchmark harness: rows, CSV, report and bytes model are well formed.

No timing assertions: the measurement core runs on tiny shapes with one or two samples.
"""
import csv
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnfused  # noqa: E402
from benchmarks import cases, e2e, environment, memory, report  # noqa: E402
from benchmarks.runner import RunOptions, run_all  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def reference_backend():
    """The harness is under test, not a backend: CPU tensors, the reference backend,
    whatever BNFUSED_BACKEND the suite runs with."""
    with bnfused.use_backend("reference"):
        yield


def test_bytes_moved_known_shape():
    # (2, 3, 4, 5) fp32: 120 elements = 480 bytes per full tensor, 12 bytes per fp32 vector.
    act, vec = 480, 12
    assert cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn", "eval") == 2 * act + 4 * vec
    assert cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn_relu", "train") == \
        2 * act + 8 * vec
    # fwd_bwd with residual: forward x, r, y; backward dy, x, dx, dr; 1-bit mask twice (15 B).
    assert cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn_add_relu", "fwd_bwd") == \
        3 * act + 8 * vec + 4 * act + 5 * vec + 2 * 15
    # bf16 halves the activations, not the fp32 vectors.
    assert cases.bytes_moved((2, 3, 4, 5), torch.bfloat16, "bn", "eval") == act + 4 * vec
    with pytest.raises(ValueError):
        cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn", "backward")


def test_plan_orders_and_filters():
    full = cases.plan("cuda", quick=False)
    assert full[0].dtype == "bf16" and full[0].layout == "channels_last"
    assert {c.op for c in full} == set(cases.OPS)
    assert all(c.layout == "nchw" for c in full if len(c.shape) == 3)
    assert len(set(full)) == len(full)
    picked = cases.plan("cpu", quick=True, shapes=[(2, 3, 4, 5)], dtypes=["bf16"], ops=["bn"])
    assert picked == [cases.Case((2, 3, 4, 5), "bf16", "nchw", "bn")]


@pytest.fixture(scope="module")
def run():
    chosen = [cases.Case((2, 6, 3, 5), "fp32", "nchw", "bn_add_relu"),
              cases.Case((3, 4, 7), "bf16", "nchw", "bn_relu")]
    options = RunOptions(warmup=1, reps=2, with_compile=False, cpu_sample_s=0.0)
    return chosen, run_all(chosen, CPU, ["reference"], options, show_progress=False)


def test_rows_are_complete(run):
    chosen, result = run
    assert [(r.case, r.mode) for r in result.rows] == [(c, m) for c in chosen
                                                       for m in cases.MODES]
    for row in result.rows:
        assert not row.errors, row.errors
        assert set(row.median_s) == {"eager", "reference"}
        assert all(t > 0 for t in row.median_s.values())
        assert row.samples == {"eager": 2, "reference": 2}
        assert row.bytes == cases.bytes_moved(row.case.shape, row.case.torch_dtype, row.case.op,
                                              row.mode)
        assert row.speedup("eager", "eager") == pytest.approx(1.0)


def test_csv_and_report(run, tmp_path):
    _, result = run
    meta = environment.describe(CPU, torch.get_num_threads())
    copy_bps = 1e10
    path = tmp_path / "r.csv"
    report.write_csv(str(path), result.rows, meta, copy_bps)
    with open(path) as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * len(result.rows)
    assert set(lines[0]) == set(report.CSV_FIELDS)
    for line in lines:
        gbps = int(line["bytes"]) / (float(line["median_ms"]) / 1e3) / 1e9
        assert float(line["gbps"]) == pytest.approx(gbps, rel=0.01, abs=0.01)
        assert line["speedup_vs_compile"] == ""
    text = report.markdown(meta, result, copy_bps, "--quick", None, "", [], None)
    head = text.split("## Summary")[0]
    for key in ("device", "torch", "commit", "date", "triton"):
        assert f"**{key}**: {meta[key]}" in head
    assert meta["commit"] and meta["torch"] == torch.__version__
    assert "## fwd_bwd" in text and "bn_add_relu" in text
    table = report.text_table(report.table_header(["eager", "reference"]),
                              [report.row_cells(r, ["eager", "reference"], copy_bps)
                               for r in result.rows])
    assert len(table.splitlines()) == 2 + len(result.rows)
    skipped = report.write_plot(str(tmp_path / "r.png"), result.rows, "smoke")
    assert skipped is not None or (tmp_path / "r.png").stat().st_size > 0


def test_memory_counts_saved_tensors():
    result = memory.measure_memory(CPU, (2, 4, 3, 3), layers=2)
    # eager keeps at least each BN input (2 x 288 bytes) for backward.
    assert result.saved["eager"] >= 2 * 2 * 4 * 3 * 3 * 4
    assert result.saved["bnfused"] > 0 and result.peak["bnfused"] is None
    assert len(memory.memory_lines(result)) == 1


def test_e2e_step_runs():
    result = e2e.measure_e2e(CPU, "resnet10", batch=2, resolution=32, warmup=1, reps=1)
    assert result.images_per_s["stock"] > 0
    assert e2e.e2e_lines(result)[0].startswith("- resnet10")


def test_cpu_kernel_bench_runs_on_tiny_shapes():
    """bench_cpu.py end to end on tiny shapes: one row per case and the geomean summary."""
    pytest.importorskip("bnfused._C")
    import subprocess
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "bench_cpu.py")
    out = subprocess.run([sys.executable, script, "--shapes", "2x8x4x4,3x16x5x5", "--reps", "1",
                          "--threads", "1", "--ops", "bn,bn+add+relu"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "malloc keeps freed memory" in out
    rows = [line for line in out.splitlines() if "x " in line and ("NCHW" in line or "NHWC" in line)]
    assert len(rows) == 2 * 2 * 2 * 3  # shapes x layouts x ops x modes
    assert "bn+add+relu   fwd+bwd:" in out


def test_cpu_profile_share_parses_a_report():
    """cpu_profile_share.py: the inner workload runs, and phases are read from perf's report."""
    pytest.importorskip("bnfused._C")
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "cpu_profile_share.py")
    subprocess.run([sys.executable, script, "--inner", "2x16x4x4", "--channels-last",
                    "--iters", "3", "--threads", "1"], timeout=300, check=True)
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    try:
        import cpu_profile_share
    finally:
        sys.path.pop(0)
    report = ("    12.50%  python  _C.so  [.] void bnfused::cpu::avx512::stats<float>(...)\n"
              "     7.25%  python  libtorch_cpu.so  [.] batch_norm_cpu_backward_channels_last\n")
    shares = cpu_profile_share.shares(report)
    assert shares["bnfused stats"] == 12.5 and shares["torch backward"] == 7.25
