"""Status out by USB, attacked: hostile files, unlucky operators, kills at the worst moment.

The round trip itself is proven in ``test_usb_round_trip.py``; this module tries to break it.
Real processes and real files throughout: the management stub on loopback, the
``edge-agent`` and ``mgmt-stub`` commands, the daemon, real tmpfs mounts for sticks (a test
that needs one skips, saying why, where mounting is not allowed), FIFOs and symlinks. Where a
process must die at one exact moment, ``strace`` holds it inside a system call (fault
injection at the kernel boundary, nothing patched) and the test kills it there with SIGKILL;
where it must wait for the store, the test holds the store's SQLite write lock itself.

Invariants tried: a report is never visible half-written under its real name; a report not
recorded, or a receipt not acted on, loses no event; an event is delivered once; the agent's
private key and the sync credential never leave the store; a report is written when a stick
arrives, never on a restart, a reload or somebody else's mount; management refuses hostile
files in one line and stays up.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.envelope import encode_envelope
from edge_agent.clock import UTC, format_time
from edge_agent.outbox import Event, OutboxPolicy
from edge_agent.report import (
    RECEIPT_PAYLOAD_TYPE,
    STATUS_REPORT_PAYLOAD_TYPE,
    public_key_raw,
    sign_report,
)
from edge_agent.state import StateStore
from mgmt_stub.keys import KeyDirectory, sign_envelope
from tests.conftest import BIN, PROFILES, wait_for
from tests.integration.test_usb_round_trip import CLUSTER, AirGappedSite, ok, one_line_error
from tests.stub_process import StubProcess
from tests.sync_site import make_sync_site

# -- the cast: headquarters, sites, sticks, the daemon -----------------------------------------


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    """One management stub for the module, profile ``web`` stored; every site has its own
    cluster id. A test that changes the keys starts its own (``stub``)."""
    process = StubProcess.start(tmp_path_factory.mktemp("hq") / "stub")
    try:
        process.put_profile("web", PROFILES / "hello-web")
        yield process
    finally:
        process.stop()


class Site(AirGappedSite):
    """``AirGappedSite`` under a cluster id of its own, so that sites can share one stub."""

    def __init__(self, root: Path, stub: StubProcess, drop_pattern: str, cluster_id: str) -> None:
        super().__init__(root, stub, drop_pattern)
        self.stub = stub
        self.cluster_id = cluster_id
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(
            text.replace(f"cluster_id: {CLUSTER}\n", f"cluster_id: {cluster_id}\n")
        )

    def register(self) -> None:
        """Make the cluster known at headquarters with its agent key."""
        agent_key = str(self.json("agent-key")["agent_key"])
        ok(self.stub.cli("cluster", "register", self.cluster_id, "--agent-key", agent_key))

    def bundle(self, out: Path) -> Path:
        """The cluster's signed bundle as headquarters exports it to ``out``."""
        assignment = ("assign", "put", f"a-{self.cluster_id}", "--profile", "web")
        ok(self.stub.cli(*assignment, "--cluster", self.cluster_id))
        ok(self.stub.cli("bundle", "export", "--cluster", self.cluster_id, "-o", str(out)))
        return out

    def queue_events(self) -> None:
        """Queue events the ordinary way: a hold and its release each change health."""
        ok(self.run("hold", "--reason", "inspection"))
        ok(self.run("release"))

    def export(self, folder: Path) -> dict[str, Any]:
        return self.json("export-status", str(folder))

    def carried(self) -> list[dict[str, Any]]:
        return list(self.status()["reports"])

    def ingest(self, report: Path, receipt: Path) -> dict[str, Any]:
        answer = ok(self.stub.cli("ingest", str(report), "--receipt", str(receipt), "--json"))
        return dict(json.loads(answer))

    def store(self) -> StateStore:
        """The site's store opened by the test itself (no snapshot written)."""
        return StateStore.open(self.root / "state", snapshot_path=None)

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "edge-agent"), "--config", str(self.config), *args]


@pytest.fixture
def new_site(hq: StubProcess, tmp_path: Path) -> Callable[..., Site]:
    """``new_site(drop_pattern=None, stub=hq)``: a site with a fresh cluster id."""
    made: list[Site] = []

    def make(drop_pattern: str | None = None, stub: StubProcess | None = None) -> Site:
        pattern = drop_pattern or str(tmp_path / "unused" / "*")
        cluster_id = f"site-{os.urandom(4).hex()}"
        made.append(Site(tmp_path / f"site-{len(made)}", stub or hq, pattern, cluster_id))
        return made[-1]

    return make


