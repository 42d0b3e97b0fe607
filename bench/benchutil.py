"""Helpers shared by the benchmarks: machine facts, and timing on a shared machine.

The benchmark machine is shared (2 cores), so a run can be slowed by someone
else's work.  :class:`CpuWatch` measures how much CPU *other* processes used
during a timed run (system-wide busy time from ``/proc/stat`` minus the child's
own rusage); a run where others used more than a small share is retried, and
:func:`wait_quiet` waits for an idle machine before starting one.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds() -> float:
    """System-wide non-idle CPU seconds since boot (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK


def busy_fraction(window: float = 0.5) -> float:
    """Share of all cores busy over ``window`` seconds (0..1)."""
    before = cpu_busy_seconds()
    time.sleep(window)
    return (cpu_busy_seconds() - before) / (window * (os.cpu_count() or 1))


def wait_quiet(limit: float = 0.10, timeout: float = 300.0) -> float:
    """Wait until the machine is idle (busy share < ``limit``); returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        busy = busy_fraction()
        if busy < limit or time.monotonic() > deadline:
            if busy >= limit:
                print(f"  (machine still {busy:.0%} busy after {timeout:.0f} s; going on)")
            return busy
        time.sleep(1.0)


class CpuWatch:
    """CPU seconds used by everything on the machine between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.busy = 0.0
        self._start = 0.0

    def start(self) -> None:
        self._start = cpu_busy_seconds()

    def stop(self) -> float:
        self.busy = cpu_busy_seconds() - self._start
        return self.busy


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """The facts the README records for every result."""
    lscpu = _cmd(["lscpu"])
    model = re.search(r"Model name:\s*(.+)", lscpu)
    free = _cmd(["free", "-g"])
    total = re.search(r"Mem:\s+(\d+)", free)
    return {
        "date_utc": _cmd(["date", "-u"]),
        "nproc": int(_cmd(["nproc"]) or os.cpu_count() or 0),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "mem_total_gb": int(total.group(1)) if total else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "code": code_version(),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and which source files differed from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    head = _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", str(root), "status", "--porcelain", "--", "actors", "runtime"])
    return {"commit": head, "uncommitted_source_changes": dirty.splitlines()}


def venv_tool(name: str) -> str:
    """A console script next to the running interpreter (the venv), else from PATH."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else shutil.which(name) or name
