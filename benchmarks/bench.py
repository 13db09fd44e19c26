"""bnfused benchmarks: every available backend vs torch eager and torch.compile.

    python -m benchmarks.bench                 # within 9 minutes on the CPU, 7 on a GPU
    python -m benchmarks.bench --full          # every row, every anchor, no time limit
    python -m benchmarks.bench --quick         # a few shapes (about 2 minutes)
    python -m benchmarks.bench --mode kernels  # the kernels alone: functional calls
    python -m benchmarks.bench --help

(from the repository root).
Sections run in this order, each within its share of the time left: kernel rows
(most important first), memory, the end-to-end training step, the rows again with
the torch.compile anchor, and without a GPU the CUDA kernels' memory traffic under
the emulator (inspection/traffic.py) and the code-generation table
(inspection/codegen.py); the report is always written, with the rows and
anchors left out for time, also after Ctrl-C or SIGTERM (exit status 128 + signal).
Writes results/<device>-<date>.md, .csv and .png beside this file (or --out-dir).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the time limit counts from here, torch's import included

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from typing import List, Optional  # noqa: E402

import torch  # noqa: E402

import bnfused  # noqa: E402
from benchmarks import cases, e2e, environment, memory, reliability, report  # noqa: E402
from benchmarks.budget import Interrupted, RunClock, TimeUp, interrupts_raise  # noqa: E402
from benchmarks.runner import RunOptions, RunResult, run_rows, run_with_compile  # noqa: E402
from benchmarks.timing import Progress, copy_seconds, keep_freed_memory, median  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Default time limits in seconds, counted from the start of the process: with the
# build check before it, make bench ends within 10 minutes on a CPU and 8 on a GPU.
LIMIT_S = {"cpu": 540.0, "cuda": 420.0, "quick": 150.0}
# Weight of each section, in run order: it gets the time left times its weight over
# the weights of it and the sections after it.
SHARES = {
    "kernels": 0.45,
    "memory": 0.03,
    "e2e": 0.12,
    "freezing": 0.08,
    "compile": 0.15,
    "traffic": 0.05,
    "codegen": 0.12,
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEGEN = ["-m", "inspection.codegen"]
TRAFFIC = ["-m", "inspection.traffic", "--shapes", "cpu"]
REPORT_RESERVE_S = 25.0


def usable_backends(device: torch.device, kernels: bool = False):
    """Available bnfused backends that run on ``device`` (triton on CPU needs the
    interpreter); ``kernels``: the compiled and Triton ones only."""
    on_device = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
    names = [
        name
        for name, info in bnfused.backends().items()
        if info["available"]
        and name in on_device[device.type]
        and not (kernels and name == "reference")
    ]
    # The CUDA kernels' two training paths side by side (contenders.mode_callable); the
    # persistent one falls back to two-pass where a case does not fit on chip.
    return [
        v
        for name in names
        for v in ((f"{name}:two-pass", f"{name}:persistent") if name == "cuda" else (name,))
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda when a GPU is visible, else cpu",
    )
    p.add_argument(
        "--mode",
        choices=["modules", "kernels"],
        default="modules",
        help="modules: the nn.Modules as users call them, with the compile anchor,\n"
        "memory and end-to-end sections (default); kernels: one functional\n"
        "call against torch.nn.functional, compiled backends only, kernel rows\n"
        "only (on the CPU: ResNet-50 layers at training batch sizes)",
    )
    p.add_argument("--quick", action="store_true", help="a few shapes, few repetitions")
    p.add_argument(
        "--full",
        action="store_true",
        help="no time limit: every row, and every row with the compile anchor",
    )
    p.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        help="seconds for the whole run, report included (default: "
        f"{LIMIT_S['cpu']:.0f} on the CPU,\n{LIMIT_S['cuda']:.0f} on a GPU, "
        f"{LIMIT_S['quick']:.0f} with --quick, none with --full; 0: none)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile anchor")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--no-e2e", action="store_true", help="skip the ResNet training step")
    p.add_argument(
        "--no-freezing",
        action="store_true",
        help="skip ResNet-50 inference under torch.compile with freezing, stock vs converted",
    )
    p.add_argument(
        "--no-traffic",
        action="store_true",
        help="skip the CUDA kernels' memory traffic under the emulator (run only without a GPU)",
    )
    p.add_argument(
        "--no-codegen",
        action="store_true",
        help="skip the code-generation table (run only without a GPU)",
    )
    p.add_argument("--backends", default="", help="comma list (default: all available)")
    p.add_argument("--shapes", default="", help="e.g. 32x64x56x56,20x6x65536")
    p.add_argument("--dtypes", default="", help="comma list of fp32,bf16,fp16,fp64")
    p.add_argument("--layouts", default="", help="comma list of nchw,channels_last")
    p.add_argument("--ops", default="", help="comma list of " + ",".join(cases.OPS))
    p.add_argument("--modes", default="", help="comma list of " + ",".join(cases.MODES))
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender")
    p.add_argument("--reps", type=int, default=None, help="timed samples per contender")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--compile-limit-s",
        type=float,
        default=120.0,
        help="turn the compile anchor off after a compile this slow",
    )
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="CPU: keep glibc's trim and mmap defaults (by default freed memory is\n"
        "kept, so outputs do not page-fault afresh on every call)",
    )
    p.add_argument("--out-dir", default=RESULTS, help="where the .md/.csv/.png go")
    return p.parse_args(argv)


def _list(text: str):
    return [t.strip() for t in text.split(",") if t.strip()]


def _check_choices(values, allowed, what):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return values


def time_limit(given: Optional[float], quick: bool, full: bool, gpu: bool) -> Optional[float]:
    """Seconds for the whole run: given (0: none), else none with --full, else the default."""
    if given is not None:
        return given or None
    if full:
        return None
    return LIMIT_S["quick" if quick else ("cuda" if gpu else "cpu")]


@dataclass
class Collected:
    """What the sections measured so far: enough to write a report at any point."""

    result: RunResult = field(default_factory=RunResult)
    copy_bps: float = float("nan")
    memory_rows: Optional[List[List[str]]] = None
    memory_title: str = ""
    e2e_lines: List[str] = field(default_factory=list)
    run_lines: List[str] = field(default_factory=list)
    machine: reliability.Observations = field(
        default_factory=lambda: reliability.Observations(os.cpu_count() or 1, 1)
    )


def _section(clock: RunClock, name: str, body, out: Collected) -> None:
    """Run ``body(deadline)`` as section ``name``; a section cut by its timer is noted."""
    t0 = time.perf_counter()
    try:
        with clock.section(name) as deadline:
            if deadline is not None:
                print(f"== {name}: up to {deadline - t0:.0f} s", file=sys.stderr, flush=True)
            summary = body(deadline)
    except TimeUp:
        summary = "stopped by its time budget"
    out.run_lines.append(f"{name}: {summary} ({time.perf_counter() - t0:.0f} s)")


def run_sections(args, device, backends, chosen, modes, options, clock, out: Collected):
    """Every section in order, filling ``out`` as rows finish."""
    gpu = device.type == "cuda"
    kernel_mode = args.mode == "kernels"
    nbytes, seconds = copy_seconds(device)
    out.copy_bps = 2 * nbytes / median(seconds)
    out.machine.copy_s += seconds
    print(f"copy bandwidth: {out.copy_bps / 1e9:.1f} GB/s", flush=True)
    total = len(chosen) * len(modes)

    def kernels(deadline):
        bar = Progress(total, "kernels", deadline=deadline)
        try:
            run_rows(
                chosen,
                device,
                backends,
                replace(options, with_compile=False),
                modes,
                out.result,
                deadline,
                bar,
            )
        finally:
            bar.close()
        return f"{len(out.result.rows)} of {total} rows"

    _section(clock, "kernels", kernels, out)

    if not (args.no_memory or kernel_mode):

        def memory_section(deadline):
            shape = (
                (32, 64, 56, 56) if gpu else ((2, 64, 28, 28) if args.quick else (4, 64, 56, 56))
            )
            mem = memory.measure_memory(device, shape, layers=8)
            out.memory_rows = memory.memory_lines(mem)
            out.memory_title = (
                f"One training step of {mem.layers} BN+ReLU layers on "
                f"{'x'.join(map(str, mem.shape))} {mem.dtype} input "
                "(requires grad)."
            )
            return "measured"

        _section(clock, "memory", memory_section, out)

    if not (args.no_e2e or kernel_mode):

        def e2e_section(deadline):
            if gpu:
                res = e2e.measure_e2e(
                    device, "resnet50", 128, 224, torch.bfloat16, True, 3, 10, deadline=deadline
                )
            else:
                res = e2e.measure_e2e(
                    device,
                    "resnet50",
                    *((2, 32) if args.quick else (8, 112)),
                    warmup=1 if args.quick else 2,
                    reps=2 if args.quick else 5,
                    deadline=deadline,
                )
            out.e2e_lines = e2e.e2e_lines(res)
            return "measured"

        _section(clock, "e2e", e2e_section, out)

    if not (args.no_freezing or kernel_mode):

        def freezing_section(deadline):
            shape = (32, 224) if gpu else ((2, 32) if args.quick else (8, 112))
            res = e2e.measure_frozen_inference(
                device,
                "resnet50",
                *shape,
                warmup=2,
                reps=2 if args.quick else 5,
                deadline=deadline,
            )
            out.e2e_lines += e2e.e2e_lines(res)
            return "measured"

        _section(clock, "freezing", freezing_section, out)

    if options.with_compile and out.result.rows:

        def compile_section(deadline):
            rows = len(out.result.rows)
            bar = Progress(rows, "compile", deadline=deadline)
            try:
                run_with_compile(out.result, device, backends, options, modes, deadline, bar)
            finally:
                bar.close()
            return f"anchor on {rows - len(out.result.compile_skipped)} of {rows} rows"

        _section(clock, "compile", compile_section, out)

    if not (gpu or args.no_traffic or kernel_mode):
        _section(clock, "traffic", lambda deadline: run_script(TRAFFIC, deadline), out)
    if not (gpu or args.no_codegen or kernel_mode):
        _section(clock, "codegen", lambda deadline: run_script(CODEGEN, deadline), out)


def run_script(command: List[str], deadline: Optional[float]) -> str:
    """An inspection module (its table on stdout), stopped at ``deadline``."""
    sys.stdout.flush()
    # Its own process group, so stopping it stops the compilers it started too.
    proc = subprocess.Popen([sys.executable] + command, cwd=REPO, start_new_session=True)
    try:
        rc = proc.wait(
            timeout=None if deadline is None else max(1.0, deadline - time.perf_counter())
        )
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return (
        "table printed above"
        if rc == 0
        else ("stopped by its time budget" if rc is None else f"failed (exit status {rc})")
    )


def observe_end(device, out: Collected, interrupted: bool) -> List[str]:
    """The machine at the end of the run (copy samples again unless interrupted, load,
    the rows' timings); returns the reasons to distrust the run."""
    if not interrupted:
        out.machine.copy_s += copy_seconds(device, reps=3)[1]
    out.machine.load_end = reliability.load_average()
    out.machine.timings = [(t, row.bytes) for row in out.result.rows for t in row.median_s.values()]
    return reliability.verdict(out.machine)


def write_report(args, argv, meta, out: Collected, elapsed_s: float, unreliable: List[str]) -> str:
    """Print the tables and write the .md, .csv and .png; returns the report's path."""
    rows = out.result.rows
    names = report.contenders_of(rows)
    print()
    print(
        report.text_table(
            report.table_header(names), [report.row_cells(r, names, out.copy_bps) for r in rows]
        )
    )
    print(
        "\n"
        + report.text_table(report.SUMMARY_HEADER, report.summary_rows(rows, names, out.copy_bps))
    )
    if out.memory_rows:
        print("\n" + out.memory_title)
        print(
            report.text_table(
                ["measure", "eager", "eager out-of-place", "bnfused", "bnfused/eager"],
                out.memory_rows,
            )
        )
    for line in out.e2e_lines + [f"run: {line}" for line in out.run_lines]:
        print(line)
    for note in out.result.notes:
        print("note:", note)
    for reason in unreliable:
        print(f"UNRELIABLE: {reason}", file=sys.stderr)
    if out.result.skipped or out.result.compile_skipped:
        print(
            f"not run for time: {len(out.result.skipped)} rows, the compile anchor on "
            f"{len(out.result.compile_skipped)} rows (listed in the report)"
        )

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"{meta['device_slug']}-{meta['stamp']}")
    plot_skipped = (
        report.write_plot(base + ".png", rows, f"bnfused on {meta['device']} ({meta['commit']})")
        if rows
        else "no rows; plot skipped"
    )
    if plot_skipped:
        print(plot_skipped)
    report.write_csv(base + ".csv", rows, meta, out.copy_bps, reliability.label(unreliable))
    options_text = " ".join(sys.argv[1:] if argv is None else argv) or "(defaults)"
    run_lines = out.run_lines + [f"total {elapsed_s:.0f} s"]
    with open(base + ".md", "w") as f:
        f.write(
            report.markdown(
                meta,
                out.result,
                out.copy_bps,
                options_text,
                out.memory_rows,
                out.memory_title,
                out.e2e_lines,
                None if plot_skipped else os.path.basename(base + ".png"),
                run_lines,
                unreliable,
                reliability.machine_lines(out.machine),
            )
        )
    print(
        f"wrote {base}.md, .csv{'' if plot_skipped else ', .png'} "
        f"({time.perf_counter() - START:.0f} s)",
        flush=True,
    )
    return base + ".md"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    gpu = device.type == "cuda"
    kernel_mode = args.mode == "kernels"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    available = usable_backends(device, kernel_mode)
    backends = (
        _check_choices(_list(args.backends), available, "backend (or not available here)")
        or available
    )
    shapes = [tuple(int(d) for d in s.split("x")) for s in _list(args.shapes)]
    chosen = cases.plan(
        device.type,
        args.quick,
        shapes,
        _check_choices(_list(args.dtypes), cases.DTYPES, "dtype"),
        _check_choices(_list(args.layouts), cases.LAYOUTS, "layout"),
        _check_choices(_list(args.ops), cases.OPS, "op"),
        kernels=kernel_mode,
    )
    modes = _check_choices(_list(args.modes), cases.MODES, "mode") or list(cases.MODES)
    default_reps = (25 if gpu else (11 if kernel_mode else 7)) // (2 if args.quick else 1)
    options = RunOptions(
        warmup=args.warmup
        if args.warmup is not None
        else (5 if gpu else 2) // (2 if args.quick else 1),
        reps=args.reps if args.reps is not None else default_reps,
        with_compile=not (args.no_compile or kernel_mode),
        compile_limit_s=args.compile_limit_s,
        functional=kernel_mode,
    )
    malloc_kept = not gpu and not args.system_malloc and keep_freed_memory()

    limit = time_limit(args.time_limit_s, args.quick, args.full, gpu)
    shares = {
        k: v
        for k, v in SHARES.items()
        if k == "kernels"
        or not (kernel_mode or getattr(args, "no_" + k) or (k in ("codegen", "traffic") and gpu))
    }
    clock = RunClock(limit, START, shares, min(REPORT_RESERVE_S, 0.1 * (limit or 0)))
    meta = environment.describe(device, threads)
    meta["mode"] = args.mode
    if not gpu:
        meta["malloc"] = "freed memory kept (mallopt)" if malloc_kept else "glibc defaults"
    print(
        f"bnfused benchmarks ({args.mode}) on {meta['device']}; torch {meta['torch']}, "
        f"triton {meta['triton']}, commit {meta['commit']}; backends: {', '.join(backends)}"
    )
    print(
        f"{len(chosen) * len(modes)} kernel rows planned; "
        + (f"time limit {limit:.0f} s (--full: no limit)" if limit else "no time limit"),
        flush=True,
    )
    out = Collected()
    out.machine = reliability.Observations(
        os.cpu_count() or 1, 1 if gpu else threads, load_start=reliability.load_average()
    )
    interrupted = None
    with interrupts_raise():
        try:
            run_sections(args, device, backends, chosen, modes, options, clock, out)
        except Interrupted as e:
            interrupted = e
            out.run_lines.append(
                f"interrupted by {e} after {clock.elapsed():.0f} s; "
                "the sections after it did not run"
            )
            print(f"\n{e}: writing the report of what finished", file=sys.stderr, flush=True)
    if limit:
        out.run_lines.append(f"time limit {limit:.0f} s (`--full` runs every row)")
    unreliable = observe_end(device, out, interrupted is not None)
    write_report(args, argv, meta, out, clock.elapsed(), unreliable)
    return 128 + interrupted.signum if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
