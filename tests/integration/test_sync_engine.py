"""The sync engine in-process against the real stub process, with faults on the link.

The engine is the real one with an injected wall clock and monotonic clock (``SyncSite``), so
backoff is moved by the test, never slept. The stub runs as a real process on loopback;
faults come from ``FaultProxy`` (TCP faults, and ``answer`` for the HTTP ones: a 500, a 429, a
bundle tampered with on the way). What the server recorded is read from its own database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle.model import Mode
from edge_agent.outbox import Event
from edge_agent.state import StateStore
from edge_agent.status import report
from edge_agent.sync.client import Action, SyncClient
from edge_agent.sync.engine import ROTATE_AFTER
from mgmt_stub.builder import build_bundle
from mgmt_stub.keys import KeyDirectory
from tests.conftest import HTTPCORE_SOCKET_LEAKS, PROFILES, FakeClock
from tests.faultproxy import FaultProxy
from tests.stub_process import StubProcess, profile_body
from tests.sync_site import SyncSite, profiled_stub

pytestmark = HTTPCORE_SOCKET_LEAKS


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    with profiled_stub(tmp_path_factory.mktemp("stub-engine")) as process:
        yield process


Sites = Callable[..., SyncSite]


def change_profile(stub: StubProcess, name: str, marker: str) -> None:
    """A new version of profile ``name`` (a changed annotation): a new revision for its clusters."""
    body = profile_body(PROFILES / ("hello-web" if name == "web" else "baseline"))
    layer = body["layers"][0]
    first = sorted(layer["manifests"])[0]
    layer["manifests"][first] = layer["manifests"][first] + f"\n# {marker}\n"
    stub.admin.put(f"/v1/admin/profiles/{name}", json=body).raise_for_status()


def revision(store: StateStore) -> int | None:
    policy = store.current_policy()
    return None if policy is None else int(policy["revision"])


def manifest_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def canned(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- the normal path --------------------------------------------------------------------------


def test_enrols_pulls_commits_enforces_and_delivers_every_event_once(sync_sites: Sites) -> None:
    site = sync_sites("eng-basic")
    site.assign("web")
    with site.open_store() as store:
        engine = site.engine(store)
        first = engine.cycle()
        assert first.result == "synced", first
        assert first.revision is not None and revision(store) == first.revision
        policy = store.current_policy()
        assert policy is not None and policy["source"]["kind"] == "sync"
        assert policy["source"]["location"] == site.stub.url
        summary = site.enforce(store)
        assert summary is not None and summary["counts"]["created"] == 4
        queued = [json.loads(text) for _, text in store.outbox_batch(1000, 1 << 30)]
        assert {e["type"] for e in queued} >= {"reconcile", "health"}
        second = engine.cycle()
        assert second.result == "synced" and second.delivered == len(queued)
        assert store.outbox_stats()["count"] == 0
        assert engine.cycle().delivered == 0  # idle: nothing new to say
        engine.close()
    events = site.server_events()
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert {e["id"] for e in queued} <= set(ids)
    imports = [json.loads(e["data"]) for e in events if e["type"] == "import"]
    assert imports[0]["result"] == "committed" and imports[0]["source"] == "sync"
    cluster = site.server_cluster()
    assert cluster["reported"] == first.revision and cluster["health"] == "healthy"


def test_no_token_means_no_request_and_a_foreign_credential_is_never_sent(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    site = sync_sites("eng-notoken", server=proxy.url, token=False)
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "not-enrolled"
        assert proxy.connections == 0
        # A credential held for another server (or cluster id) stays unused.
        store.set_sync_credential(
            {
                "server": "https://other.example",
                "cluster_id": "eng-notoken",
                "credential_id": "x",
                "credential": "eac_x_secret",
            }
        )
        assert engine.cycle().result == "not-enrolled"
        assert proxy.connections == 0
        engine.close()


def test_offline_and_online_copies_of_a_revision_are_one_and_a_newer_one_wins(
    sync_sites: Sites, stub: StubProcess, tmp_path: Path
) -> None:
    site = sync_sites("eng-same")
    stub.admin.post(
        "/v1/admin/clusters", json={"cluster_id": "eng-same", "labels": {"region": "eu"}}
    ).raise_for_status()
    site.assign("web")
    exported = stub.admin.get("/v1/admin/bundles/export", params={"cluster_id": "eng-same"})
    exported.raise_for_status()
    usb = tmp_path / "usb.bundle"
    usb.write_bytes(exported.content)
    assert site.run("import", str(usb)).returncode == 0
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        results = [(i["result"], i["location"]) for i in store.imports()]
        assert results == [("committed", str(usb)), ("already-in-force", stub.url)]
        policy = store.current_policy()
        assert policy is not None and policy["source"]["kind"] == "bundle"
        online_revision = revision(store)
        assert online_revision is not None

        # A newer revision arrives by USB: the server's older one is then a rollback, refused
        # once and not downloaded again.
        newer = tmp_path / "newer.bundle"
        build_bundle(
            PROFILES / "baseline",
            keys=KeyDirectory(stub.keys),
            target={"cluster_id": "eng-same"},
            revision=online_revision + 1000,
            output=newer,
            now=dt.datetime.now(dt.UTC),
        )
        assert site.run("import", str(newer)).returncode == 0
        store.update_sync_state({"etag": None})  # as after a resync: the server's bundle again
        assert engine.cycle().result == "synced"
        assert revision(store) == online_revision + 1000
        assert store.imports()[-1]["code"] == "rollback"
        count = len(store.imports())
        assert engine.cycle().result == "synced"
        assert len(store.imports()) == count  # its ETag is remembered: a 304 now
        engine.close()


# -- what the server says cannot change the policy -------------------------------------------


def test_a_bundle_tampered_on_the_way_is_rejected_reported_and_the_policy_stays(
    sync_sites: Sites, stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("eng-tamper", server=proxy.url)
    site.assign("web", name="a-eng-tamper")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        good = revision(store)
        stub.admin.put(
            "/v1/admin/assignments/a-eng-tamper",
            json={"profile": "base", "selector": {"cluster_id": "eng-tamper"}},
        ).raise_for_status()
        desired = site.server_cluster()["desired"]
        original = (stub.data / "bundles" / f"{desired}.bundle").read_bytes()
        index = original.index(b"default-deny")
        tampered = original[:index] + b"X" + original[index + 1 :]
        etag = f'"{hashlib.sha256(tampered).hexdigest()}"'

        def mitm(head: bytes) -> bytes | None:
            if head.startswith(b"GET /v1/agent/desired"):
                return canned(
                    200,
                    tampered,
                    {
                        "ETag": etag,
                        "X-Edge-Revision": str(desired),
                        "Content-Type": "application/vnd.edge-agent.bundle",
                    },
                )
            return None

        proxy.answer(mitm)
        proxy.cut()  # the kept-alive connection too
        engine.cycle()
        assert revision(store) == good  # the policy in force stayed
        assert store.imports()[-1]["code"] == "hash-mismatch"
        assert list(site.config.state_dir.joinpath("downloads").iterdir()) == []
        proxy.pass_()
        site.ticker.advance(60)
        assert engine.cycle().result == "synced"
        assert revision(store) == desired  # the real one verifies
        engine.close()
    rejected = [json.loads(e["data"]) for e in site.server_events() if e["type"] == "import"]
    assert any(r["result"] == "rejected" and r["code"] == "hash-mismatch" for r in rejected)


def test_a_server_without_the_signing_keys_cannot_change_the_policy(
    sync_sites: Sites, stub: StubProcess, tmp_path: Path
) -> None:
    rogue = StubProcess.start(tmp_path / "rogue")  # its own keys: a compromised server
    try:
        rogue.put_profile("web", PROFILES / "hello-web")
        site = sync_sites("eng-rogue")
        site.assign("web")
        with site.open_store() as store:
            assert site.engine(store).cycle().result == "synced"
            good = revision(store)
        token = site.root / "rogue.token"
        token.write_text(rogue.token(uses=1))
        text = site.config_path.read_text()
        text = text.replace(stub.url, rogue.url).replace(
            str(site.root / "enroll.token"), str(token)
        )
        site.config_path.write_text(text)
        rogue.admin.put(
            "/v1/admin/assignments/all",
            json={"profile": "web", "selector": {"cluster_id": "eng-rogue"}},
        ).raise_for_status()
        result = site.run("sync", "--once", "--json")
        assert result.returncode == 0, result.stderr
        with site.open_store() as store:
            assert revision(store) == good
            assert store.imports()[-1]["code"] == "key-unknown"
        reported = [json.loads(e["data"]) for e in server_events_of(rogue, "eng-rogue")]
        assert any(r.get("code") == "key-unknown" for r in reported)
        status = site.run("status", "--json")
        assert status.returncode == 1 and "key-unknown" in json.loads(status.stdout)["reason"]
    finally:
        rogue.stop()


def server_events_of(stub: StubProcess, cluster_id: str) -> list[dict[str, Any]]:
    from tests.sync_site import server_events

    return server_events(stub, cluster_id)


# -- faults -------------------------------------------------------------------------------------

FAULTS = {
    "500": lambda proxy: proxy.answer(lambda head: canned(500, b"{}")),
    "429": lambda proxy: proxy.answer(lambda head: canned(429, b"", {"Retry-After": "30"})),
    "slow": lambda proxy: proxy.delay(5.0),
    "truncated": lambda proxy: proxy.truncate_after(2000),
    "reset": lambda proxy: proxy.reset_after(2000),
    "down": lambda proxy: proxy.down(),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_no_crash_no_tight_loop_no_partial_state(
    sync_sites: Sites, stub: StubProcess, proxy: FaultProxy, fault: str
) -> None:
    site = sync_sites(f"eng-fault-{fault}", server=proxy.url)
    site.assign("web", name=f"a-eng-fault-{fault}")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        before = revision(store)
        site.enforce(store)
        files = manifest_state(site.manifests)
        stub.admin.put(
            f"/v1/admin/assignments/a-eng-fault-{fault}",
            json={"profile": "base", "selector": {"cluster_id": f"eng-fault-{fault}"}},
        ).raise_for_status()
        wanted = site.server_cluster()["desired"]
        assert wanted != before
        FAULTS[fault](proxy)
        proxy.cut()  # the kept-alive connection too
        connections = proxy.connections
        failed = engine.cycle()
        assert failed.result == "unreachable", failed
        assert failed.next_in_s >= (30 if fault == "429" else 0.5)
        after_failure = proxy.connections
        assert after_failure - connections <= 2  # one request (a reset may retry its connect)
        for _ in range(50):  # the scheduler asking again and again: the link says wait
            assert engine.cycle().result == "waiting"
        assert proxy.connections == after_failure
        assert revision(store) == before
        assert list(site.config.state_dir.joinpath("downloads").iterdir()) == []
        site.enforce(store)
        assert manifest_state(site.manifests) == files  # the link never touches workloads
        if fault == "429":  # Retry-After is honoured, not undercut by the backoff
            site.ticker.advance(29)
            assert engine.cycle().result == "waiting"
            site.ticker.advance(2)
        else:
            site.ticker.advance(3)
        probe = engine.cycle()  # one probe, failing again: backoff grows, still no burst
        assert probe.result == "unreachable" and proxy.connections - after_failure <= 2
        status = site.run("status", "--json")
        link = json.loads(status.stdout)["connectivity"]
        assert link["state"] == "offline" and link["last_error"]
        proxy.pass_()
        site.ticker.advance(600)
        assert engine.cycle().result == "synced"
        assert revision(store) == wanted
        engine.close()
    link = json.loads(site.run("status", "--json").stdout)["connectivity"]
    assert link["state"] == "online"


def test_link_state_never_changes_workloads(
    sync_sites: Sites, stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("eng-calm", server=proxy.url)
    site.assign("web")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        site.enforce(store)
        files = manifest_state(site.manifests)
        inventory = store.inventory()

        def check() -> None:
            summary = site.enforce(store)
            assert summary is not None and summary["counts"]["pruned"] == 0
            assert summary["counts"]["created"] == 0 and summary["counts"]["healed"] == 0
            assert manifest_state(site.manifests) == files
            assert store.inventory() == inventory

        proxy.down()
        engine.cycle()
        check()
        proxy.answer(lambda head: canned(503, b"{}"))
        site.ticker.advance(600)
        engine.cycle()
        check()
        proxy.answer(
            lambda head: canned(204) if head.startswith(b"GET /v1/agent/desired") else None
        )  # "nothing is assigned to you"
        proxy.cut()
        site.ticker.advance(600)
        assert engine.cycle().result == "synced"
        check()
        # Re-enrolment: a new credential, the conversation starts afresh; nothing moves.
        proxy.pass_()
        store.clear_sync_credential()
        (site.root / "enroll.token").write_text(stub.token(uses=1, cluster_id="eng-calm"))
        assert engine.cycle().result == "synced"
        assert store.imports()[-1]["result"] == "already-in-force"
        check()
        engine.close()


# -- the outbox ---------------------------------------------------------------------------------


def test_an_event_the_server_refuses_is_bisected_out_counted_and_the_rest_delivered(
    sync_sites: Sites,
) -> None:
    site = sync_sites("eng-poison")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        good = [Event(f"poison-ok-{i}", "note", "2026-12-01T00:00:00Z", {"i": i}) for i in range(9)]
        bad = Event("poison-bad", "note", "2026-12-01T00:00:00Z", {"blob": "x" * 20000})
        store.enqueue([*good[:4], bad, *good[4:]])
        outcome = engine.cycle()
        assert outcome.result == "synced" and outcome.delivered >= 9
        stats = store.outbox_stats()
        assert stats["count"] == 0 and stats["refused"] == {"note": 1}
        engine.close()
    ids = {e["event_id"] for e in site.server_events()}
    assert {e.id for e in good} <= ids and "poison-bad" not in ids
    status = json.loads(site.run("status", "--json").stdout)
    assert status["outbox"]["refused"] == {"note": 1}


# -- actions and the credential ----------------------------------------------------------------


def queue_action(stub: StubProcess, cluster_id: str, kind: str) -> None:
    stub.admin.post(
        "/v1/admin/actions", json={"type": kind, "selector": {"cluster_id": cluster_id}}
    ).raise_for_status()


def test_actions_run_once_and_report_their_results(sync_sites: Sites, stub: StubProcess) -> None:
    site = sync_sites("eng-actions")
    site.assign("web")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        old = (store.sync_credential() or {})["credential"]
        for kind in ("resync", "reconcile-now", "collect-diagnostics", "rotate-credential"):
            queue_action(stub, "eng-actions", kind)
        outcome = engine.cycle()
        assert outcome.actions == 4, outcome
        assert store.reconcile_requests() == 1
        new = (store.sync_credential() or {})["credential"]
        assert new != old
        assert engine.cycle().actions == 0
        journal = store.action_journal()
        assert [e["outcome"] for e in journal] == ["succeeded"] * 4
        engine.close()
    listed = stub.admin.get("/v1/admin/actions", params={"cluster_id": "eng-actions"}).json()
    assert sorted(a["state"] for a in listed["actions"]) == ["done"] * 4
    results = [json.loads(e["data"]) for e in site.server_events() if e["type"] == "action-result"]
    diagnostics = next(r for r in results if r["type"] == "collect-diagnostics")
    assert diagnostics["diagnostics"]["revision"] == revision_of(site)
    with SyncClient(stub.url, credential=old) as client, pytest.raises(Exception, match="401"):
        client.actions()  # the new credential was used: the old one is retired


def revision_of(site: SyncSite) -> int | None:
    with site.open_store() as store:
        return revision(store)


def test_an_action_cut_short_is_never_run_again_and_reported_failed(
    sync_sites: Sites, stub: StubProcess
) -> None:
    site = sync_sites("eng-cut")
    ran: list[str] = []

    def runner(action: Action) -> tuple[str, str, dict[str, Any]]:
        ran.append(action.id)
        return "succeeded", "ran", {}

    with site.open_store() as store:
        engine = site.engine(store, actions=runner)
        assert engine.cycle().result == "synced"
        queue_action(stub, "eng-cut", "collect-diagnostics")
        [pending] = SyncClient(
            stub.url, credential=(store.sync_credential() or {})["credential"]
        ).actions()
        # What the journal holds after a kill -9 between begin and finish:
        assert store.action_begin(pending.id, pending.type, now=site.clock.now())
        engine.close()
    with site.open_store() as store:
        engine = site.engine(store, actions=runner)
        assert engine.recover_interrupted() == 1
        assert engine.cycle().result == "synced"
        assert ran == []  # begun once already: never again, even though the server listed it
        assert store.action_journal()[0]["outcome"] == "interrupted"
        engine.close()
    listed = stub.admin.get("/v1/admin/actions", params={"cluster_id": "eng-cut"}).json()
    assert [a["state"] for a in listed["actions"]] == ["failed"]


def test_the_credential_is_rotated_when_old_and_never_expires_offline(
    sync_sites: Sites, stub: StubProcess
) -> None:
    site = sync_sites("eng-rotate")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        first = store.sync_credential() or {}
        site.clock.advance(days=20)
        assert engine.cycle().result == "synced"
        assert (store.sync_credential() or {})["credential_id"] == first["credential_id"]
        # A year offline (no cycle reached the server): the old credential still works.
        site.clock.advance(days=365)
        assert dt.timedelta(days=385) > ROTATE_AFTER
        assert engine.cycle().result == "synced"
        second = store.sync_credential() or {}
        assert second["credential_id"] != first["credential_id"]
        assert engine.cycle().result == "synced"  # the new one works
        engine.close()


# -- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("skew_h", [-3, 5])
def test_clock_skew_between_agent_and_server(sync_sites: Sites, skew_h: int) -> None:
    site = sync_sites(f"eng-skew{skew_h + 10}")
    site.assign("web")
    site.clock.advance(hours=skew_h)
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        site.enforce(store)
        assert engine.cycle().result == "synced"
        skew = store.sync_state()["clock_skew_s"]
        assert abs(skew + skew_h * 3600) <= 5
        engine.close()
    cluster = site.server_cluster()
    assert cluster["health"] == "healthy" and cluster["reported"] == revision_of(site)
    link = json.loads(site.run("status", "--json").stdout)["connectivity"]
    assert abs(link["clock_skew_s"] + skew_h * 3600) <= 5


def test_staleness_rule_audits_when_stale_and_is_reported_when_the_link_returns(
    sync_sites: Sites, stub: StubProcess, proxy: FaultProxy
) -> None:
    body = profile_body(PROFILES / "hello-web")
    body["settings"] = {**body["settings"], "stale_after_s": 3600, "on_stale": "audit"}
    stub.admin.put("/v1/admin/profiles/stale-web", json=body).raise_for_status()
    site = sync_sites("eng-stale", server=proxy.url)
    site.assign("stale-web")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        site.enforce(store)
        assert engine.cycle().result == "synced"
        proxy.down()
        site.clock.advance(minutes=50)
        engine.cycle()
        first = sorted(site.manifests.glob("*.yaml"))[0]
        first.write_text(first.read_text() + "\n# changed by hand\n")
        still = site.enforce(store)
        assert still is not None and still["mode"] == "enforce" and still["counts"]["healed"] == 1
        site.clock.advance(minutes=20)  # 70 minutes without contact: stale
        doc = report(
            store.view(),
            cluster_id=site.cluster_id,
            labels={},
            source="test",
            now=site.clock.now(),
            sync_server=proxy.url,
        )  # the command would read the real clock; this is its document at the site's time
        assert doc["verdict"] == "degraded" and doc["staleness"]["stale"] is True
        assert "STALE since" in doc["reason"] and "audit only" in doc["reason"]
        assert doc["connectivity"]["state"] == "offline"
        first.write_text(first.read_text() + "\n# changed again\n")
        audited = site.enforce(store)
        assert audited is not None and audited["mode"] == Mode.AUDIT.value
        assert audited["counts"]["drifted"] == 1 and "changed again" in first.read_text()
        proxy.pass_()
        site.ticker.advance(600)
        site.clock.advance(seconds=5)
        assert engine.cycle().result == "synced"  # contact: authoritative again
        healed = site.enforce(store)
        assert (
            healed is not None and healed["mode"] == "enforce" and healed["counts"]["healed"] == 1
        )
        assert engine.cycle().result == "synced"
        engine.close()
    events = sorted(site.server_events(), key=lambda e: (e["time"], e["event_id"]))
    health = [json.loads(e["data"]) for e in events if e["type"] == "health"]
    assert [h["stale"] for h in health if h["stale"]] and health[-1]["stale"] is False


def test_bytes_of_an_idle_cycle(sync_sites: Sites, stub: StubProcess, proxy: FaultProxy) -> None:
    site = sync_sites("eng-idle", server=proxy.url)
    site.assign("web")
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        site.enforce(store)
        assert engine.cycle().result == "synced"
        before = proxy.bytes_up + proxy.bytes_down
        connections = proxy.connections
        assert engine.cycle().delivered == 0
        middle = proxy.bytes_up + proxy.bytes_down
        for _ in range(3):
            assert engine.cycle().delivered == 0
        assert proxy.connections == connections  # the kept-alive connection serves them all
        engine.close()
    proxy.wait_idle()
    idle = middle - before
    assert 0 < idle <= 600, idle  # one conditional GET answered 304, nothing else
    assert proxy.bytes_up + proxy.bytes_down - middle == 3 * idle


class HoldDuringTheImport(FakeClock):
    """A clock whose second reading while a downloaded bundle waits in the downloads folder
    is the moment the person on site runs ``edge-agent hold`` (another store handle): after
    the importer decided to apply the bundle, before it commits."""

    def __init__(self, site: SyncSite) -> None:
        super().__init__(site.clock.current)
        self.site = site
        self.armed = False
        self.readings = 0

    def now(self) -> dt.datetime:
        downloads = self.site.config.state_dir / "downloads"
        if self.armed and any(downloads.glob("desired-*.bundle")):
            self.readings += 1
            if self.readings == 2:
                self.armed = False
                with self.site.open_store() as other:
                    other.set_hold("inspection", now=self.current)
        return self.current


def test_a_bundle_that_failed_to_commit_is_fetched_again_later_not_at_once(
    sync_sites: Sites, stub: StubProcess
) -> None:
    site = sync_sites("eng-transient")
    site.assign("web", name="a-eng-transient")
    # Ten seconds before a five-minute boundary of the wall clock (and after now): a retry
    # slot on the clock's grid, rather than five minutes after the failure, would fire at once.
    boundary = (int(site.clock.current.timestamp()) + 20) // 300 * 300 + 300
    site.clock.current = dt.datetime.fromtimestamp(boundary - 10, dt.UTC)
    clock = HoldDuringTheImport(site)
    site.clock = clock
    with site.open_store() as store:
        engine = site.engine(store)
        assert engine.cycle().result == "synced"
        first = revision(store)
        stub.admin.put(
            "/v1/admin/assignments/a-eng-transient",
            json={"profile": "base", "selector": {"cluster_id": "eng-transient"}},
        ).raise_for_status()
        clock.armed = True
        assert engine.cycle().result == "synced"
        assert store.imports()[-1]["result"] == "failed"  # the hold won the race
        assert revision(store) == first
        count = len(store.imports())
        clock.advance(seconds=30)
        assert engine.cycle().result == "synced"
        assert len(store.imports()) == count  # not downloaded again at once
        clock.advance(minutes=5)
        assert engine.cycle().result == "synced"
        assert store.imports()[-1]["result"] == "pending"  # fetched again: kept, held
        assert revision(store) == first
        engine.close()
