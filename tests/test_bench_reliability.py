"""The benchmark's verdict on its own numbers, from synthetic observations (nothing is timed)."""

from benchmarks import reliability
from benchmarks.reliability import Observations, label, machine_lines, verdict

MB = 1 << 20


def quiet(**changes):
    """A quiet 8-core machine: low load, steady copies, timings that scale with bytes."""
    obs = Observations(
        cores=8,
        own_threads=4,
        load_start=0.3,
        load_end=4.2,
        copy_s=[0.0100, 0.0102, 0.0101, 0.0099, 0.0100],
        timings=[(1e-3 * b / MB, b) for b in (1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB, 32 * MB)],
    )
    for key, value in changes.items():
        setattr(obs, key, value)
    return obs


def test_quiet_machine_is_reliable():
    assert verdict(quiet()) == []
    assert label(verdict(quiet())) == "ok"


def test_load_at_start_above_half_the_cores():
    reasons = verdict(quiet(load_start=4.5))
    assert len(reasons) == 1 and "machine busy" in reasons[0] and "4.50 at the start" in reasons[0]
    assert verdict(quiet(load_start=4.0)) == []  # exactly half the cores: not busy


def test_load_at_end_counts_only_beyond_own_threads():
    # 4 threads of the run + 0.5 of others: fine; + 4.5 of others: busy.
    assert verdict(quiet(load_end=4.5)) == []
    reasons = verdict(quiet(load_end=8.6))
    assert len(reasons) == 1 and "8.60 at the end (4 of it this run's threads)" in reasons[0]


def test_load_unknown_is_not_a_reason():
    assert verdict(quiet(load_start=None, load_end=None)) == []


def test_copy_spread():
    assert reliability.copy_spread([0.01, 0.012]) == 1.2
    assert reliability.copy_spread([0.01]) is None
    assert verdict(quiet(copy_s=[0.010, 0.0125, 0.011])) == []
    reasons = verdict(quiet(copy_s=[0.010, 0.011, 0.016, 0.010]))
    assert len(reasons) == 1 and "1.60x the fastest" in reasons[0]
    assert "of 4 samples" in reasons[0]


def test_timings_quantized_at_a_time_slice():
    """Rows of 1 to 32 MB all near 16 ms: the scheduler, not the kernels."""
    stuck = [
        (0.016 * (1 + 0.01 * (i % 3 - 1)), b)
        for i, b in enumerate((1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB, 32 * MB))
    ]
    timings = stuck + [(1e-3 * b / MB, b) for b in (3 * MB, 5 * MB, 7 * MB)]
    reasons = verdict(quiet(timings=timings))
    assert len(reasons) == 1
    assert "6 of 9 within 2% of 16.00 ms" in reasons[0] and "32x" in reasons[0]


def test_busy_quick_run_is_quantized():
    """A --quick run beside a test run: eval rows of 3.2, 2.4 and 1.6 MB and a 64 KB row
    (some 20 us when quiet) all near 12 ms, among 79 timings spread over 0.2-130 ms."""
    stuck = [
        (11.82, 3215360),
        (11.93, 3215360),
        (11.96, 3215360),
        (12.01, 3215360),
        (11.84, 1609728),
        (12.12, 1609728),
        (11.96, 1609728),
        (11.68, 65536),
        (12.05, 2416640),
    ]
    spread = [(0.2 * 1.08**i, 4096 * (i + 1)) for i in range(79)]
    reasons = verdict(quiet(timings=[(ms / 1e3, b) for ms, b in stuck] + spread))
    assert len(reasons) == 1 and "9 of 88 within 2% of 11.96 ms" in reasons[0]


def test_same_time_for_the_same_bytes_is_not_quantized():
    """Several contenders of one row may well take the same time, and so may two rows."""
    same_row = [(0.05, 8 * MB)] * 6
    assert verdict(quiet(timings=same_row + quiet().timings)) == []
    two_rows = [(0.05, 8 * MB)] * 4 + [(0.05, 64 * MB)] * 2
    assert verdict(quiet(timings=two_rows + quiet().timings)) == []


def test_sub_millisecond_clusters_are_not_quantized():
    fast = [(2e-5, b) for b in (1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB)]
    assert verdict(quiet(timings=fast)) == []


def test_a_few_equal_timings_among_many_are_not_quantized():
    many = [(1e-3 * (1 + i / 10), (1 + i) * MB) for i in range(120)]
    few = [(0.016, 1 * MB), (0.016, 8 * MB), (0.016, 32 * MB), (0.016, 64 * MB), (0.016, 2 * MB)]
    assert verdict(quiet(timings=many + few)) == []  # 5 of 125: under 5%
    assert verdict(quiet(timings=many[:80] + few))  # 5 of 85: quantized


def test_every_reason_is_listed_and_labelled():
    busy = quiet(
        load_start=6.0,
        copy_s=[0.01, 0.02],
        timings=[(0.004, b) for b in (1 * MB, 2 * MB, 4 * MB, 16 * MB, 64 * MB)],
    )
    reasons = verdict(busy)
    assert [r.split(":")[0] for r in reasons] == [
        "machine busy",
        "copy bandwidth unsteady",
        "timings quantized",
    ]
    assert label(reasons).startswith("UNRELIABLE: machine busy") and label(reasons).count(";") == 2


def test_machine_lines():
    lines = machine_lines(quiet(load_end=None))
    assert lines[0].startswith("1-minute load average 0.30 at the start, n/a at the end; 8 cores")
    assert lines[1] == "copy samples: 5, slowest / fastest 1.03"
