"""Review of the issue 6 groundwork: daemon, notify, gate, hold/pending policy, metrics, logs.

Real parts throughout: signed bundles from the ``make_bundle`` fixture, the real StateStore,
the manifest-folder target, ``edge-agent run`` as a real process under a datagram socket that
plays systemd. A test marked ``xfail(strict=True)`` exposes a bug found in review; the others
guard behaviour the review checked and found right.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.clock import UTC
from edge_agent.config import load_config
from edge_agent.control import hold, promote_if_due, release
from edge_agent.errors import BundleError, ConfigError
from edge_agent.gate import inside, next_start, parse_window, parse_windows
from edge_agent.importer import import_file
from edge_agent.logs import LineFormatter
from edge_agent.state import StateStore
from edge_agent.status import report
from edge_agent.systemd import Notifier
from mgmt_stub.keys import KeyDirectory
from tests.conftest import BIN, REPO, BundleMaker, FakeClock, Site, wait_for
from tests.fake_systemd import FakeSystemd
from tests.stub_process import free_port
from tests.variants import BERLIN, WEDNESDAY_NOON, berlin_site, daemon_site, profile_variant

# -- helpers ---------------------------------------------------------------------------------


def provisioned(site: Site, clock: FakeClock) -> StateStore:
    store = site.open_store()
    store.provision(site.config.initial_root.read_bytes(), now=clock.now())
    return store


def revision_in_force(store: StateStore) -> int | None:
    policy = store.current_policy()
    return None if policy is None else int(policy["revision"])


def blobs(store: StateStore) -> set[str]:
    return {p.name for p in (store.state_dir / "artifacts").iterdir()}


def artifact_sha(store: StateStore, key: str) -> set[str]:
    getter = {"pending": store.pending_policy, "current": store.current_policy}[key]
    policy = getter()
    return {a["sha256"] for a in (policy or {}).get("artifacts", [])}


# -- the pending revision and rollback protection ----------------------------------------------


def test_the_pending_bundle_imported_again_is_not_reported_in_force(
    site: Site, make_bundle: BundleMaker
) -> None:
    site = berlin_site(site)
    clock = FakeClock(WEDNESDAY_NOON)
    with provisioned(site, clock) as store:
        import_file(make_bundle(1, now=clock.now()), store=store, config=site.config, clock=clock)
        hold(store, "inspection", clock)
        second = make_bundle(2, "baseline", now=clock.now())
        assert (
            import_file(second, store=store, config=site.config, clock=clock).outcome == "pending"
        )
        again = import_file(second, store=store, config=site.config, clock=clock)
        assert revision_in_force(store) == 1
        assert store.imports()[-1]["result"] != "already-in-force"
        assert again.outcome == "pending"


def test_pending_revisions_rollback_replacement_and_their_artifacts(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    """An older bundle is a rollback, a newer one replaces the pending one; the artifacts of
    the policies kept (current, previous, pending) are never collected, the superseded
    pending one's are."""
    site = berlin_site(site)
    clock = FakeClock(WEDNESDAY_NOON)

    def made(rev: int, content: bytes | None = None) -> Path:
        return make_bundle(
            rev, profile_dir=profile_variant(tmp_path, "hello-web", artifact=content)
        )

    with provisioned(site, clock) as store:
        import_file(made(1), store=store, config=site.config, clock=clock)
        hold(store, "inspection", clock)
        import_file(made(3, b"A" * 4096), store=store, config=site.config, clock=clock)
        a = artifact_sha(store, "pending")
        assert a and a <= blobs(store)
        with pytest.raises(BundleError) as older:
            import_file(made(2), store=store, config=site.config, clock=clock)
        assert older.value.code.value == "rollback"
        assert a <= blobs(store) and store.pending_policy()["revision"] == 3  # type: ignore[index]

        import_file(made(4, b"B" * 4096), store=store, config=site.config, clock=clock)
        b = artifact_sha(store, "pending")
        assert store.pending_policy()["revision"] == 4  # type: ignore[index]
        assert b <= blobs(store) and not (a & blobs(store))  # superseded: collected
        assert revision_in_force(store) == 1

        released, applied, _ = release(store, site.config, clock)
        assert released is not None and applied == 4 and b <= blobs(store)
        hold(store, "again", clock)
        import_file(made(5, b"C" * 4096), store=store, config=site.config, clock=clock)
        assert b | artifact_sha(store, "pending") <= blobs(store)


