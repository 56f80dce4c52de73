"""scripts/bench_sync.py --quick: the sync benchmark's smoke run completes and prints its figures.

It starts the real stub, enrols one site through the fault proxy, measures idle cycles and
long polls, queues a few thousand events while the link is down and delivers them in one
cycle, checking that the stub recorded every one. Targets are not checked here (a quick run
is far below the backlog's size); only that every phase ran and every check held.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_quick_run_exits_0_and_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_sync.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for phrase in (
        "baseline: enqueue into the state store",
        "delivery after reconnect",
        "delivery time / enqueue time",
        "bytes agent to stub",
        "POST batches",
        "idle cycle + long poll",
        "server recorded 2,000 of 2,000 events; outbox empty",
        "bytes per idle sync cycle",
    ):
        assert phrase in out, out
    rate = re.search(r"delivery rate \| ([\d,]+) events/s", out)
    assert rate is not None and int(rate[1].replace(",", "")) > 0, out
