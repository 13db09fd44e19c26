"""bnfused benchmarks: every available backend vs torch eager and torch.compile.

    python benchmarks/bench.py            # full run on the GPU if there is one, else the CPU
    python benchmarks/bench.py --quick    # a couple of shapes (< 2 minutes on a 2-core CPU)
    python benchmarks/bench.py --help

Writes results/<device>-<date>.md, .csv and .png beside this file (or --out-dir).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):   # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bnfused  # noqa: E402
from benchmarks import cases, e2e, environment, memory, report  # noqa: E402
from benchmarks.runner import RunOptions, run_all  # noqa: E402
from benchmarks.timing import copy_bandwidth  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def usable_backends(device: torch.device):
    """Available bnfused backends that run on ``device`` (triton on CPU needs the interpreter)."""
    on_device = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
    return [name for name, info in bnfused.backends().items()
            if info["available"] and name in on_device[device.type]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--quick", action="store_true", help="a few shapes, few repetitions")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile anchor")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--no-e2e", action="store_true", help="skip the ResNet training step")
    p.add_argument("--backends", default="", help="comma list (default: all available)")
    p.add_argument("--shapes", default="", help="e.g. 32x64x56x56,20x6x65536")
    p.add_argument("--dtypes", default="", help="comma list of fp32,bf16,fp16,fp64")
    p.add_argument("--layouts", default="", help="comma list of nchw,channels_last")
    p.add_argument("--ops", default="", help="comma list of " + ",".join(cases.OPS))
    p.add_argument("--modes", default="", help="comma list of " + ",".join(cases.MODES))
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender")
    p.add_argument("--reps", type=int, default=None, help="timed samples per contender")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new kernel cases after this many seconds\n"
                        "(default: 70 with --quick, 420 full on a GPU, none full on the CPU;\n"
                        "0: no limit)")
    p.add_argument("--compile-limit-s", type=float, default=120.0,
                   help="turn the compile anchor off after a compile this slow")
    p.add_argument("--out-dir", default=RESULTS, help="where the .md/.csv/.png go")
    return p.parse_args(argv)


def _list(text: str):
    return [t.strip() for t in text.split(",") if t.strip()]


def _check_choices(values, allowed, what):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return values


def _budget(given, quick: bool, gpu: bool):
    """Seconds for the kernel rows: given (0: no limit), else 70 quick, 420 full on a GPU
    (one GPU session command is limited to 10 minutes), no limit full on the CPU."""
    if given is not None:
        return given or None
    return 70.0 if quick else (420.0 if gpu else None)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    gpu = device.type == "cuda"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    backends = _check_choices(_list(args.backends), usable_backends(device),
                              "backend (or not available here)") or usable_backends(device)
    shapes = [tuple(int(d) for d in s.split("x")) for s in _list(args.shapes)]
    chosen = cases.plan(device.type, args.quick, shapes,
                        _check_choices(_list(args.dtypes), cases.DTYPES, "dtype"),
                        _check_choices(_list(args.layouts), cases.LAYOUTS, "layout"),
                        _check_choices(_list(args.ops), cases.OPS, "op"))
    modes = _check_choices(_list(args.modes), cases.MODES, "mode") or list(cases.MODES)
    options = RunOptions(
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 2) // (
            2 if args.quick else 1),
        reps=args.reps if args.reps is not None else (25 if gpu else 7) // (
            2 if args.quick else 1),
        with_compile=not args.no_compile, compile_limit_s=args.compile_limit_s,
        budget_s=_budget(args.budget_s, args.quick, gpu))

    meta = environment.describe(device, threads)
    print(f"bnfused benchmarks on {meta['device']}; torch {meta['torch']}, triton "
          f"{meta['triton']}, commit {meta['commit']}; backends: {', '.join(backends)}")
    t0 = time.perf_counter()
    copy_bps = copy_bandwidth(device)
    print(f"copy bandwidth: {copy_bps / 1e9:.1f} GB/s")
    result = run_all(chosen, device, backends, options, modes)

    memory_rows, memory_title = None, ""
    if not args.no_memory:
        shape = (32, 64, 56, 56) if gpu else ((2, 64, 28, 28) if args.quick else (4, 64, 56, 56))
        mem = memory.measure_memory(device, shape, layers=8)
        memory_rows = memory.memory_lines(mem)
        memory_title = (f"One training step of {mem.layers} BN+ReLU layers on "
                        f"{'x'.join(map(str, mem.shape))} {mem.dtype} input (requires grad).")
    e2e_lines = []
    if not args.no_e2e:
        if gpu:
            res = e2e.measure_e2e(device, "resnet50", 128, 224, torch.bfloat16, True, 3, 10)
        else:
            res = e2e.measure_e2e(device, "resnet50", *((2, 32) if args.quick else (8, 112)),
                                  warmup=1 if args.quick else 2, reps=2 if args.quick else 5)
        e2e_lines = e2e.e2e_lines(res)

    names = report.contenders_of(result.rows)
    print()
    print(report.text_table(report.table_header(names),
                            [report.row_cells(r, names, copy_bps) for r in result.rows]))
    print("\n" + report.text_table(report.SUMMARY_HEADER,
                                   report.summary_rows(result.rows, names, copy_bps)))
    if memory_rows:
        print("\n" + memory_title)
        print(report.text_table(["measure", "eager", "eager out-of-place", "bnfused",
                                 "bnfused/eager"], memory_rows))
    for line in e2e_lines:
        print(line)
    for note in result.notes:
        print("note:", note)

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"{meta['device_slug']}-{meta['stamp']}")
    plot_skipped = report.write_plot(base + ".png", result.rows,
                                     f"bnfused on {meta['device']} ({meta['commit']})")
    if plot_skipped:
        print(plot_skipped)
    report.write_csv(base + ".csv", result.rows, meta, copy_bps)
    options_text = " ".join(sys.argv[1:] if argv is None else argv) or "(defaults)"
    with open(base + ".md", "w") as f:
        f.write(report.markdown(meta, result, copy_bps, options_text, memory_rows, memory_title,
                                e2e_lines,
                                None if plot_skipped else os.path.basename(base + ".png")))
    print(f"wrote {base}.md, .csv{'' if plot_skipped else ', .png'} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
