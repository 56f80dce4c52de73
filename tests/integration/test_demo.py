"""The README's main job (the offline round trip) runs to the end and says so."""

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
    assert "rejected: hash-mismatch" in result.stderr
    assert "rejected: key-revoked" in result.stderr
