"""CPU profiling: each phase's share of a ``perf record`` profile (``python -m
cpu_profile.phase_shares``), steadier than timings on a shared machine."""
