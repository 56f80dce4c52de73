"""scripts/bench_daemon.py --quick: the appliance benchmark's smoke run completes (with the
one-file binary's figures when dist/edge-agent is built)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_quick_run_exits_0_and_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_daemon.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for phrase in ("`edge-agent status` (venv), median", "python -c pass", "at rest: peak RSS"):
        assert phrase in result.stdout, result.stdout
    if (REPO / "dist" / "edge-agent").exists():
        for phrase in ("`dist/edge-agent`: size", "one-file cost", "2 processes"):
            assert phrase in result.stdout, result.stdout
    else:
        assert "no binary measured" in result.stdout, result.stdout
