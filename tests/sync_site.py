"""An agent site wired to a real stub process, for the sync tests.

``SyncSite`` is one agent installation (config, state, a manifest folder as its target) whose
``sync`` section points at a given URL (the stub itself, or a ``FaultProxy`` in front of it),
with a bootstrap token file. In-process, ``engine()`` builds the real ``SyncEngine`` with an
injected wall clock and monotonic clock; as processes, ``spawn("sync")`` and
``spawn("enforce")`` start the real ``edge-agent`` console script.

``server_events`` reads the stub's own database (read-only; WAL lets it run meanwhile): the
ground truth of what the management side recorded, with no deduplication of ours.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.clock import UTC
from edge_agent.config import AgentConfig, load_config
from edge_agent.enforcer import run_cycle
from edge_agent.reconcile.manifest_dir import ManifestDirTarget
from edge_agent.state import StateStore
from edge_agent.sync.engine import SyncEngine
from tests.conftest import BIN, PROFILES, FakeClock, wait_for
from tests.stub_process import StubProcess


@contextlib.contextmanager
def profiled_stub(folder: Path) -> Iterator[StubProcess]:
    """A stub process with profiles ``web`` (hello-web) and ``base`` (baseline) stored."""
    process = StubProcess.start(folder)
    try:
        process.put_profile("web", PROFILES / "hello-web")
        process.put_profile("base", PROFILES / "baseline")
        yield process
    finally:
        process.stop()


class Ticker:
    """A fake monotonic clock: the link's backoff moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class SyncSite:
    root: Path
    cluster_id: str
    config_path: Path
    config: AgentConfig
    stub: StubProcess
    clock: FakeClock = field(default_factory=lambda: FakeClock(dt.datetime.now(UTC)))
    ticker: Ticker = field(default_factory=Ticker)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def open_store(self) -> StateStore:
        """The site's store, provisioned with its trust root (as every command does)."""
        store = StateStore.open(self.config.state_dir, snapshot_path=self.config.status_snapshot)
        store.provision(self.config.initial_root.read_bytes(), now=self.clock.now())
        return store

    def engine(self, store: StateStore, **kwargs: Any) -> SyncEngine:
        return SyncEngine(self.config, store, self.clock, monotonic=self.ticker, **kwargs)

    def enforce(self, store: StateStore) -> dict[str, Any] | None:
        return run_cycle(store, ManifestDirTarget(self.manifests), self.clock)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "edge-agent"), "--config", str(self.config_path), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{args[0]}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(BIN / "edge-agent"), "--config", str(self.config_path), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.processes.clear()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def assign(self, profile: str, name: str | None = None) -> None:
        """Assign ``profile`` to this cluster alone."""
        response = self.stub.admin.put(
            f"/v1/admin/assignments/{name or 'a-' + self.cluster_id}",
            json={"profile": profile, "selector": {"cluster_id": self.cluster_id}},
        )
        response.raise_for_status()

    def server_events(self) -> list[dict[str, Any]]:
        return server_events(self.stub, self.cluster_id)

    def desired_on_server(self, timeout_s: float = 30.0) -> int:
        """The revision the server wants for this cluster, once it has enrolled and one is set."""
        found: list[int] = []

        def known() -> bool:
            response = self.stub.admin.get(f"/v1/admin/clusters/{self.cluster_id}")
            if response.status_code == 200 and response.json().get("desired"):
                found.append(int(response.json()["desired"]))
                return True
            return False

        wait_for(known, timeout_s)
        return found[-1]

    def server_cluster(self) -> dict[str, Any]:
        response = self.stub.admin.get(f"/v1/admin/clusters/{self.cluster_id}")
        response.raise_for_status()
        return dict(response.json())


def server_events(stub: StubProcess, cluster_id: str) -> list[dict[str, Any]]:
    uri = f"file:{stub.data / 'stub.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT event_id, type, time, data FROM events WHERE cluster_id=? ORDER BY received_at, time",
            (cluster_id,),
        ).fetchall()
    return [dict(r) for r in rows]


def make_sync_site(
    folder: Path,
    stub: StubProcess,
    cluster_id: str,
    *,
    server: str | None = None,
    labels: dict[str, str] | None = None,
    token: bool = True,
    extra_sync: str = "retry_base_s: 0.5, retry_max_s: 2, timeout_s: 3, wait_s: 2",
) -> SyncSite:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(stub.keys / "roots" / "1.json", folder / "root.json")
    (folder / "manifests").mkdir(exist_ok=True)
    token_file = folder / "enroll.token"
    if token:
        token_file.write_text(stub.token(uses=1, cluster_id=cluster_id) + "\n")
        os.chmod(token_file, 0o600)
    label_text = ", ".join(f"{k}: {v}" for k, v in (labels or {"region": "eu"}).items())
    config_path = folder / "config.yaml"
    config_path.write_text(
        f"cluster_id: {cluster_id}\n"
        f"labels: {{{label_text}}}\n"
        f"paths: {{state_dir: {folder / 'state'}, initial_root: {folder / 'root.json'}}}\n"
        f"target: {{kind: manifest-dir, folder: {folder / 'manifests'}}}\n"
        f"sync: {{server: '{server or stub.url}', enroll_token_file: {token_file}, {extra_sync}}}\n",
        encoding="utf-8",
    )
    return SyncSite(folder, cluster_id, config_path, load_config(config_path), stub)


def python_child(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]
