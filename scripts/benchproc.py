"""What the benchmarks read of running processes: CPU seconds, from /proc and getrusage.

Shared by scripts/bench_stub.py and scripts/bench_sync.py (Linux only).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
