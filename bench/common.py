"""Helpers the benchmarks share (imported as `common`: the scripts run as `python bench/X.py`)."""

from __future__ import annotations

import time


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(busy_below: float = 0.15, window_s: float = 1.0, max_s: float = 30.0) -> float:
    """Wait until the machine's CPUs are mostly idle for `window_s`; returns seconds waited.

    A freshly started Ray keeps the CPUs busy for several seconds (its workers import torch
    and the trial modules); a run timed in that window measures Ray's start-up, not the
    steady state that hours of training see. Every timed run waits here, baselines included.
    Gives up after `max_s` (a machine shared with other work may never be quiet).
    """
    t0 = time.monotonic()
    try:
        prev = _cpu_times()
    except OSError:  # not Linux: nothing to wait for
        return 0.0
    while time.monotonic() - t0 < max_s:
        time.sleep(window_s)
        cur = _cpu_times()
        busy, total = cur[0] - prev[0], cur[1] - prev[1]
        prev = cur
        if total and busy / total < busy_below:
            break
    return round(time.monotonic() - t0, 1)


def cpu_busy_percent(seconds: float = 5.0) -> float:
    """Share of all CPUs busy over the next `seconds` (what idle daemons cost, for instance)."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    return round(100 * (b[0] - a[0]) / max(1, b[1] - a[1]), 1)
