"""Timers, interleaved measurement, device copy bandwidth and a plain-text progress bar.

CUDA: each sample is one call bracketed by CUDA events, after an L2 flush
(a 256 MB write, as ``triton.testing.do_bench`` does). CPU: each sample is
``time.perf_counter`` around a batch of calls sized to last ~20 ms.
Contenders are measured round-robin (the order rotates every repetition), so
drift in a shared machine's load hits all of them alike.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .budget import clock

FLUSH_BYTES = 256 << 20
COPY_BYTES = {"cuda": 256 << 20, "cpu": 128 << 20}


class Timer:
    """Times ``fn`` on ``device``; :meth:`sample` returns seconds per call."""

    def __init__(self, device: torch.device, cpu_sample_s: float = 0.02):
        self.device = device
        self.cuda = device.type == "cuda"
        self.cpu_sample_s = cpu_sample_s
        self._flush = (
            torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        )
        self.inner: Dict[str, int] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def calibrate(self, name: str, fn: Callable[[], object]) -> None:
        """CPU: choose how many calls make one sample (CUDA, or ``cpu_sample_s=0``: one)."""
        if self.cuda or self.cpu_sample_s <= 0:
            self.inner[name] = 1
            return
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        self.inner[name] = max(1, min(1000, int(self.cpu_sample_s / dt)))

    def sample(self, name: str, fn: Callable[[], object]):
        """Start one timed sample; returns a handle for :meth:`seconds`."""
        inner = self.inner.get(name, 1)
        if self.cuda:
            self._flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return (start, end, inner)
        # A sample stops early if the machine slows down after calibration.
        limit = 10 * self.cpu_sample_s
        t0 = time.perf_counter()
        calls = 0
        while calls < inner:
            fn()
            calls += 1
            if inner > 1 and time.perf_counter() - t0 > limit:
                break
        return (t0, time.perf_counter(), calls)

    def seconds(self, handle) -> float:
        start, end, inner = handle
        if self.cuda:
            return start.elapsed_time(end) / 1e3 / inner
        return (end - start) / inner


def measure(
    timer: Timer,
    fns: Dict[str, Callable[[], object]],
    warmup: int,
    reps: int,
    errors: Optional[Dict[str, str]] = None,
) -> Dict[str, List[float]]:
    """Seconds per call of each contender, ``reps`` samples each, round-robin.

    A contender that raises during warm-up is dropped and its error stored in
    ``errors`` (name -> message); the others are still measured.
    """
    errors = {} if errors is None else errors
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(1, warmup)):
                fn()
            timer.sync()
            timer.calibrate(name, fn)
            timer.sync()
            live[name] = fn
        except Exception as e:  # a backend that cannot run this row
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    names = list(live)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % max(1, len(names))
        order = names[shift:] + names[:shift]
        handles = [(name, timer.sample(name, live[name])) for name in order]
        timer.sync()
        for name, handle in handles:
            times[name].append(timer.seconds(handle))
    return times


def median(samples: List[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def copy_seconds(
    device: torch.device, reps: int = 10, nbytes: Optional[int] = None
) -> Tuple[int, List[float]]:
    """(bytes copied, seconds of each sample) of ``dst.copy_(src)`` on a large buffer."""
    nbytes = nbytes or COPY_BYTES["cuda" if device.type == "cuda" else "cpu"]
    src = torch.randint(0, 100, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device, cpu_sample_s=0.0)  # one copy per CPU sample is long enough
    return nbytes, measure(timer, {"copy": lambda: dst.copy_(src)}, warmup=2, reps=reps)["copy"]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks (no trim, mmap only above 32 MB); False where it cannot.

    Otherwise glibc hands freed outputs back to the OS and the next call faults
    them in again, a cost that lands at random on either contender and swung
    single CPU rows by up to 5x (PyTorch's CPU tuning guide recommends a caching
    allocator, jemalloc or tcmalloc, for the same reason).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(
        libc.mallopt(m_mmap_threshold, 32 << 20)
    )


class Progress:
    """``[#####-----] 12/40 0:42 ~1:03 left  what``: redrawn on a terminal, else a line
    every ~10% and at least every ``every_s`` seconds.

    With a ``deadline`` (a ``time.perf_counter()`` value) the time left shown is
    never more than the time to it.
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream=None,
        width: int = 28,
        deadline: Optional[float] = None,
        every_s: float = 15.0,
    ):
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.deadline = deadline
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1
        self._last_line = self.start
        self.every_s = every_s
        self.done = 0

    def update(self, done: int, what: str = "") -> None:
        self.done = done
        frac = min(1.0, done / self.total)
        now = time.perf_counter()
        elapsed = now - self.start
        left = elapsed / frac - elapsed if frac > 0 else 0.0
        if self.deadline is not None:
            left = min(left, max(0.0, self.deadline - now))
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        line = (
            f"{self.label} [{bar}] {done}/{self.total} {clock(elapsed)} ~{clock(left)} left  {what}"
        )
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        elif (
            int(frac * 10) != self._last_decile
            or done == self.total
            or now - self._last_line > self.every_s
        ):
            self._last_decile = int(frac * 10)
            self._last_line = now
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
