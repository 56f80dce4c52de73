"""Shared fixtures: a real key directory, real signed bundle files, a real agent config.

Everything here goes through the same code an operator uses (``mgmt_stub.keys``,
``mgmt_stub.builder``, ``edge_agent.config``); nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import freezegun
import pytest

from edge_agent.clock import UTC
from edge_agent.config import AgentConfig, load_config
from edge_agent.state import StateStore
from mgmt_stub.builder import build_bundle
from mgmt_stub.keys import KeyDirectory

# freezegun swaps datetime in every loaded module; the kubernetes client's pydantic models
# then fail to build their schemas. Neither is what a frozen-time test is about.
freezegun.configure(extend_ignore_list=["kubernetes", "pydantic", "pydantic_core"])

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "bundles"
NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
LIFETIME_DAYS = 3650  # of the roots and bundles the fixtures sign at NOW
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class FakeClock:
    """An injected clock that tests move by hand, forwards or backwards."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += dt.timedelta(**delta)


@dataclass
class Site:
    """One agent installation in a temporary folder."""

    root: Path
    config_path: Path
    config: AgentConfig

    def open_store(self) -> StateStore:
        return StateStore.open(self.config.state_dir, snapshot_path=self.config.status_snapshot)

    def run(
        self, *args: str, user: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``edge-agent`` console script against this site's config."""
        command = [str(BIN / "edge-agent"), "--config", str(self.config_path), *args]
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    # Ten years: tests that run the real CLI (the real clock) must not start failing the day a
    # root or bundle signed at the fixed NOW expires.
    directory.init(now=NOW - dt.timedelta(days=1), expires_days=LIFETIME_DAYS)
    return directory


@pytest.fixture
def site(tmp_path: Path, keys: KeyDirectory) -> Site:
    return make_site(tmp_path / "site", keys)


def make_site(folder: Path, keys: KeyDirectory, *, extra: str = "") -> Site:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys.path / "roots" / "1.json", folder / "root.json")
    config_path = folder / "config.yaml"
    config_path.write_text(
        "cluster_id: site-1\n"
        "labels: {region: eu, tier: edge}\n"
        "paths:\n"
        f"  state_dir: {folder / 'state'}\n"
        f"  initial_root: {folder / 'root.json'}\n" + extra,
        encoding="utf-8",
    )
    return Site(folder, config_path, load_config(config_path))


BundleMaker = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, keys: KeyDirectory) -> BundleMaker:
    """Build a real signed bundle file from an example profile."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def make(
        revision: int,
        profile: str = "hello-web",
        *,
        target: dict[str, Any] | None = None,
        now: dt.datetime = NOW,
        key_dir: KeyDirectory | None = None,
        profile_dir: Path | None = None,
        gzip: bool = False,
        expires_days: int = LIFETIME_DAYS,
    ) -> Path:
        output = out_dir / f"{profile}-r{revision}-{len(list(out_dir.iterdir()))}.bundle"
        build_bundle(
            profile_dir or PROFILES / profile,
            keys=key_dir or keys,
            target=target or {"cluster_id": "site-1"},
            revision=revision,
            output=output,
            now=now,
            gzip=gzip,
            expires_days=expires_days,
        )
        return output

    return make


@pytest.fixture
def profile_with_artifact(tmp_path: Path) -> Callable[[bytes], Path]:
    """A copy of hello-web with one artifact of the given content."""

    def make(content: bytes) -> Path:
        folder = tmp_path / f"profile-{len(content)}-{os.urandom(4).hex()}"
        shutil.copytree(PROFILES / "hello-web", folder)
        (folder / "artifacts").mkdir()
        (folder / "artifacts" / "images.tar").write_bytes(content)
        spec = (folder / "profile.yaml").read_text(encoding="utf-8")
        spec += "artifacts:\n  - {path: artifacts/images.tar, kind: image-archive}\n"
        (folder / "profile.yaml").write_text(spec, encoding="utf-8")
        return folder

    return make


@pytest.fixture
def store(site: Site, clock: FakeClock) -> Iterator[StateStore]:
    with site.open_store() as opened:
        opened.provision(site.config.initial_root.read_bytes(), now=clock.now())
        yield opened


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Any]:
    """The management stub as a real process on loopback (see tests/stub_process.py)."""
    from tests.stub_process import StubProcess

    process = StubProcess.start(tmp_path / "stub")
    try:
        yield process
    finally:
        process.stop()


# httpcore's sync backend connects, then sets TCP_NODELAY; when the peer resets the connection
# in between (the fault proxy does, on purpose) setsockopt raises and the connected socket is
# left for the garbage collector, which closes it with a ResourceWarning (the same bug as
# python/cpython#157174 in http.client). Not our socket to close. The socket sits in a reference
# cycle (the exception's traceback), so it can be collected during any later test, in any module:
# a module whose links are reset ignores exactly this warning and collects its garbage before it
# ends (``pytestmark = HTTPCORE_SOCKET_LEAKS``), so the warning cannot surface elsewhere.
HTTPCORE_SOCKET_LEAKS = [
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.usefixtures("collect_garbage_at_module_end"),
]


@pytest.fixture(scope="module")
def collect_garbage_at_module_end() -> Iterator[None]:
    """Collect reference cycles while the module's last test (and its warning filters) runs."""
    yield
    gc.collect()


@pytest.fixture
def proxy(stub: Any) -> Iterator[Any]:
    """A ``FaultProxy`` in front of the ``stub`` fixture in force (a module may override it)."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(stub.port) as opened:
        yield opened


@pytest.fixture
def sync_sites(tmp_path: Path, stub: Any) -> Iterator[Callable[..., Any]]:
    """Make agent sites wired to the ``stub`` (``tests.sync_site.make_sync_site``); any
    process a site spawned is killed at the end."""
    from tests.sync_site import SyncSite, make_sync_site

    made: list[SyncSite] = []

    def make(cluster_id: str, **kwargs: Any) -> SyncSite:
        site = make_sync_site(tmp_path / cluster_id, stub, cluster_id, **kwargs)
        made.append(site)
        return site

    yield make
    for site in made:
        site.stop_all()