def test_kill_9_around_pending_commits_and_promotions_leaves_a_whole_policy(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    site = berlin_site(site)
    clock = FakeClock(WEDNESDAY_NOON)
    with provisioned(site, clock) as store:
        import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    bundles = [
        str(
            make_bundle(
                rev,
                profile_dir=profile_variant(tmp_path, "hello-web", artifact=bytes([rev]) * 70_000),
            )
        )
        for rev in range(2, 8)
    ]
    child = (
        "import sys, datetime as dt\n"
        "from pathlib import Path\n"
        "from edge_agent.config import load_config\n"
        "from edge_agent.control import hold, release\n"
        "from edge_agent.importer import import_file\n"
        "from edge_agent.state import StateStore\n"
        "from tests.conftest import FakeClock\n"
        "config = load_config(Path(sys.argv[1]))\n"
        "clock = FakeClock(dt.datetime.fromisoformat(sys.argv[2]))\n"
        "store = StateStore.open(config.state_dir, snapshot_path=config.status_snapshot)\n"
        "for i, path in enumerate(sys.argv[3:]):\n"
        "    hold(store, 'loop', clock)\n"
        "    import_file(Path(path), store=store, config=config, clock=clock)\n"
        "    print('promoting', i, flush=True)\n"
        "    release(store, config, clock)\n"
        "print('done', flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child, str(site.config_path), clock.now().isoformat(), *bundles],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    reached = False
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("promoting 2"):
                reached = True
                break
        process.kill()  # in the middle of the third promotion
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert reached, "the child failed before its third promotion"
    with site.open_store() as store:
        current, pending = store.current_policy(), store.pending_policy()
        assert current is not None
        view = store.view()
        assert view["policy"]["revision"] == current["revision"]
        assert store.trust().revision == (pending or current)["revision"]
        if pending is not None:
            assert view["pending_policy"]["revision"] == pending["revision"] > current["revision"]
        named = artifact_sha(store, "current") | artifact_sha(store, "pending")
        previous = store.previous_policy() or {}
        named |= {a["sha256"] for a in previous.get("artifacts", [])}
        assert named <= blobs(store)


# -- hold races --------------------------------------------------------------------------------


class HoldAfterTheDecision(FakeClock):
    """A clock whose second reading, once armed, is the moment the person on site runs
    ``edge-agent hold`` (another process: its own store handle)."""

    def __init__(self, now: dt.datetime, site: Site) -> None:
        super().__init__(now)
        self.site = site
        self.readings: int | None = None

    def now(self) -> dt.datetime:
        if self.readings is not None:
            self.readings += 1
            if self.readings == 2:
                with self.site.open_store() as other:
                    other.set_hold("stop: inspection", now=self.current)
        return self.current


def test_a_hold_set_while_a_promotion_is_decided_still_stops_it(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    site = berlin_site(site)
    clock = HoldAfterTheDecision(WEDNESDAY_NOON, site)
    sat = ["Sat 02:00-04:00"]
    with provisioned(site, clock) as store:
        first = make_bundle(
            1, profile_dir=profile_variant(tmp_path, "hello-web", maintenance_windows=sat)
        )
        import_file(first, store=store, config=site.config, clock=clock)
        second = make_bundle(2, "baseline")
        assert (
            import_file(second, store=store, config=site.config, clock=clock).outcome == "pending"
        )
        clock.current = dt.datetime(2026, 11, 28, 2, 30, tzinfo=BERLIN).astimezone(UTC)
        clock.readings = 0
        promote_if_due(store, site.config, clock)
        clock.readings = None
        assert store.hold() is not None  # the hold was set...
        assert revision_in_force(store) == 1  # ...and must win


# -- maintenance windows: DST and the week wrap ------------------------------------------------


def test_a_window_in_the_spring_forward_gap_opens(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    site = berlin_site(site)
    clock = FakeClock(dt.datetime(2027, 3, 27, 12, 0, tzinfo=BERLIN).astimezone(UTC))
    gap = ["Sun 02:00-03:00"]  # 2027-03-28 02:00-03:00 does not exist in Berlin
    with provisioned(site, clock) as store:
        first = make_bundle(
            1,
            profile_dir=profile_variant(tmp_path, "hello-web", maintenance_windows=gap),
            now=clock.now(),
        )
        import_file(first, store=store, config=site.config, clock=clock)
        second = make_bundle(2, "baseline", now=clock.now())
        assert (
            import_file(second, store=store, config=site.config, clock=clock).outcome == "pending"
        )
        doc = report(
            store.view(), cluster_id="s", labels={}, source="t", now=clock.now(), site_tz=BERLIN
        )
        promised = dt.datetime.fromisoformat(doc["pending"]["applies_at"])
        assert promised.date() == dt.date(2027, 3, 28)
        clock.current = promised.astimezone(UTC) + dt.timedelta(minutes=1)
        assert promote_if_due(store, site.config, clock) == 2


def test_week_wrap_and_fall_back_windows() -> None:
    def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime(2026, 11, day, hour, minute, tzinfo=BERLIN)  # 2026-11-29 is a Sunday

    assert parse_window("Sun-Mon 23:00-01:00").days == frozenset({6, 0})
    assert parse_window("Sat-Sun 00:00-01:00").days == frozenset({5, 6})
    sunday_night = parse_windows(["Sun 23:00-01:00"])
    assert inside(sunday_night, at(30, 0, 30))  # Monday 00:30: Sunday's window still open
    assert not inside(sunday_night, at(30, 1, 0))  # the end is exclusive
    assert not inside(sunday_night, at(24, 0, 30))  # Tuesday: Monday is not a window day
    assert next_start(sunday_night, at(30, 1, 0)) == at(29, 23) + dt.timedelta(days=7)
    assert next_start(sunday_night, at(28, 12)) == at(29, 23)
    # The fall-back night: the window's wall hour happens twice and is open both times.
    fall = parse_windows(["Sun 02:00-03:00"])
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC).astimezone(BERLIN)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC).astimezone(BERLIN)  # 02:30 CET
    assert inside(fall, first) and inside(fall, second)


# -- systemd notify and journald lines ---------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_a_nul_in_the_status_does_not_lose_ready(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier(path).ready("DEGRADED: held: inspection\x00FORGED=1")
    data = sock.recv(4096)
    assert b"READY=1" in data and b"\x00" not in data


def test_a_send_never_raises(listener: tuple[socket.socket, str]) -> None:
    _sock, path = listener
    assert Notifier(path).status("FAILING: /media/usb/b\udcfcndel.bundle") is True


def test_one_journal_line_per_record_even_with_a_nul() -> None:
    record = logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, "a\x00<3>b", (), None)
    text = LineFormatter(journal=True).format(record)
    assert text.startswith("<3>ERROR ") and "\x00" not in text


# -- edge-agent run as a real process ----------------------------------------------------------


@pytest.fixture
def daemon(
    tmp_path: Path, keys: KeyDirectory
) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], FakeSystemd, Path, Path, Path]]]:
    """Start ``edge-agent run`` on a fresh site (drop folder, manifest folder, + extra config)."""
    started: list[subprocess.Popen[bytes]] = []
    fakes: list[FakeSystemd] = []

    def start(extra: str) -> tuple[subprocess.Popen[bytes], FakeSystemd, Path, Path, Path]:
        config, drop, manifests = daemon_site(tmp_path, keys, extra)
        systemd = FakeSystemd(tmp_path)
        fakes.append(systemd)
        env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}
        env.pop("WATCHDOG_PID", None)
        log = tmp_path / "run.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(BIN / "edge-agent"), "--config", str(config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        started.append(process)
        return process, systemd, drop, manifests, log

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    for fake in fakes:
        fake.sock.close()


def tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_tasks(pid: int, quiet_s: float = 1.0, timeout_s: float = 20.0) -> int:
    """The process's thread count once it has not changed for ``quiet_s`` (a part's threads
    start just after READY: a count taken at READY is too early)."""
    deadline = time.monotonic() + timeout_s
    count, since = tasks(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = tasks(pid)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return count
    raise AssertionError(f"thread count still changing after {timeout_s} s")


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses of the process's listening TCP sockets on ``port`` (hex, as in /proc)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_metrics_endpoint_answers_only_get_metrics_on_loopback_and_reloads_leak_no_threads(
    daemon: Callable[..., tuple[subprocess.Popen[bytes], FakeSystemd, Path, Path, Path]],
    make_bundle: BundleMaker,
) -> None:
    port = free_port()
    process, systemd, drop, manifests, _log = daemon(f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
    wait_for(lambda: systemd.seen("READY", "1") == 1, 20)
    shutil.copy(make_bundle(1), drop / "r1.bundle")
    wait_for(lambda: len(list(manifests.glob("*.yaml"))) == 2, 30)

    assert listening_addresses(process.pid, port) == {"0100007F"}  # 127.0.0.1 only
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/metrics?x=1", timeout=5).status_code == 200
    assert httpx.post(f"{url}/metrics", content=b"x", timeout=5).status_code == 501
    assert httpx.head(f"{url}/metrics", timeout=5).status_code == 501
    assert httpx.get(f"{url}/metrics/", timeout=5).status_code == 404
    assert httpx.get(f"{url}/", timeout=5).status_code == 404

    process.send_signal(signal.SIGHUP)
    wait_for(lambda: systemd.seen("READY", "1") == 2, 20)
    baseline = settled_tasks(process.pid)
    for n in (3, 4, 5):
        process.send_signal(signal.SIGHUP)
        wait_for(lambda n=n: systemd.seen("READY", "1") == n, 20)  # type: ignore[misc]
    assert settled_tasks(process.pid) <= baseline  # a reload leaves no thread behind
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_metrics_listen_refuses_non_loopback(tmp_path: Path, site: Site) -> None:
    for listen in ("0.0.0.0:9479", "[::]:9479", "10.0.0.1:9479", ":9479"):
        site.config_path.write_text(
            site.config_path.read_text().split("metrics:")[0] + f"metrics: {{listen: '{listen}'}}\n"
        )
        with pytest.raises(ConfigError):
            load_config(site.config_path)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_metrics_listen_on_the_ipv6_loopback_the_config_accepts(
    daemon: Callable[..., tuple[subprocess.Popen[bytes], FakeSystemd, Path, Path, Path]],
) -> None:
    port = free_port()
    process, systemd, _drop, _manifests, _log = daemon(f"metrics: {{listen: '::1:{port}'}}\n")
    wait_for(lambda: systemd.seen("READY", "1") == 1 or process.poll() is not None, 20)
    assert process.poll() is None and systemd.seen("READY", "1") == 1
    assert httpx.get(f"http://[::1]:{port}/metrics", timeout=5).status_code == 200


def test_sigterm_stops_the_daemon_even_with_a_wedged_cycle(
    daemon: Callable[..., tuple[subprocess.Popen[bytes], FakeSystemd, Path, Path, Path]],
    make_bundle: BundleMaker,
    tmp_path: Path,
) -> None:
    process, systemd, drop, manifests, log = daemon("")
    wait_for(lambda: systemd.seen("READY", "1") == 1, 20)
    shutil.copy(make_bundle(1), drop / "r1.bundle")
    wait_for(lambda: len(list(manifests.glob("*.yaml"))) == 2, 30)
    # A target that hangs (a kube API without a reply, a hung mount); here: a FIFO where the
    # agent reads its own manifest file, so the next cycle blocks in open().
    victim = sorted(manifests.glob("*.yaml"))[0]
    victim.unlink()
    os.mkfifo(victim)
    with StateStore.open(tmp_path / "site" / "state") as store:
        store.request_reconcile()
    wait_for(lambda: "a reconcile was requested" in log.read_text(), 30)  # a guard, not a figure
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        process.wait(14)  # STOP_DEADLINE_S (10 s) and a margin
    except subprocess.TimeoutExpired:
        stopped = "edge-agent stopped" in log.read_text()
        raise AssertionError(
            f"not exited {time.monotonic() - started:.0f} s after SIGTERM "
            f"(logged 'edge-agent stopped': {stopped})"
        ) from None
