"""Whether a run's timings can be trusted: machine load, copy-bandwidth spread, quantized times.

A busy machine does not make a benchmark fail; it makes its numbers wrong. A run
records the 1-minute load average at its start and end and the samples of its
device-copy bandwidth (at the start and again at the end), and :func:`verdict`
names every reason to distrust it:

* **load**: the load average above ``LOAD_SHARE`` x cores, counting at the end only
  what is beyond the run's own threads (at the start the run has barely begun);
* **copy spread**: the slowest copy sample more than ``COPY_SPREAD_MAX`` times the
  fastest: the same copy of the same buffer should take the same time;
* **quantized timings**: at least ``QUANT_MIN_SHARE`` of the timings (and
  ``QUANT_MIN_COUNT``) within ``QUANT_TOL`` of one value of a millisecond or more,
  from rows of ``QUANT_MIN_SIZES`` or more sizes that differ by ``QUANT_BYTES_SPAN``
  times or more: the scheduler's time slice, not the kernels, set them. (The
  contenders of one row may well take the same time; rows of different sizes may not.)

Every check is a pure function of the observations, so the tests feed it numbers.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

LOAD_SHARE = 0.5
COPY_SPREAD_MAX = 1.3
QUANT_TOL = 0.02
QUANT_MIN_SHARE = 0.05
QUANT_MIN_COUNT = 5
QUANT_MIN_SIZES = 3
QUANT_MIN_S = 1e-3
QUANT_BYTES_SPAN = 4.0


@dataclass
class Observations:
    """What a run saw of its machine; timings are (seconds, bytes) per row and contender."""

    cores: int
    own_threads: int
    load_start: Optional[float] = None
    load_end: Optional[float] = None
    copy_s: List[float] = field(default_factory=list)
    timings: List[Tuple[float, int]] = field(default_factory=list)


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the system does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_reason(obs: Observations) -> Optional[str]:
    limit = LOAD_SHARE * obs.cores
    busy = []
    if obs.load_start is not None and obs.load_start > limit:
        busy.append(f"{obs.load_start:.2f} at the start")
    if obs.load_end is not None and obs.load_end - obs.own_threads > limit:
        busy.append(f"{obs.load_end:.2f} at the end ({obs.own_threads} of it this run's threads)")
    if not busy:
        return None
    return (
        f"machine busy: 1-minute load average {' and '.join(busy)}, above "
        f"{LOAD_SHARE:g} x {obs.cores} cores"
    )


def copy_spread(copy_s: Sequence[float]) -> Optional[float]:
    """Slowest over fastest copy sample, or None with fewer than two samples."""
    valid = [t for t in copy_s if t > 0]
    return max(valid) / min(valid) if len(valid) >= 2 else None


def copy_reason(obs: Observations) -> Optional[str]:
    spread = copy_spread(obs.copy_s)
    if spread is None or spread <= COPY_SPREAD_MAX:
        return None
    return (
        f"copy bandwidth unsteady: the slowest of {len(obs.copy_s)} samples took "
        f"{spread:.2f}x the fastest (limit {COPY_SPREAD_MAX:g}x)"
    )


def quantum(timings: Sequence[Tuple[float, int]]) -> Optional[Tuple[float, int, float]]:
    """(value s, count, bytes ratio) of the largest cluster of timings that looks quantized
    (see the module docstring), or None."""
    points = sorted((t, b) for t, b in timings if t >= QUANT_MIN_S and b > 0)
    need = max(QUANT_MIN_COUNT, QUANT_MIN_SHARE * len(timings))
    best = None
    j = 0
    for i in range(len(points)):
        # Window [t_i, t_i * (1 + 2 tol)]: every value within tol of its middle.
        j = max(j, i)
        while j + 1 < len(points) and points[j + 1][0] <= points[i][0] * (1 + 2 * QUANT_TOL):
            j += 1
        window = points[i : j + 1]
        sizes = {b for _, b in window}
        ratio = max(sizes) / min(sizes)
        if (
            len(window) >= need
            and len(sizes) >= QUANT_MIN_SIZES
            and ratio >= QUANT_BYTES_SPAN
            and (best is None or len(window) > best[1])
        ):
            best = (statistics.median(t for t, _ in window), len(window), ratio)
    return best


def quantized_reason(obs: Observations) -> Optional[str]:
    found = quantum(obs.timings)
    if found is None:
        return None
    value, count, ratio = found
    return (
        f"timings quantized: {count} of {len(obs.timings)} within {100 * QUANT_TOL:g}% of "
        f"{value * 1e3:.2f} ms over rows whose bytes differ {ratio:.0f}x (the scheduler's "
        "time slice, not the kernels)"
    )


def verdict(obs: Observations) -> List[str]:
    """Every reason to distrust the run; empty when none was seen."""
    reasons = (load_reason(obs), copy_reason(obs), quantized_reason(obs))
    return [r for r in reasons if r]


def label(reasons: Sequence[str]) -> str:
    """ "ok", or "UNRELIABLE: " and the reasons (the CSV's reliability column)."""
    return "UNRELIABLE: " + "; ".join(reasons) if reasons else "ok"


def machine_lines(obs: Observations) -> List[str]:
    """What was observed, for the report's Machine section."""

    def load(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        f"1-minute load average {load(obs.load_start)} at the start, "
        f"{load(obs.load_end)} at the end; {obs.cores} cores, {obs.own_threads} "
        "threads of this run"
    ]
    spread = copy_spread(obs.copy_s)
    if spread is not None:
        lines.append(f"copy samples: {len(obs.copy_s)}, slowest / fastest {spread:.2f}")
    return lines
