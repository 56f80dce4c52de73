"""Child process of the kill -9 action test: the real sync engine with a fake, slow action.

Usage: python sync_action_child.py CONFIG MARKER slow|fast

``FakeSlowAction`` stands in for a long action at the ``ActionRunner`` seam: each time it
runs it appends the action id to MARKER (flushed and fsynced, so the parent sees it), then,
in ``slow`` mode, sleeps long enough to be killed in the middle. Everything else (store,
journal, client, server) is real. Prints "cycle <result>" after each cycle.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.clock import SystemClock
from edge_agent.config import load_config
from edge_agent.state import StateStore
from edge_agent.sync.client import Action
from edge_agent.sync.engine import SyncEngine


class FakeSlowAction:
    def __init__(self, marker: Path, slow: bool) -> None:
        self.marker = marker
        self.slow = slow

    def __call__(self, action: Action) -> tuple[str, str, dict[str, Any]]:
        with self.marker.open("a") as handle:
            handle.write(f"{action.id}\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.slow:
            time.sleep(60)
        return "succeeded", "fake action ran", {}


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    runner = FakeSlowAction(Path(sys.argv[2]), sys.argv[3] == "slow")
    clock = SystemClock()
    with StateStore.open(config.state_dir, snapshot_path=config.status_snapshot) as store:
        store.provision(config.initial_root.read_bytes(), now=clock.now())
        engine = SyncEngine(config, store, clock, actions=runner)
        engine.recover_interrupted()
        outcome = engine.cycle()
        print(f"cycle {outcome.result}", flush=True)
        engine.close()


if __name__ == "__main__":
    main()
