"""``files.process_alive``: how a writer tells a dead process's leftovers from a live one's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge_agent.files import process_alive
from tests.conftest import wait_for


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)


def test_a_zombie_dead_but_not_yet_reaped_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not waited for: once it exits it stays a zombie, and signal 0 still reaches it.
        stat = Path(f"/proc/{child.pid}/stat")
        wait_for(lambda: stat.read_text().rpartition(")")[2].split()[0] == "Z", 10)
        os.kill(child.pid, 0)
        assert not process_alive(child.pid)
    finally:
        child.wait()
