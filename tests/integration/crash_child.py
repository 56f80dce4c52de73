"""Child process of the crash test: build and import ever newer revisions until killed.

Usage: python crash_child.py CONFIG KEYDIR PROFILE_A PROFILE_B
Prints "committed N" after every commit (flushed), so the parent knows progress.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from edge_agent.clock import SystemClock
from edge_agent.config import load_config
from edge_agent.importer import import_file
from edge_agent.state import StateStore
from mgmt_stub.builder import build_bundle
from mgmt_stub.keys import KeyDirectory


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    keys = KeyDirectory(Path(sys.argv[2]))
    profiles = [Path(sys.argv[3]), Path(sys.argv[4])]
    out = Path(sys.argv[2]).parent / "child-out"
    out.mkdir(exist_ok=True)
    clock = SystemClock()
    with StateStore.open(config.state_dir, snapshot_path=config.status_snapshot) as store:
        store.provision(config.initial_root.read_bytes(), now=clock.now())
        while True:
            revision = (store.trust().revision or 0) + 1
            bundle = out / f"r{revision}.bundle"
            build_bundle(
                profiles[revision % 2],
                keys=keys,
                target={"cluster_id": config.cluster_id},
                revision=revision,
                output=bundle,
                now=clock.now() - dt.timedelta(minutes=1),
            )
            import_file(bundle, store=store, config=config, clock=clock)
            print(f"committed {revision}", flush=True)


if __name__ == "__main__":
    main()
