"""How busy the rest of the machine is, for the benchmarks' "other processes (cores)" column and ``--wait-quiet``.

PyTorch's CPU threads slow down by 10x or more when another process competes for the cores, so each benchmark
reports, per run, how many cores other processes kept busy (from ``/proc/stat``; it also counts processes of other
containers, which ``ps`` does not show), and can wait for a quiet machine before a run.
"""

from __future__ import annotations

import os
import time


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine from /proc/stat, CPU seconds of this process and its waited-for
    children, e.g. DataLoader workers), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system (idle iowait) irq softirq steal
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def others_cores(before, after, wall: float) -> float:
    """Average number of cores other processes kept busy between two ``cpu_seconds()`` readings.

    Child processes count as ours only once they have exited and been waited for.
    """
    if before is None or after is None or wall <= 0:
        return float("nan")
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall


def wait_quiet(max_others: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other processes use less than ``max_others`` cores over one second."""
    deadline = time.monotonic() + timeout
    while True:
        a = cpu_seconds()
        time.sleep(1.0)
        busy = others_cores(a, cpu_seconds(), 1.0)
        if not busy >= max_others or time.monotonic() >= deadline:  # NaN (no /proc/stat): do not wait
            return busy
        time.sleep(4.0)
