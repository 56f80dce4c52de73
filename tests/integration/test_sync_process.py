"""The real agent processes (``edge-agent sync`` and ``edge-agent enforce``) against the real
stub process, with the link cut by ``FaultProxy`` and the agent killed with SIGKILL.

These are the outage promises end to end: while the stub is unreachable, enforcement and
drift healing go on and events queue; when it returns, the desired state changed meanwhile
is applied and every queued event is delivered exactly once; a kill -9 in the middle of a
delivery or of an action loses no event and runs no action twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Event
from tests.conftest import HTTPCORE_SOCKET_LEAKS, wait_for
from tests.faultproxy import FaultProxy
from tests.stub_process import StubProcess
from tests.sync_site import SyncSite, profiled_stub, server_events

REPO = Path(__file__).resolve().parents[2]

pytestmark = HTTPCORE_SOCKET_LEAKS


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    with profiled_stub(tmp_path_factory.mktemp("stub-process")) as process:
        yield process


def status(site: SyncSite) -> dict[str, Any]:
    result = site.run("status", "--json")
    assert result.returncode in (0, 1, 2, 3), result.stderr
    return dict(json.loads(result.stdout))


def queued_ids(site: SyncSite) -> set[str]:
    with site.open_store() as store:
        return {json.loads(text)["id"] for _, text in store.outbox_batch(10**6, 1 << 40)}


def in_force(site: SyncSite) -> int | None:
    policy = status(site).get("policy")
    return None if policy is None else int(policy["revision"])


def test_an_outage_changes_nothing_and_afterwards_everything_arrives_once(
    sync_sites: Callable[..., SyncSite], stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("proc-outage", server=proxy.url)
    site.assign("web", name="a-proc-outage")
    site.spawn("sync")
    site.spawn("enforce")
    first = site.desired_on_server()
    wait_for(lambda: stub.dump("/v1/admin/clusters/proc-outage").get("reported") == first, 30)
    managed = sorted(site.manifests.glob("*.yaml"))
    assert managed

    # The management plane goes away.
    proxy.down()
    wait_for(lambda: status(site)["connectivity"]["state"] == "offline", 20)
    connections = proxy.connections
    outage_started = time.monotonic()

    # Enforcement and drift healing go on without it.
    victim = managed[0]
    original = victim.read_text()
    victim.write_text(original + "\n# edited by hand during the outage\n")
    wait_for(lambda: victim.read_text() == original, 20)

    # Meanwhile management moves the cluster to another profile.
    stub.admin.put(
        "/v1/admin/assignments/a-proc-outage",
        json={"profile": "base", "selector": {"cluster_id": "proc-outage"}},
    ).raise_for_status()
    second = stub.dump("/v1/admin/clusters/proc-outage")["desired"]
    assert second != first
    time.sleep(3)  # let the agent try a few times against the dead link
    assert in_force(site) == first
    backlog = queued_ids(site)
    assert backlog, "healing during the outage queued nothing"
    doc = status(site)
    assert doc["outbox"]["count"] >= len(backlog) and doc["connectivity"]["since"]
    attempts = proxy.connections - connections
    elapsed = time.monotonic() - outage_started
    # Backoff at most 2 s (full jitter, floor 0.5 s): a handful of attempts, not a loop.
    assert attempts <= elapsed / 0.5 + 4, (attempts, elapsed)

    # It comes back: the change is applied and the backlog delivered, each event once.
    proxy.pass_()
    wait_for(lambda: in_force(site) == second, 30)
    wait_for(lambda: stub.dump("/v1/admin/clusters/proc-outage").get("reported") == second, 30)
    wait_for(lambda: backlog <= {e["event_id"] for e in server_events(stub, "proc-outage")}, 30)
    recorded = [e["event_id"] for e in server_events(stub, "proc-outage")]
    assert len(recorded) == len(set(recorded))
    assert stub.dump("/v1/admin/clusters/proc-outage")["events"] == len(recorded)
    names = {p.name for p in site.manifests.glob("*.yaml")}
    assert names and names != {p.name for p in managed}  # the baseline replaced hello-web
    assert status(site)["connectivity"]["state"] == "online"


def test_a_change_reaches_a_waiting_agent_within_seconds(
    sync_sites: Callable[..., SyncSite], stub: StubProcess
) -> None:
    site = sync_sites("proc-wait", extra_sync="retry_base_s: 0.5, retry_max_s: 2, wait_s: 30")
    site.assign("web", name="a-proc-wait")
    site.spawn("sync")
    first = site.desired_on_server()
    wait_for(lambda: in_force(site) == first, 30)
    wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] >= 1, 10)
    started = time.monotonic()
    stub.admin.put(
        "/v1/admin/assignments/a-proc-wait",
        json={"profile": "base", "selector": {"cluster_id": "proc-wait"}},
    ).raise_for_status()
    second = stub.dump("/v1/admin/clusters/proc-wait")["desired"]
    # The policy's sync interval is 300 s: only the long poll can bring it this fast.
    wait_for(lambda: in_force(site) == second, 10)
    assert time.monotonic() - started < 5
    stub.admin.post(
        "/v1/admin/actions",
        json={"type": "reconcile-now", "selector": {"cluster_id": "proc-wait"}},
    ).raise_for_status()
    wait_for(lambda: status(site).get("outbox", {}).get("count") == 0, 10)
    listed = stub.admin.get("/v1/admin/actions", params={"cluster_id": "proc-wait"}).json()
    wait_for(
        lambda: (
            [
                a["state"]
                for a in stub.admin.get(
                    "/v1/admin/actions", params={"cluster_id": "proc-wait"}
                ).json()["actions"]
            ]
            == ["done"]
        ),
        10,
    )
    assert listed


def test_sigterm_stops_the_sync_process_promptly(
    sync_sites: Callable[..., SyncSite], stub: StubProcess
) -> None:
    site = sync_sites("proc-term", extra_sync="retry_base_s: 0.5, retry_max_s: 2, wait_s: 60")
    process = site.spawn("sync")
    wait_for(lambda: status(site)["connectivity"]["state"] == "online", 20)
    wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] >= 1, 10)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert time.monotonic() - started < 8, "a held long poll delayed the shutdown"


def test_kill_9_during_a_delivery_loses_no_event_and_doubles_none(
    sync_sites: Callable[..., SyncSite], stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("proc-kill-batch", server=proxy.url)
    assert site.run("sync", "--once").returncode == 0
    with site.open_store() as store:
        events = [
            Event(f"kb-{i:05d}", "reconcile", "2026-12-01T00:00:00Z", {"i": i, "pad": "x" * 200})
            for i in range(5000)
        ]
        for start in range(0, len(events), 1000):
            store.enqueue(events[start : start + 1000])
    wanted = {e.id for e in events} | queued_ids(site)
    proxy.delay(0.5)  # every answer half a second late: a delivery is in flight for a while
    killed = 0
    for _ in range(3):  # kill it mid-delivery three times
        before = proxy.bytes_up
        process = site.spawn("sync")
        wait_for(lambda b=before: proxy.bytes_up > b + 50_000, 30)  # a batch is on its way
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed += 1
    proxy.pass_()
    result = site.run("sync", "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert status(site)["outbox"]["count"] == 0
    recorded = [e["event_id"] for e in server_events(stub, "proc-kill-batch")]
    assert len(recorded) == len(set(recorded))
    assert wanted <= set(recorded), len(wanted - set(recorded))
    assert stub.dump("/v1/admin/clusters/proc-kill-batch")["events"] == len(recorded)
    assert killed == 3


def test_kill_9_during_an_action_never_runs_it_twice(
    sync_sites: Callable[..., SyncSite], stub: StubProcess
) -> None:
    site = sync_sites("proc-kill-action")
    assert site.run("sync", "--once").returncode == 0
    stub.admin.post(
        "/v1/admin/actions",
        json={"type": "collect-diagnostics", "selector": {"cluster_id": "proc-kill-action"}},
    ).raise_for_status()
    marker = site.root / "ran.txt"
    child = [
        sys.executable,
        str(Path(__file__).with_name("sync_action_child.py")),
        str(site.config_path),
        str(marker),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    slow = subprocess.Popen([*child, "slow"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: marker.exists() and marker.read_text().count("\n") == 1, 30)
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait()
    # Restarted (the same fake action behind the seam, now quick): never run again.
    fast = subprocess.run(
        [*child, "fast"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert fast.returncode == 0, fast.stderr
    assert "cycle synced" in fast.stdout
    assert marker.read_text().count("\n") == 1
    actions = stub.admin.get("/v1/admin/actions", params={"cluster_id": "proc-kill-action"}).json()
    [action] = actions["actions"]
    assert action["state"] == "failed"
    results = [
        json.loads(e["data"])
        for e in server_events(stub, "proc-kill-action")
        if e["type"] == "action-result"
    ]
    assert [r["detail"].split(":")[0] for r in results] == ["interrupted"]


def test_one_sync_process_per_store(sync_sites: Callable[..., SyncSite], stub: StubProcess) -> None:
    site = sync_sites("proc-sole")
    daemon = site.spawn("sync")
    wait_for(lambda: status(site)["connectivity"]["state"] == "online", 20)
    second = site.run("sync", "--once")
    assert second.returncode == 4 and "another sync process is running" in second.stderr
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    third = site.run("sync", "--once")  # the kernel released the lock with the process
    assert third.returncode == 0, third.stderr


def canned(status: int, headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n{headers}\r\n".encode()
    )


def test_the_sync_process_rides_out_500s_429s_and_cut_bodies_without_a_tight_loop(
    sync_sites: Callable[..., SyncSite], stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("proc-http-faults", server=proxy.url)
    site.assign("web", name="a-proc-http-faults")
    process = site.spawn("sync")
    first = site.desired_on_server()
    wait_for(lambda: in_force(site) == first, 30)

    def attempts_during(seconds: float) -> int:
        before = proxy.connections
        time.sleep(seconds)
        return proxy.connections - before

    proxy.answer(lambda head: canned(500))
    proxy.cut()
    stub.admin.put(  # a change the agent can only learn of once the link is back
        "/v1/admin/assignments/a-proc-http-faults",
        json={"profile": "base", "selector": {"cluster_id": "proc-http-faults"}},
    ).raise_for_status()
    second = site.desired_on_server()
    errors = attempts_during(4.0)
    # Backoff capped at 2 s with a 0.5 s floor, the waiter standing down: a few attempts.
    assert 1 <= errors <= 4.0 / 0.5 + 3, errors
    proxy.answer(lambda head: canned(429, "Retry-After: 4\r\n"))
    time.sleep(2.5)  # the next attempt meets the 429 within the 2 s backoff
    quiet = attempts_during(2.0)
    assert quiet <= 1, quiet  # Retry-After: 4 s of silence, not the 2 s backoff
    proxy.truncate_after(3000)  # the new bundle cut mid-body, again and again
    time.sleep(3)
    assert in_force(site) == first  # nothing half-downloaded is ever used
    assert list(site.config.state_dir.joinpath("downloads").iterdir()) == []
    assert process.poll() is None  # no crash
    proxy.pass_()
    wait_for(lambda: in_force(site) == second, 30)
    assert status(site)["connectivity"]["state"] == "online"
