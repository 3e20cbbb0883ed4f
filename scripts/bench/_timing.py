"""Timing helper shared by the benchmarks (not a benchmark: run_all skips names starting with _): interleaved
repetitions, so both sides of a ratio see the same load."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``reps`` rounds of all of them (order alternating per round);
    returns the per-round wall times in seconds, per name."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times