def folder_at(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.report")) if folder.is_dir() else []


def payload_of(envelope: bytes) -> bytes:
    return base64.b64decode(json.loads(envelope)["payload"])


def mount(*args: str) -> None:
    """``mount ARGS``; the test skips (saying why) where mounting is not allowed."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"mount {' '.join(args)} failed: {done.stderr.strip()}"
        print(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def mounted(*mount_points: Path) -> Iterator[None]:
    """Unmount ``mount_points`` (in reverse) when the block ends, however it ends."""
    try:
        yield
    finally:
        for point in reversed(mount_points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


class Daemon:
    """``edge-agent run`` for one site, logging to ``run.log`` in the site's folder."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.log_path = site.root / "run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        starts = self.log().count("watching drop folders")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.site.command("run"), stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self.log().count("watching drop folders") > starts, 20)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(15) == 0, self.log()[-3000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def daemons() -> Iterator[Callable[[Site], Daemon]]:
    """``daemons(site)`` starts one; any still running at the end is killed."""
    started: list[Daemon] = []

    def start(site: Site) -> Daemon:
        started.append(Daemon(site).start())
        return started[-1]

    yield start
    for daemon in started:
        daemon.kill()


class HeldAtRenames:
    """A command run under ``strace`` whose second rename(2) is held ``hold_s``, on ``entry``
    (before the kernel renames) or on exit (after): the test kills the command there
    (``kill``), or acts meanwhile and lets it finish (``finish``).

    Every command here renames twice or more: the status snapshot when the store opens
    (first), then the report or the snapshot after a receipt (second). Were that order to
    change, the tests holding a rename fail loudly rather than pass by luck.
    """

    def __init__(self, command: list[str], *, entry: bool, hold_s: float = 60.0) -> None:
        strace = shutil.which("strace")
        if strace is None:
            print("strace is not installed: a process cannot be held inside a system call")
            pytest.skip("strace is not installed")
        calls = "rename,renameat,renameat2"
        delay = f"delay_{'enter' if entry else 'exit'}={int(hold_s * 1_000_000)}"
        tracing = ["-f", "-qq", "-o", "/dev/null", "-e", f"trace={calls}", "-e", "signal=none"]
        self.tracer = subprocess.Popen(
            [strace, *tracing, "-e", f"inject={calls}:{delay}:when=2", "--", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def kill(self) -> None:
        """SIGKILL the held command, then strace (which would sit out its delay first)."""
        children = Path(f"/proc/{self.tracer.pid}/task/{self.tracer.pid}/children").read_text()
        assert children.split(), "the command is not running: nothing was held"
        for pid in children.split():
            os.kill(int(pid), signal.SIGKILL)
        self.tracer.kill()
        self.tracer.communicate(timeout=15)

    def finish(self) -> str:
        """The command's output once it ends by itself."""
        out, err = self.tracer.communicate(timeout=60)
        assert self.tracer.returncode == 0, err
        return out.decode()


def operator(stub: StubProcess, *args: str, memory_bytes: int) -> subprocess.CompletedProcess[str]:
    """``stub.cli`` with the process's address space capped, so that a runaway read fails
    in a second instead of taking the machine's memory."""
    ok(stub.cli("cluster", "list"))  # writes the credential file that stub.cli passes

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_STUB_")}
    return subprocess.run(
        [str(BIN / "mgmt-stub"), *args, "--server", stub.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "MGMT_STUB_CREDENTIAL_FILE": str(stub.root / "admin.credential")},
        preexec_fn=cap,
    )


def rotate_policy_key(stub: StubProcess) -> None:
    """At headquarters: a new policy key, the old one revoked (root version 2)."""
    keys = ("--keys", str(stub.keys))
    shown = subprocess.run(
        [str(BIN / "mgmt-stub"), "keys", "show", *keys, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (old,) = json.loads(shown.stdout)["policy_keys"]
    subprocess.run(
        [str(BIN / "mgmt-stub"), "keys", "rotate", *keys, "--revoke", old, "--new-policy-key"],
        capture_output=True,
        check=True,
    )
    stub.put_profile("web", PROFILES / "baseline")  # and a new revision to carry it


# -- where a stick comes from: arrivals, restarts, reloads, other people's mounts -------------


def test_restarts_reloads_and_mounts_elsewhere_write_no_report_a_read_only_stick_none(
    new_site: Callable[..., Site], daemons: Callable[[Site], Daemon], tmp_path: Path
) -> None:
    drops = tmp_path / "drops"
    local = folder_at(drops / "local")  # a permanent folder on the host, always there
    read_only = folder_at(drops / "ro")  # where a read-only stick will be mounted
    site = new_site(str(drops / "*"))
    site.queue_events()
    daemon = daemons(site)
    # Kubelet-like: a pod volume mounted elsewhere, then the configuration reloaded.
    pod = folder_at(tmp_path / "kubelet" / "pods" / "p1" / "volumes" / "v")
    stick = folder_at(tmp_path / "ro-stick")
    with mounted(pod, stick, read_only):
        mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(pod))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.log(), 20)
        # A read-only stick arrives: the journal says so, nothing is written or recorded.
        mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(stick))
        mount("-o", "remount,ro", str(stick))
        mount("--bind", str(stick), str(read_only))
        wait_for(lambda: f"drop folder {read_only} is not writable" in daemon.log(), 20)
        assert site.carried() == [] and reports_in(local) == []
        daemon.stop()  # before the read-only stick is pulled
    # Restarted twice: the folders present at start are no arrivals.
    daemons(site).stop()
    daemon = daemons(site)
    arrived = folder_at(drops / "arrived")  # a sync point: its report comes after a poll
    wait_for(lambda: len(reports_in(arrived)) == 1, 20)
    assert reports_in(local) == []
    assert [Path(r["where"]).parent for r in site.carried()] == [arrived]
    daemon.stop()
    with site.store() as store:
        assert base64.b64encode(store.agent_key()).decode() not in daemon.log()


def test_unmounting_a_stick_from_the_drop_folder_writes_no_report_onto_the_host(
    new_site: Callable[..., Site], daemons: Callable[[Site], Daemon], tmp_path: Path
) -> None:
    # fstab style (``/mnt/usb``): the stick is mounted on the drop folder itself, so when it
    # is pulled the folder is still there, the host's own empty directory.
    drops = tmp_path / "drops"
    usb = folder_at(drops / "usb")
    site = new_site(str(drops / "*"))
    site.queue_events()
    daemon = daemons(site)
    with mounted(usb):
        mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(usb))
        wait_for(lambda: len(reports_in(usb)) == 1, 20)  # plugged in: a report on the stick
    # Pulled. A folder appearing afterwards is a sync point: its report is written after the
    # poll that saw the unmount ran its callbacks.
    later = folder_at(drops / "later")
    wait_for(lambda: len(reports_in(later)) == 1, 20)
    daemon.stop()
    assert reports_in(usb) == [], "the unmount counted as an arrival: a report on the host disk"
    assert len(site.carried()) == 2  # the stick's and the later folder's


# -- writing the report: full, pulled, killed, raced --------------------------------------------


def test_a_full_stick_holds_no_torn_report_and_nothing_is_recorded(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.json("agent-key")  # provisioned, as any command leaves it
    with site.store() as store:
        data = {"detail": "x" * 2000}
        store.enqueue(Event(f"big-{n}", "note", "2026-12-01T00:00:00Z", data) for n in range(4))
    stick = folder_at(tmp_path / "stick")
    with mounted(stick):
        mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(stick))
        # One page left: the write starts, then the stick is full (a torn write).
        (stick / "filler").write_bytes(b"f" * (60 << 10))
        line = one_line_error(
            site.run("export-status", str(stick)), 6, "edge-agent: status report not written"
        )
        assert "No space left" in line
        assert os.listdir(stick) == ["filler"]  # no report, no temporary file
        assert site.carried() == [] and site.queued() == 4
        (stick / "filler").unlink()
        exported = site.export(stick)
    assert exported["events"] == 4 and [r["events"] for r in site.carried()] == [4]


def test_a_report_killed_mid_write_is_never_seen_under_its_name_nor_recorded(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.queue_events()
    queued = site.queued()
    stick = folder_at(tmp_path / "stick")
    held = HeldAtRenames(site.command("export-status", str(stick)), entry=True)
    wait_for(lambda: any(p.name.endswith(".tmp") for p in stick.iterdir()), 20)
    held.kill()  # the stick is pulled, or the power goes, before the rename
    assert reports_in(stick) == []
    # What is left is hidden (a dot file) and is not a report to anyone...
    (torn,) = stick.iterdir()
    assert torn.name.startswith(".") and torn.name.endswith(".tmp")
    assert site.carried() == [] and site.queued() == queued
    # ...and the next export to that folder removes it (its writer is dead).
    assert site.export(stick)["events"] == queued
    assert [p.name.startswith(".") for p in stick.iterdir()] == [False]


def test_a_report_written_but_not_recorded_loses_nothing(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    site.queue_events()
    queued = site.queued()
    stick = folder_at(tmp_path / "stick")
    held = HeldAtRenames(site.command("export-status", str(stick)), entry=False)
    wait_for(lambda: len(reports_in(stick)) == 1, 20)
    held.kill()  # renamed, not yet recorded
    (orphan,) = reports_in(stick)
    assert site.carried() == [] and site.queued() == queued
    # The orphan is complete and genuine: management takes it, but its receipt names a
    # report the site never recorded, so it acknowledges nothing.
    receipt = tmp_path / "orphan.receipt"
    assert site.ingest(orphan, receipt)["accepted"] == queued + 2
    assert site.json("receipt", str(receipt))["report_ids"] == []
    assert site.queued() == queued
    # The next report carries the same events again; its receipt delivers them once.
    second = Path(site.export(stick)["path"])
    assert site.ingest(second, receipt)["duplicates"] == queued
    assert site.json("receipt", str(receipt))["delivered"] == queued
    assert site.queued() == 0 and site.carried() == []


def test_events_queued_while_an_export_runs_stay_queued_after_its_receipt(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    site.queue_events()
    carried = site.queued()
    stick = folder_at(tmp_path / "stick")
    held = HeldAtRenames(
        site.command("export-status", str(stick), "--json"), entry=False, hold_s=2.5
    )
    wait_for(lambda: len(reports_in(stick)) == 1, 20)
    ok(site.run("hold", "--reason", "meanwhile"))
    assert held.tracer.poll() is None  # queued while the report was written, not recorded
    exported = json.loads(held.finish())
    assert exported["events"] == carried
    receipt = tmp_path / "r.receipt"
    site.ingest(Path(exported["path"]), receipt)
    assert site.json("receipt", str(receipt))["delivered"] == carried
    assert site.queued() == 1 and site.status()["hold"]["reason"] == "meanwhile"


def test_two_exports_racing_carry_the_same_events_which_are_delivered_once(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    site.queue_events()
    queued = site.queued()
    stick = folder_at(tmp_path / "stick")
    racers = [
        subprocess.Popen(
            site.command("export-status", str(stick), "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [json.loads(racer.communicate(timeout=60)[0]) for racer in racers]
    assert [r["events"] for r in results] == [queued, queued]
    assert len(reports_in(stick)) == 2 and len(site.carried()) == 2
    receipt = tmp_path / "r.receipt"
    first, second = (site.ingest(Path(r["path"]), receipt) for r in results)
    assert (first["duplicates"], second["duplicates"]) == (0, queued)
    done = site.json("receipt", str(receipt))
    assert sorted(done["report_ids"]) == sorted(r["report_id"] for r in results)
    assert done["delivered"] == queued
    assert site.queued() == 0 and site.carried() == []


def test_acknowledging_after_the_outbox_coalesced_carried_events_removes_only_those_left(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    small = OutboxPolicy(max_events=4)
    at = "2026-12-01T00:00:00Z"

    def enqueue(*events: tuple[str, str]) -> None:
        with site.store() as store:
            store.enqueue((Event(i, t, at, {"n": i}) for i, t in events), policy=small)

    enqueue(("h1", "health"), ("d1", "drift"), ("i1", "import"))
    exported = site.export(folder_at(tmp_path / "stick"))
    assert exported["events"] == 3
    # A full outbox coalesces the carried health and drift events into newer ones.
    enqueue(("h2", "health"), ("h3", "health"), ("d2", "drift"))
    outbox = site.status()["outbox"]
    assert outbox["count"] == 4 and outbox["coalesced"] == {"health": 1, "drift": 1}
    receipt = tmp_path / "r.receipt"
    site.ingest(Path(exported["path"]), receipt)
    assert site.json("receipt", str(receipt))["delivered"] == 1  # only i1 was left
    with site.store() as store:
        left = [json.loads(text)["id"] for _seq, text in store.outbox_batch(10, 1 << 20)]
    assert left == ["h2", "h3", "d2"]
    assert site.status()["outbox"]["coalesced"] == {"health": 1, "drift": 1}


# -- killing the agent while it takes a receipt -------------------------------------------------


def test_killed_after_acknowledging_before_the_snapshot_delivers_once(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    site.queue_events()
    exported = site.export(folder_at(tmp_path / "stick"))
    ok(site.run("hold", "--reason", "later"))
    receipt = tmp_path / "r.receipt"
    site.ingest(Path(exported["path"]), receipt)

    def outbox_count() -> int:
        with site.store() as store:
            return store.outbox_count()

    held = HeldAtRenames(site.command("receipt", str(receipt)), entry=True)
    wait_for(lambda: outbox_count() == 1, 20)  # acknowledged: only the later event is left
    held.kill()  # before the snapshot is renamed into place
    snapshot = json.loads((site.root / "state" / "status.json").read_text())
    assert len(snapshot["reports"]) == 1  # stale until the next command opens the store
    again = site.json("receipt", str(receipt))
    assert again["report_ids"] == [] and again["delivered"] == 0
    assert site.queued() == 1 and site.carried() == []
    assert json.loads((site.root / "state" / "status.json").read_text())["reports"] == []


def test_the_daemon_killed_while_taking_a_receipt_takes_it_after_restart(
    new_site: Callable[..., Site], daemons: Callable[[Site], Daemon], tmp_path: Path
) -> None:
    drop = folder_at(tmp_path / "drop")  # a permanent local drop folder
    site = new_site(str(drop))
    site.register()
    site.queue_events()
    carried = site.queued()
    exported = site.export(folder_at(tmp_path / "stick"))
    ok(site.run("hold", "--reason", "later"))
    daemon = daemons(site)
    # The store is busy (the test holds its write lock) when the receipt comes in: the
    # daemon reads and checks it, then waits to acknowledge; it is killed there.
    lock = sqlite3.connect(site.root / "state" / "store" / "cache.db", timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")
        site.ingest(Path(exported["path"]), drop / f"edge-receipt-{site.cluster_id}.receipt")
        time.sleep(1.0)  # long enough to be waiting on the lock; the outcome holds either way
        daemon.kill()
    finally:
        lock.rollback()
        lock.close()
    assert site.queued() == carried + 1 and len(site.carried()) == 1
    daemon = daemons(site)  # the first scan offers the receipt again
    wait_for(lambda: site.queued() == 1, 20)
    daemon.stop()
    assert site.carried() == [] and os.listdir(drop) == [f"edge-receipt-{site.cluster_id}.receipt"]


# -- receipts: replayed, revoked, hostile, where they must not be opened ----------------------


def test_a_receipt_signed_by_a_key_revoked_since_is_refused_a_fresh_one_accepted(
    stub: StubProcess, new_site: Callable[..., Site], tmp_path: Path
) -> None:
    stub.put_profile("web", PROFILES / "hello-web")
    site = new_site(stub=stub)
    site.register()
    ok(site.run("import", str(site.bundle(tmp_path / "r1.bundle"))))
    exported = site.export(folder_at(tmp_path / "stick"))
    stale = tmp_path / "stale.receipt"
    site.ingest(Path(exported["path"]), stale)
    rotate_policy_key(stub)
    ok(
        stub.cli(
            "bundle", "export", "--cluster", site.cluster_id, "-o", str(tmp_path / "r2.bundle")
        )
    )
    ok(site.run("import", str(tmp_path / "r2.bundle")))
    assert site.status()["trust"]["root_version"] == 2
    queued = site.queued()
    # The receipt written before the rotation, replayed: signed by a revoked key.
    line = one_line_error(site.run("receipt", str(stale)), 1, "edge-agent: rejected: ")
    assert "revoked" in line
    assert site.queued() == queued and len(site.carried()) == 1
    fresh = tmp_path / "fresh.receipt"
    ok(stub.cli("cluster", "receipt", site.cluster_id, "-o", str(fresh)))
    assert site.json("receipt", str(fresh))["delivered"] == exported["events"]


def test_a_receipt_signed_by_keys_arriving_with_the_bundle_beside_it_is_taken(
    stub: StubProcess,
    new_site: Callable[..., Site],
    daemons: Callable[[Site], Daemon],
    tmp_path: Path,
) -> None:
    stub.put_profile("web", PROFILES / "hello-web")
    media = folder_at(tmp_path / "media")
    site = new_site(str(media / "*" / "edge"), stub=stub)
    site.register()
    bundle = site.bundle(tmp_path / "r1.bundle")
    daemon = daemons(site)
    stick = folder_at(media / "stick" / "edge")
    shutil.copy(bundle, stick / "policy.bundle")
    wait_for(lambda: len(reports_in(stick)) == 1, 30)
    (first,) = site.carried()
    # At headquarters the policy key is replaced before the report is ingested: the receipt
    # is signed by the new key, which the site learns from the next bundle, carried back on
    # the same stick beside the receipt.
    shutil.move(media / "stick", tmp_path / "carried")
    wait_for(lambda: "edge gone" in daemon.log(), 20)
    rotate_policy_key(stub)
    carried = tmp_path / "carried" / "edge"
    site.ingest(reports_in(carried)[0], carried / f"edge-receipt-{site.cluster_id}.receipt")
    ok(
        stub.cli(
            "bundle", "export", "--cluster", site.cluster_id, "-o", str(carried / "policy.bundle")
        )
    )
    shutil.move(tmp_path / "carried", media / "stick")
    wait_for(lambda: len(reports_in(stick)) == 2, 30)
    daemon.stop()
    status = site.status()
    assert status["trust"]["root_version"] == 2
    waiting = [r["report_id"] for r in status["reports"]]
    assert first["report_id"] not in waiting, "the receipt was refused before the bundle ran"


def test_hostile_receipts_are_refused_in_one_line_and_change_nothing(
    hq: StubProcess, new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.queue_events()
    site.export(folder_at(tmp_path / "stick"))
    before = (site.queued(), site.carried())
    signers = KeyDirectory(hq.keys).policy_signers()
    bad = folder_at(tmp_path / "bad")
    files = {
        "empty": b"",
        "not-utf8": b"\xff\xfe\x00\x80" * 64,
        "nested": b"[" * 100_000 + b"]" * 100_000,
        "unsigned": sign_envelope(RECEIPT_PAYLOAD_TYPE, b"{}", []),
        "report-type": sign_envelope(STATUS_REPORT_PAYLOAD_TYPE, b"{}", signers),
        "signed-list": sign_envelope(RECEIPT_PAYLOAD_TYPE, b"[]", signers),
    }
    for name, data in files.items():
        (bad / f"{name}.receipt").write_bytes(data)
        line = one_line_error(
            site.run("receipt", str(bad / f"{name}.receipt")), 1, "edge-agent: rejected: "
        )
        assert len(line) < 400, (name, line)
    # Too large, or endless: refused from the size read, never read to the end.
    (bad / "huge.receipt").write_bytes(b" " * ((1 << 20) + 1))
    (bad / "zero.receipt").symlink_to("/dev/zero")
    for name in ("huge", "zero"):
        line = one_line_error(site.run("receipt", str(bad / f"{name}.receipt")), 2, "edge-agent: ")
        assert "larger than" in line
    assert (site.queued(), site.carried()) == before


def test_a_signed_receipt_whose_payload_is_not_canonical_json_is_rejected_not_a_crash(
    hq: StubProcess, new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    signers = KeyDirectory(hq.keys).policy_signers()
    payloads = {
        "not-utf8": b"\xff\xfe{}",
        "nested": b"[" * 50_000 + b"]" * 50_000,
        "float": b'{"cluster_id":"x","issued_at":1.5}',
    }
    for name, payload in payloads.items():
        receipt = tmp_path / f"{name}.receipt"
        receipt.write_bytes(sign_envelope(RECEIPT_PAYLOAD_TYPE, payload, signers))
        one_line_error(site.run("receipt", str(receipt)), 1, "edge-agent: rejected: receipt")


def test_links_and_fifos_named_receipt_in_a_drop_folder_are_never_opened(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    drop = folder_at(tmp_path / "drop")
    site = new_site(str(drop))
    site.register()
    site.queue_events()
    exported = site.export(folder_at(tmp_path / "stick"))
    # Offered in natural order: each hostile entry comes before the genuine receipt and the
    # bundle, so a watcher stuck on one would never reach them.
    os.mkfifo(drop / "a-pipe.receipt")
    (drop / "b-zero.receipt").symlink_to("/dev/zero")
    (drop / "c-loop.receipt").symlink_to(drop / "c-loop.receipt")
    folder_at(drop / "d-folder.receipt")
    site.ingest(Path(exported["path"]), drop / f"edge-receipt-{site.cluster_id}.receipt")
    site.bundle(drop / "policy.bundle")
    with (site.root / "watch.log").open("ab") as log:
        watcher = subprocess.Popen(site.command("watch"), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (site.status().get("policy") or {}).get("revision") == 1, 30)
        assert site.carried() == []
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(15) == 0
        said = (site.root / "watch.log").read_text()
        assert not any(name in said for name in ("pipe", "zero", "loop", "d-folder")), said
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


# -- headquarters: hostile reports, unlucky operators ------------------------------------------


def test_hostile_reports_are_refused_in_one_line_and_nothing_is_recorded(
    hq: StubProcess, new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    stranger = Ed25519PrivateKey.generate()
    bare = f"bare-{os.urandom(4).hex()}"
    ok(hq.cli("cluster", "register", bare))  # registered without an agent key

    def signed(cluster_id: str) -> bytes:
        return sign_report(
            stranger,
            cluster_id=cluster_id,
            report_id="r1",
            created_at="2026-12-01T00:00:00Z",
            events=[{"id": "e1", "type": "health", "time": "2026-12-01T00:00:00Z", "data": {}}],
        )

    hostile = {
        "empty": (b"", "not JSON"),
        "not-utf8": (b"\xff\xfe\x00\x80" * 64, "UTF-8"),
        "nested": (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
        "unknown-cluster": (signed("nobody-here"), "unknown cluster"),
        "no-agent-key": (signed(bare), "no agent key"),
        "another-key": (signed(site.cluster_id), "not trusted"),
    }
    stick = folder_at(tmp_path / "stick")
    for name, (data, why) in hostile.items():
        (stick / f"{name}.report").write_bytes(data)
        line = one_line_error(hq.cli("ingest", str(stick / f"{name}.report")), 1, "mgmt-stub: ")
        assert why in line, (name, line)
    huge = stick / "huge.report"
    with huge.open("wb") as handle:
        handle.truncate(40 << 20)
    assert "larger than a status report" in one_line_error(
        hq.cli("ingest", str(huge)), 1, "mgmt-stub: "
    )  # refused from its size, before anything is sent
    assert sorted(p.name for p in stick.iterdir() if p.suffix == ".receipt") == []
    for cluster_id in (site.cluster_id, bare):
        cluster = hq.admin.get(f"/v1/admin/clusters/{cluster_id}").json()
        assert cluster["recent_events"] == [] and cluster["connectivity"] == "never"


def test_an_unsigned_envelope_whose_payload_is_not_json_is_invalid_not_a_server_failure(
    hq: StubProcess, tmp_path: Path
) -> None:
    payloads = {
        "not-utf8": b"\xff\xfe",
        "not-json": b"{not json",
        "nested": b"[" * 50_000 + b"]" * 50_000,
        "float": b'{"cluster_id":"x","n":1.5}',
    }
    for name, payload in payloads.items():
        report = tmp_path / f"{name}.report"
        report.write_bytes(encode_envelope(STATUS_REPORT_PAYLOAD_TYPE, payload, []))
        line = one_line_error(hq.cli("ingest", str(report)), 1, "mgmt-stub: ")
        assert "HTTP 422" in line, (name, line)


def test_ingest_refuses_an_endless_file_from_its_size(hq: StubProcess, tmp_path: Path) -> None:
    # An operator points ingest at the stick's device, or at a link to one.
    endless = tmp_path / "edge-status.report"
    endless.symlink_to("/dev/zero")
    started = time.monotonic()
    result = operator(hq, "ingest", str(endless), memory_bytes=1 << 30)
    line = one_line_error(result, 1, "mgmt-stub: ")
    assert "bytes" in line or "large" in line, line
    assert time.monotonic() - started < 20


def test_a_report_from_a_clock_far_ahead_does_not_pin_the_report_age_in_the_future(
    hq: StubProcess, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    cluster_id = f"clock-{os.urandom(4).hex()}"
    agent_key = base64.b64encode(public_key_raw(key)).decode()
    ok(hq.cli("cluster", "register", cluster_id, "--agent-key", agent_key))
    now = format_time(dt.datetime.now(UTC))
    for report_id, created_at in (("ahead", "2099-01-01T00:00:00Z"), ("fixed", now)):
        report = tmp_path / f"{report_id}.report"
        event = {"id": f"h-{report_id}", "type": "health", "time": created_at, "data": {}}
        report.write_bytes(
            sign_report(
                key,
                cluster_id=cluster_id,
                report_id=report_id,
                created_at=created_at,
                events=[event],
            )
        )
        ok(hq.cli("ingest", str(report), "--no-receipt"))
    cluster = hq.admin.get(f"/v1/admin/clusters/{cluster_id}").json()
    assert cluster["last_ingest_at"] <= format_time(dt.datetime.now(UTC)), cluster["last_ingest_at"]
    assert cluster["last_contact_age_s"] >= 0


def test_a_site_whose_store_was_reset_can_be_given_its_new_agent_key(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    # The documented way out of a damaged store: move it aside, provision the root again.
    (site.root / "state").rename(site.root / "state.damaged")
    report = Path(site.export(folder_at(tmp_path / "stick"))["path"])
    refused = one_line_error(site.stub.cli("ingest", str(report)), 1, "mgmt-stub: ")
    assert "signature" in refused
    # Registering again is refused, and the refusal names the command that replaces the key.
    new_key = site.json("agent-key")["agent_key"]
    again = site.stub.cli("cluster", "register", site.cluster_id, "--agent-key", new_key)
    assert "mgmt-stub cluster agent-key" in one_line_error(again, 1, "mgmt-stub: ")
    ok(site.stub.cli("cluster", "agent-key", site.cluster_id, new_key))
    ok(site.stub.cli("ingest", str(report)))


# -- what the site knows and management hears ---------------------------------------------------


def test_events_delivered_online_then_carried_in_count_as_duplicates_and_no_secret_leaves(
    hq: StubProcess, tmp_path: Path
) -> None:
    site = make_sync_site(tmp_path / "site", hq, f"site-{os.urandom(4).hex()}")
    ok(site.run("hold", "--reason", "inspection"))
    stick = folder_at(tmp_path / "stick")
    first = json.loads(ok(site.run("export-status", str(stick), "--json")))
    ok(site.run("sync", "--once"))  # online after all: the carried events are delivered
    receipt = tmp_path / "r.receipt"
    ingested = json.loads(ok(hq.cli("ingest", first["path"], "--receipt", str(receipt), "--json")))
    assert ingested["duplicates"] == first["events"] and ingested["accepted"] == 2
    # Its events went online, so nothing waited on this report any more: the receipt is
    # accepted and changes nothing.
    done = json.loads(ok(site.run("receipt", str(receipt), "--json")))
    assert done == {"result": "accepted", "report_ids": [], "delivered": 0}
    # A report made while enrolled carries no credential and no private key.
    second = json.loads(ok(site.run("export-status", str(stick), "--json")))
    data = Path(second["path"]).read_bytes()
    with site.open_store() as store:
        credential = store.sync_credential()
        secret = store.agent_key()
    assert credential is not None
    for text in (data, payload_of(data)):
        assert credential["credential"].encode() not in text
        assert base64.b64encode(secret) not in text and secret.hex().encode() not in text


def test_a_report_whose_events_were_delivered_online_is_not_awaited_forever(
    hq: StubProcess, tmp_path: Path
) -> None:
    site = make_sync_site(tmp_path / "site", hq, f"site-{os.urandom(4).hex()}")
    ok(site.run("hold", "--reason", "inspection"))
    first = json.loads(ok(site.run("export-status", str(folder_at(tmp_path / "stick")), "--json")))
    assert first["events"] >= 1
    # The stick is lost on the way; later the site comes online and delivers everything.
    ok(site.run("sync", "--once"))
    status = json.loads(site.run("status", "--json").stdout)  # exit 3: no policy yet
    assert status["outbox"]["count"] == 0
    assert status["reports"] == [], "nothing it carried is queued, yet it awaits a receipt"


def test_the_agent_key_appears_in_no_output_file_log_or_report(
    new_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = new_site()
    site.register()
    site.queue_events()
    stick = folder_at(tmp_path / "stick")
    outputs = [site.run("-v", "export-status", str(stick), "--json")]
    receipt = tmp_path / "r.receipt"
    site.ingest(reports_in(stick)[0], receipt)
    outputs += [site.run("-v", "receipt", str(receipt)), site.run("-v", "agent-key", "--json")]
    assert all(o.returncode == 0 for o in outputs), outputs
    outputs += [site.run("status"), site.run("status", "--json")]  # 3: no policy yet
    with site.store() as store:
        secret = store.agent_key()
    public = base64.b64encode(public_key_raw(Ed25519PrivateKey.from_private_bytes(secret)))
    assert json.loads(outputs[2].stdout)["agent_key"] == public.decode()
    report = reports_in(stick)[0].read_bytes()
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [(site.root / "state" / "status.json").read_text(), report.decode()]
    texts.append(payload_of(report).decode())
    forms = (
        base64.b64encode(secret).decode(),
        secret.hex(),
        base64.urlsafe_b64encode(secret).decode(),
    )
    for text in texts:
        assert not any(form in text for form in forms)
