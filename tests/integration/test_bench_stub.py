"""scripts/bench_stub.py --quick: the stub benchmark's smoke run completes and prints its figures.

It starts the real stub, enrolls a few hundred agents, offers one small load level per
generator, counts an idle cycle's bytes, holds a few hundred waits and times a profile change.
Targets are not checked here (a quick run is far below them); only that every phase ran.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_quick_run_exits_0_and_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_stub.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,  # a guard against a hang: the quick run itself takes about 80 s by design
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for phrase in (
        "agents held at a 60 s cycle",
        "bytes on the wire per idle cycle",
        "idle notification connections held",
        "profile change to 50 waiting agents",
    ):
        assert phrase in out, out
