"""The measurement core: every case x mode, every contender interleaved, one Row each.

Rows run in plan order (most important first) until a deadline: a row that the
rows measured so far say would not fit is skipped, and :class:`budget.TimeUp`
(the section's timer) ends the pass; both are recorded in the result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import contenders
from .budget import CostModel, TimeUp, fits
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
    compile_limit_s: float = 120.0  # a slower compile turns the anchor off for the rest
    cpu_sample_s: float = 0.02  # CPU: calls per sample sized to last this long (0: one)
    functional: bool = False  # race functional calls instead of modules


RowKey = Tuple[Case, str]


@dataclass
class RunResult:
    """Rows measured, and the (case, mode) rows or compile anchors left out for time."""

    rows: List[Row] = field(default_factory=list)
    skipped: List[RowKey] = field(default_factory=list)
    compile_skipped: List[RowKey] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _first_call(fn, timer: Timer) -> float:
    t0 = time.perf_counter()
    fn()
    timer.sync()
    return time.perf_counter() - t0


def _measure_row(case: Case, mode: str, modules, inputs, timer: Timer, options: RunOptions) -> Row:
    row = Row(case, mode, bytes_moved(case.shape, case.torch_dtype, case.op, mode))
    for module in modules.values():
        module.train(mode != "eval")
    fns = {
        name: contenders.mode_callable(m, inputs, mode, None if name in ANCHORS else name)
        for name, m in modules.items()
    }
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
    return row


def run_rows(
    cases: Sequence[Case],
    device: torch.device,
    backends: Sequence[str],
    options: RunOptions,
    modes: Sequence[str] = MODES,
    result: Optional[RunResult] = None,
    deadline: Optional[float] = None,
    progress: Optional[Progress] = None,
    only: Optional[set] = None,
) -> RunResult:
    """Measure every case in every mode: torch eager, torch.compile, each bnfused backend.

    Rows go into ``result`` as they finish (so a caller interrupted mid-run keeps
    them). With a ``deadline`` (a ``time.perf_counter()`` value) a row that the
    rows so far predict would not fit is not started; :class:`TimeUp` (the
    section timer) ends the pass. Either way the rows not run are listed in
    ``result.skipped``. ``only``: the (case, mode) rows to run, if not all.
    """
    result = RunResult() if result is None else result
    timer = Timer(device, options.cpu_sample_s)
    with_compile = options.with_compile
    costs = {mode: CostModel() for mode in modes}
    wanted = [(c, m) for c in cases for m in modes if only is None or (c, m) in only]
    accounted = set()  # measured, or failed to build
    try:
        for index, case in enumerate(cases):
            todo = [
                m
                for m in modes
                if (only is None or (case, m) in only)
                and fits(
                    deadline,
                    costs[m].predict(bytes_moved(case.shape, case.torch_dtype, case.op, m)),
                )
            ]
            if not todo:
                continue
            torch.manual_seed(index)
            try:
                modules, inputs = contenders.build(
                    case, device, backends, with_compile, options.functional
                )
            except (RuntimeError, MemoryError) as e:  # e.g. out of memory: the rest still run
                result.notes.append(f"{case.describe()} not run: {type(e).__name__}: {e}"[:240])
                accounted.update((case, m) for m in modes)
                continue
            for mode in todo:
                t0 = time.perf_counter()
                row = _measure_row(case, mode, modules, inputs, timer, options)
                costs[mode].add(row.bytes, time.perf_counter() - t0)
                result.rows.append(row)
                accounted.add((case, mode))
                if progress is not None:
                    progress.update(len(result.rows), f"{case.describe()} {mode}")
                if (
                    with_compile
                    and row.compile_s is not None
                    and row.compile_s > options.compile_limit_s
                ):
                    with_compile = False
                    result.notes.append(
                        f"torch.compile took {row.compile_s:.0f} s on "
                        f"{case.describe()} {mode} (over --compile-limit-s); "
                        "compile anchor off from there"
                    )
            if contenders.COMPILE in modules:
                torch._dynamo.reset()
            del modules, inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if options.with_compile and not with_compile:
                break  # a pass for the compile anchor has nothing left to add
    except TimeUp:
        if options.with_compile:
            torch._dynamo.reset()
    result.skipped += [key for key in wanted if key not in accounted]
    return result


def run_with_compile(
    first: RunResult,
    device: torch.device,
    backends: Sequence[str],
    options: RunOptions,
    modes: Sequence[str] = MODES,
    deadline: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> RunResult:
    """Measure the rows of ``first`` again with the torch.compile anchor, all contenders
    interleaved, in plan order until ``deadline``; rows measured replace those of
    ``first`` in place, the others are listed in ``first.compile_skipped``."""
    cases = list(dict.fromkeys(r.case for r in first.rows))
    second = RunResult()
    try:
        run_rows(
            cases,
            device,
            backends,
            options,
            modes,
            second,
            deadline,
            progress,
            only={(r.case, r.mode) for r in first.rows},
        )
    finally:
        better = {(r.case, r.mode): r for r in second.rows}
        first.rows[:] = [better.get((r.case, r.mode), r) for r in first.rows]
        first.notes += second.notes
        first.compile_skipped = [
            (r.case, r.mode) for r in first.rows if (r.case, r.mode) not in better
        ]
        compile_s = [r.compile_s for r in second.rows if r.compile_s is not None]
        if compile_s:
            first.notes.append(
                f"torch.compile: {len(compile_s)} first calls, "
                f"{sum(compile_s):.0f} s in total, slowest {max(compile_s):.1f} s"
            )
    return first


def run_all(
    cases: Sequence[Case],
    device: torch.device,
    backends: Sequence[str],
    options: RunOptions,
    modes: Sequence[str] = MODES,
    show_progress: bool = True,
) -> RunResult:
    """Every row without the compile anchor, then (``options.with_compile``) every row
    again with it; no time limit."""
    bar = Progress(len(cases) * len(modes), "kernels") if show_progress else None
    result = run_rows(
        cases,
        device,
        backends,
        dataclasses.replace(options, with_compile=False),
        modes,
        progress=bar,
    )
    if bar:
        bar.close()
    if options.with_compile:
        bar = Progress(len(result.rows), "compile") if show_progress else None
        run_with_compile(result, device, backends, options, modes, progress=bar)
        if bar:
            bar.close()
    return result
