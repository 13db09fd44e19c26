"""Smoke test of the benchmark harness: rows, CSV, report and bytes model are well formed.

No timing assertions: the measurement core runs on tiny shapes with one or two samples.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import bnfused
from benchmarks import cases, e2e, environment, memory, report
from benchmarks.budget import CostModel, RunClock, deadline_alarm
from benchmarks.runner import RunOptions, RunResult, run_all, run_rows

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn_relu", "train") == 2 * act + 8 * vec
    # fwd_bwd with residual: forward x, r, y; backward dy, x, dx, dr; 1-bit mask twice (15 B).
    assert (
        cases.bytes_moved((2, 3, 4, 5), torch.float32, "bn_add_relu", "fwd_bwd")
        == 3 * act + 8 * vec + 4 * act + 5 * vec + 2 * 15
    )
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
    kernels = cases.plan("cpu", quick=False, kernels=True)
    assert kernels[0] == cases.Case(cases.CPU_KERNEL_SHAPES[0], "fp32", "nchw", "bn")
    assert {c.shape for c in kernels} == set(cases.CPU_KERNEL_SHAPES)


@pytest.fixture(scope="module")
def run():
    chosen = [
        cases.Case((2, 6, 3, 5), "fp32", "nchw", "bn_add_relu"),
        cases.Case((3, 4, 7), "bf16", "nchw", "bn_relu"),
    ]
    options = RunOptions(warmup=1, reps=2, with_compile=False, cpu_sample_s=0.0)
    return chosen, run_all(chosen, CPU, ["reference"], options, show_progress=False)


def test_rows_are_complete(run):
    chosen, result = run
    assert [(r.case, r.mode) for r in result.rows] == [(c, m) for c in chosen for m in cases.MODES]
    for row in result.rows:
        assert not row.errors, row.errors
        assert set(row.median_s) == {"eager", "reference"}
        assert all(t > 0 for t in row.median_s.values())
        assert row.samples == {"eager": 2, "reference": 2}
        assert row.bytes == cases.bytes_moved(
            row.case.shape, row.case.torch_dtype, row.case.op, row.mode
        )
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
    assert {line["reliability"] for line in lines} == {"ok"}
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
    assert "UNRELIABLE" not in text
    busy = report.markdown(
        meta,
        result,
        copy_bps,
        "--quick",
        None,
        "",
        [],
        None,
        unreliable=["machine busy: load 3.0"],
        machine_lines=["load 3.0"],
    )
    assert busy.index("**UNRELIABLE**") < busy.index("## Summary")
    assert "> - machine busy: load 3.0" in busy and "- verdict: UNRELIABLE" in busy
    table = report.text_table(
        report.table_header(["eager", "reference"]),
        [report.row_cells(r, ["eager", "reference"], copy_bps) for r in result.rows],
    )
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
    # No time left after the first step of each model: that step is the sample, noted.
    late = e2e.measure_e2e(
        CPU, "resnet10", batch=2, resolution=32, warmup=2, reps=5, deadline=time.perf_counter()
    )
    assert late.images_per_s["stock"] > 0 and "one step each" in late.note


def test_cpu_profile_share_parses_a_report():
    """cpu_profile.phase_shares: the inner workload runs, and phases are read from perf's
    report."""
    pytest.importorskip("bnfused._C")
    from cpu_profile import phase_shares

    subprocess.run(
        [
            sys.executable,
            "-m",
            "cpu_profile.phase_shares",
            "--inner",
            "2x16x4x4",
            "--channels-last",
            "--iters",
            "3",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    report = (
        "    12.50%  python  _C.so  [.] void bnfused::cpu::avx512::stats<float>(...)\n"
        "     7.25%  python  libtorch_cpu.so  [.] batch_norm_cpu_backward_channels_last\n"
    )
    shares = phase_shares.shares(report)
    assert shares["bnfused stats"] == 12.5 and shares["torch backward"] == 7.25


def _tiny_cases(count):
    return [cases.Case((2, 4 + i, 3, 3), "fp32", "nchw", "bn_relu") for i in range(count)]


class _AlarmAfterFirstRow:
    """A progress hook that sets the section timer to go off soon after the first row."""

    def update(self, done, what=""):
        if done == 1:
            signal.setitimer(signal.ITIMER_REAL, 0.3)


def test_section_timer_stops_rows_and_lists_the_rest():
    """The section timer ends a pass mid-plan: finished rows stay, the rest are listed."""
    chosen = _tiny_cases(200)
    options = RunOptions(warmup=1, reps=10, with_compile=False, cpu_sample_s=0.0)
    result = RunResult()
    with deadline_alarm(time.perf_counter() + 600):
        run_rows(chosen, CPU, ["reference"], options, result=result, progress=_AlarmAfterFirstRow())
    done = [(r.case, r.mode) for r in result.rows]
    assert done and result.skipped
    assert sorted(map(str, done + result.skipped)) == sorted(
        str((c, m)) for c in chosen for m in cases.MODES
    )
    text = report.markdown(environment.describe(CPU, 1), result, 1e10, "", None, "", [], None)
    assert f"{len(result.skipped)} of {len(chosen) * 3} rows" in text
    assert "bn_relu fp32 nchw: " in text


def test_rows_past_the_deadline_are_not_started():
    result = run_rows(
        _tiny_cases(2),
        CPU,
        ["reference"],
        RunOptions(with_compile=False),
        deadline=time.perf_counter() - 1.0,
    )
    assert result.rows == [] and len(result.skipped) == 2 * len(cases.MODES)


def test_cost_model_and_clock_shares():
    model = CostModel()
    assert model.predict(100) == 0.0
    model.add(1000, 2.0)
    model.add(10, 0.5)
    assert model.predict(5) == 0.5 and model.predict(500) == 2.0 and model.predict(4000) == 8.0
    clock = RunClock(100.0, time.perf_counter(), {"a": 1.0, "b": 3.0}, report_reserve_s=20.0)
    assert clock.section_deadline("a") - time.perf_counter() == pytest.approx(20.0, abs=0.5)
    assert clock.section_deadline("b") - time.perf_counter() == pytest.approx(80.0, abs=0.5)
    assert RunClock(None, 0.0, {"a": 1.0}).section_deadline("a") is None


def _bench(args, **popen):
    env = {k: v for k, v in os.environ.items() if k != "BNFUSED_BACKEND"}
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench"] + args, cwd=ROOT, env=env, text=True, **popen
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_writes_its_report(tmp_path, signum):
    """Ctrl-C or SIGTERM during the kernel rows: the report of the finished rows is written."""
    shapes = ",".join(f"2x{c}x3x3" for c in range(4, 44))
    proc = _bench(
        [
            "--quick",
            "--shapes",
            shapes,
            "--backends",
            "reference",
            "--reps",
            "30",
            "--no-compile",
            "--no-memory",
            "--no-e2e",
            "--no-freezing",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    for line in proc.stderr:  # the progress bar: a first row has finished
        if line.startswith("kernels [") or time.time() > deadline:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    reports = list(tmp_path.glob("*.md"))
    assert len(reports) == 1, (out, err)
    text = reports[0].read_text()
    assert f"interrupted by {signal.Signals(signum).name}" in text
    with open(reports[0].with_suffix(".csv")) as f:
        lines = list(csv.DictReader(f))
    assert lines and all(line["contender"] in ("eager", "reference") for line in lines)


def test_time_limit_keeps_the_later_sections(tmp_path):
    """A plan far longer than the time limit: the kernel rows stop in time, the memory
    section and the report still come, and the report lists the rows left out."""
    shapes = ",".join(f"2x{c}x3x3" for c in range(4, 204))
    t0 = time.perf_counter()
    proc = _bench(
        [
            "--quick",
            "--shapes",
            shapes,
            "--backends",
            "reference",
            "--reps",
            "20",
            "--no-compile",
            "--no-e2e",
            "--no-freezing",
            "--threads",
            "1",
            "--time-limit-s",
            "20",
            "--out-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert time.perf_counter() - t0 < 20 + 60  # no hang; the report's own time is below
    text = next(tmp_path.glob("*.md")).read_text()
    assert int(text.split("- total ")[1].split(" s")[0]) <= 20  # sections ended in time
    assert "## Rows not run (time budget)" in text
    assert "## Memory kept for backward" in text and "memory: measured" in text
    assert "- traffic: " in text and "- codegen: " in text  # tables, or stopped in time


def test_kernel_mode_runs_on_tiny_shapes(tmp_path):
    """--mode kernels: functional calls of the compiled backend against torch's, one CSV
    line per row and contender, the one bytes model."""
    pytest.importorskip("bnfused._C")
    proc = _bench(
        [
            "--mode",
            "kernels",
            "--shapes",
            "2x8x4x4,3x16x5x5",
            "--layouts",
            "nchw,channels_last",
            "--ops",
            "bn,bn_add_relu",
            "--reps",
            "1",
            "--threads",
            "1",
            "--backends",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    md = next(tmp_path.glob("*.md"))
    assert "**malloc**: freed memory kept" in md.read_text()
    with open(md.with_suffix(".csv")) as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * 2 * 2 * 3 * 2  # shapes x layouts x ops x modes x contenders
    for line in lines:
        assert line["error"] == "", line
        shape = tuple(int(d) for d in line["shape"].split("x"))
        assert int(line["bytes"]) == cases.bytes_moved(
            shape, torch.float32, line["op"], line["mode"]
        )
