"""The systemd unit (scripts/edge-agent.service) checked by systemd's own tools.

``systemd-analyze verify`` exits 0 even for a misspelt key (it only warns), so any output
at all fails the check; ``security --offline=yes`` rates the sandboxing. The unit's binary
path is pointed at this checkout's ``edge-agent`` (verify checks it is executable).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO

UNIT = REPO / "scripts" / "edge-agent.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)
MAX_EXPOSURE = 2.0


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    unit = tmp_path / "edge-agent.service"
    body = text if text is not None else UNIT.read_text()
    unit.write_text(body.replace("/usr/local/bin/edge-agent", str(BIN / "edge-agent")))
    return unit


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_the_unit_verifies_without_a_word(tmp_path: Path) -> None:
    unit = local_copy(tmp_path)
    result = analyze("verify", f"./{unit.name}", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_a_misspelt_key_would_be_caught(tmp_path: Path) -> None:
    unit = local_copy(tmp_path, UNIT.read_text().replace("ProtectHome=", "ProtectHone="))
    result = analyze("verify", f"./{unit.name}", cwd=tmp_path)
    assert "Unknown key" in result.stdout + result.stderr  # exit 0 all the same


def test_the_unit_is_sandboxed(tmp_path: Path) -> None:
    unit = local_copy(tmp_path)
    result = analyze("security", "--offline=yes", f"./{unit.name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout[-500:]
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout[-2000:]
    text = UNIT.read_text()
    for key in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ):
        assert key in text
