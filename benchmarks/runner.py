"""The measurement core: every case x mode, every contender interleaved, one Row each."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from . import contenders
from .cases import MODES, Case, bytes_moved
from .timing import Progress, Timer, measure, median

ANCHORS = (contenders.EAGER, contenders.COMPILE)


@dataclass
class Row:
    """Results of one case in one mode. Times are seconds per call (median of samples)."""

    case: Case
    mode: str
    bytes: int
    median_s: Dict[str, float] = field(default_factory=dict)
    min_s: Dict[str, float] = field(default_factory=dict)
    samples: Dict[str, int] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    compile_s: Optional[float] = None

    def speedup(self, contender: str, anchor: str) -> float:
        """anchor time / contender time (> 1: contender is faster); nan if either is missing."""
        a, c = self.median_s.get(anchor), self.median_s.get(contender)
        return a / c if a and c else float("nan")

    def bandwidth(self, contender: str) -> float:
        """Achieved bytes/s from :func:`cases.bytes_moved`; nan if not measured."""
        t = self.median_s.get(contender)
        return self.bytes / t if t else float("nan")


@dataclass
class RunOptions:
    warmup: int = 3
    reps: int = 10
    with_compile: bool = True
    compile_limit_s: float = 120.0      # a slower compile turns the anchor off for the rest
    budget_s: Optional[float] = None    # stop starting new cases after this many seconds
    cpu_sample_s: float = 0.02          # CPU: calls per sample sized to last this long (0: one)


@dataclass
class RunResult:
    rows: List[Row]
    skipped: int = 0                    # case x mode rows not run (time budget)
    notes: List[str] = field(default_factory=list)


def _first_call(fn, timer: Timer) -> float:
    t0 = time.perf_counter()
    fn()
    timer.sync()
    return time.perf_counter() - t0


def run_rows(cases: Sequence[Case], device: torch.device, backends: Sequence[str],
             options: RunOptions, modes: Sequence[str] = MODES,
             progress: Optional[Progress] = None) -> RunResult:
    """Measure every case in every mode: torch eager, torch.compile, each bnfused backend."""
    result = RunResult(rows=[])
    timer = Timer(device, options.cpu_sample_s)
    start = time.perf_counter()
    with_compile = options.with_compile
    done = 0
    for index, case in enumerate(cases):
        if options.budget_s is not None and time.perf_counter() - start > options.budget_s:
            result.skipped = (len(cases) - index) * len(modes)
            break
        torch.manual_seed(index)
        try:
            modules, inputs = contenders.build(case, device, backends, with_compile)
        except (RuntimeError, MemoryError) as e:   # e.g. out of memory: the other cases still run
            result.notes.append(f"{case.describe()} not run: {type(e).__name__}: {e}"[:240])
            continue
        for mode in modes:
            row = Row(case, mode, bytes_moved(case.shape, case.torch_dtype, case.op, mode))
            for module in modules.values():
                module.train(mode != "eval")
            fns = {name: contenders.mode_callable(m, inputs, mode,
                                                  None if name in ANCHORS else name)
                   for name, m in modules.items()}
            if contenders.COMPILE in fns:
                try:
                    row.compile_s = _first_call(fns[contenders.COMPILE], timer)
                except Exception as e:
                    row.errors[contenders.COMPILE] = f"{type(e).__name__}: {e}"[:200]
                    del fns[contenders.COMPILE]
            times = measure(timer, fns, options.warmup, options.reps, row.errors)
            for name, samples in times.items():
                row.median_s[name] = median(samples)
                row.min_s[name] = min(samples)
                row.samples[name] = len(samples)
            result.rows.append(row)
            done += 1
            if progress is not None:
                progress.update(done, f"{case.describe()} {mode}")
            if row.compile_s is not None and row.compile_s > options.compile_limit_s and \
                    with_compile:
                with_compile = False
                result.notes.append(f"torch.compile took {row.compile_s:.0f} s on "
                                    f"{case.describe()} {mode}; compile anchor off from there")
        if contenders.COMPILE in modules:
            torch._dynamo.reset()
        del modules, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def run_all(cases: Sequence[Case], device: torch.device, backends: Sequence[str],
            options: RunOptions, modes: Sequence[str] = MODES, show_progress: bool = True
            ) -> RunResult:
    """Two passes within ``options.budget_s``: every row without the compile anchor first
    (with compile on, in at most 60% of the budget), then rows re-measured with it (all
    contenders again, interleaved) in plan order for as long as the budget lasts, so a slow
    compiler costs compile columns rather than rows."""
    t0 = time.perf_counter()
    bar = Progress(len(cases) * len(modes), "kernels") if show_progress else None
    first_budget = (options.budget_s * 0.6 if options.budget_s is not None and
                    options.with_compile else options.budget_s)
    first = run_rows(cases, device, backends,
                     dataclasses.replace(options, with_compile=False, budget_s=first_budget),
                     modes, bar)
    if bar:
        bar.close()
    total = len(cases) * len(modes)
    if first.skipped:
        first.notes.append(f"time budget of {first_budget:.0f} s reached: "
                           f"{first.skipped} of {total} rows not run")
    if not options.with_compile:
        return first
    left = None if options.budget_s is None else options.budget_s - (time.perf_counter() - t0)
    measured = list(dict.fromkeys(r.case for r in first.rows))
    bar = Progress(len(measured) * len(modes), "compile") if show_progress else None
    second = run_rows(measured, device, backends, dataclasses.replace(
        options, budget_s=None if left is None else max(0.0, left)), modes, bar)
    if bar:
        bar.close()
    better = {(r.case, r.mode): r for r in second.rows}
    first.rows = [better.get((r.case, r.mode), r) for r in first.rows]
    first.notes += second.notes
    with_anchor = sum(1 for r in first.rows if contenders.COMPILE in r.median_s)
    if with_anchor < len(first.rows):
        first.notes.append(f"torch.compile anchor on {with_anchor} of {len(first.rows)} rows "
                           "(time budget)")
    compile_s = [r.compile_s for r in second.rows if r.compile_s is not None]
    if compile_s:
        first.notes.append(f"torch.compile: {len(compile_s)} first calls, "
                           f"{sum(compile_s):.0f} s in total, slowest {max(compile_s):.1f} s")
    return first
