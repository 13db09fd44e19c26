"""Wall-clock budgets for a benchmark run: one deadline per section, enforced by a timer.

A run has a total time limit. Each section (kernel rows, memory, end to end,
torch.compile rows) gets a share of what is left when it starts, so time a
section does not use passes to the ones after it, and a fixed reserve is kept
for writing the report. Sections stop starting rows that would not fit (from
what the rows so far cost), and a ``SIGALRM`` timer at the section deadline
stops one that overruns anyway: :class:`TimeUp` is raised wherever the section
is, and what it finished stays. SIGINT and SIGTERM raise :class:`Interrupted`
so the caller can still write the report of the rows it has.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple


class TimeUp(BaseException):
    """A section's deadline passed (a BaseException, so ``except Exception`` lets it by)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _raise_time_up(signum, frame):
    raise TimeUp()


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only)."""
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deadline_alarm(deadline: Optional[float]) -> Iterator[None]:
    """Raise :class:`TimeUp` in the block once ``time.perf_counter()`` passes ``deadline``."""
    if deadline is None:
        yield
        return
    old = signal.signal(signal.SIGALRM, _raise_time_up)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.perf_counter(), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class RunClock:
    """The run's deadline and the share of the remaining time each section gets.

    ``limit_s`` counts from ``start`` (a ``time.perf_counter()`` value, e.g. taken
    before torch was imported); None means no limit. ``shares`` maps each
    section, in run order, to its weight; a section gets
    ``(left - report_reserve_s) * weight / (weight of it and the sections after)``.
    """

    def __init__(
        self,
        limit_s: Optional[float],
        start: float,
        shares: Dict[str, float],
        report_reserve_s: float = 20.0,
    ):
        self.limit_s = limit_s
        self.start = start
        self.shares = dict(shares)
        self.report_reserve_s = report_reserve_s
        self.spent: Dict[str, float] = {}

    @property
    def end(self) -> Optional[float]:
        return None if self.limit_s is None else self.start + self.limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section_deadline(self, name: str) -> Optional[float]:
        """Absolute deadline for section ``name`` starting now (None: no limit)."""
        if self.end is None:
            return None
        names = list(self.shares)
        later = sum(self.shares[n] for n in names[names.index(name) :])
        left = self.end - self.report_reserve_s - time.perf_counter()
        return time.perf_counter() + max(0.0, left) * self.shares[name] / later

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[Optional[float]]:
        """Run a section under its deadline; yields the deadline. :class:`TimeUp` ends it."""
        deadline = self.section_deadline(name)
        t0 = time.perf_counter()
        try:
            with deadline_alarm(deadline):
                yield deadline
        finally:
            self.spent[name] = time.perf_counter() - t0


class CostModel:
    """Predicts the seconds a row costs from the rows measured so far.

    A row costs at least the cheapest one seen (fixed costs: warm-up, a
    compile), at most what the cheapest bigger-or-equal row cost, and a row
    bigger than any seen scales the biggest one's cost by its bytes.
    """

    def __init__(self):
        self.seen: List[Tuple[int, float]] = []

    def add(self, nbytes: int, seconds: float) -> None:
        self.seen.append((max(1, nbytes), seconds))

    def predict(self, nbytes: int) -> float:
        if not self.seen:
            return 0.0
        floor = min(s for _, s in self.seen)
        bigger = [s for b, s in self.seen if b >= nbytes]
        if bigger:
            return max(floor, min(bigger))
        biggest, seconds = max(self.seen)
        return max(floor, seconds * nbytes / biggest)


def fits(deadline: Optional[float], seconds: float) -> bool:
    """Whether ``seconds`` of work started now ends before ``deadline``."""
    return deadline is None or time.perf_counter() + seconds <= deadline


def group_labels(items: Sequence[Tuple[str, str]]) -> List[str]:
    """``[(group, label), ...]`` -> ``["group: label, label", ...]`` in first-seen order."""
    groups: Dict[str, List[str]] = {}
    for group, label in items:
        if label not in groups.setdefault(group, []):
            groups[group].append(label)
    return [f"{g}: {', '.join(labels)}" for g, labels in groups.items()]


def clock(seconds: float) -> str:
    """``m:ss``."""
    seconds = 0 if math.isnan(seconds) else int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
