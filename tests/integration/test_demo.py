"""The README's main job (the offline loop with the daemon) runs to the end and says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import BIN, REPO


def test_offline_round_trip_script(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "offline_round_trip.sh"), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EDGE_AGENT_BIN": str(BIN)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round trip OK: revision 2 in force under root version 2" in result.stdout
    assert "written (file changed behind the agent's back)" in result.stdout  # healed
    assert "rejected: key-revoked" in result.stderr  # the replay, imported by hand
    daemon_log = (tmp_path / "demo" / "daemon.log").read_text()
    assert "evil-r3.bundle rejected: hash-mismatch" in daemon_log  # the tampered copy
    assert "status report" in daemon_log and "written to" in daemon_log
    assert "acknowledged" in result.stdout and "carried events delivered" in result.stdout
    assert "Traceback" not in daemon_log
