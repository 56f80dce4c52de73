"""Adversarial tests of the sync engine: a hostile or broken server, a hostile link, races.

The engine is the real one, in-process, against the real stub process; the hostile answers come
from ``FakeServerAtLink``, a fake server placed at the link with ``FaultProxy.answer``: it
answers the requests it has a canned answer for (each with ``Connection: close``, so the next
request opens a new connection and is seen again) and forwards the others to the real stub.
Tests marked ``xfail(strict=True)`` expose a real defect (see each reason); they start passing,
and so fail the run, once the defect is fixed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Event
from edge_agent.state import StateStore
from edge_agent.status import connectivity, report
from edge_agent.sync.client import Action, SyncClient
from edge_agent.sync.engine import Outcome, SyncEngine
from tests.conftest import HTTPCORE_SOCKET_LEAKS, wait_for
from tests.faultproxy import FaultProxy
from tests.stub_process import StubProcess
from tests.sync_site import SyncSite, profiled_stub

pytestmark = HTTPCORE_SOCKET_LEAKS


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    with profiled_stub(tmp_path_factory.mktemp("stub-adversarial")) as process:
        yield process


Sites = Callable[..., SyncSite]


# -- the fake server at the link -------------------------------------------------------------


def canned(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(
        {"type": "urn:fake:problem:hostile", "title": "x", "status": status, "detail": detail}
    ).encode()
    return canned(status, body, {"Content-Type": "application/problem+json", **(headers or {})})


def as_json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


Answer = bytes | Callable[[bytes], bytes]


class FakeServerAtLink:
    """A fake server for ``FaultProxy.answer``: ``routes`` maps a request-line prefix
    (``b"GET /v1/agent/wait"``) to a canned answer (or a function of the request head);
    anything else is forwarded to the real stub. ``seen`` lists the request lines it was
    given (the first request of each connection)."""

    def __init__(self, routes: dict[bytes, Answer]) -> None:
        self.routes = routes
        self.seen: list[bytes] = []

    def __call__(self, head: bytes) -> bytes | None:
        line = head.split(b"\r\n", 1)[0]
        self.seen.append(line)
        for prefix, answer in self.routes.items():
            if line.startswith(prefix):
                return answer(head) if callable(answer) else answer
        return None

    def count(self, prefix: bytes) -> int:
        return sum(1 for line in list(self.seen) if line.startswith(prefix))


def attach(proxy: FaultProxy, routes: dict[bytes, Answer]) -> FakeServerAtLink:
    fake = FakeServerAtLink(routes)
    proxy.answer(fake)
    proxy.cut()  # the kept-alive connection too: every request from now on meets the fake
    return fake


# -- helpers ----------------------------------------------------------------------------------


def revision(store: StateStore) -> int | None:
    policy = store.current_policy()
    return None if policy is None else int(policy["revision"])


def manifest_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def queue_action(stub: StubProcess, cluster_id: str, kind: str) -> None:
    stub.admin.post(
        "/v1/admin/actions", json={"type": kind, "selector": {"cluster_id": cluster_id}}
    ).raise_for_status()


def notes(n: int, prefix: str) -> list[Event]:
    return [Event(f"{prefix}-{i}", "note", "2026-12-01T00:00:00Z", {"i": i}) for i in range(n)]


def cycle_or_exception(engine: SyncEngine) -> Outcome | Exception:
    try:
        return engine.cycle()
    except Exception as exc:  # what a hostile answer must never cause
        return exc


@contextlib.contextmanager
def running(engine: SyncEngine) -> Iterator[None]:
    """``engine.run`` on a thread (the daemon: scheduler, waiter, flush loop) until the block
    ends; then its waiter thread is seen gone before the store is closed."""
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), name="adv-sync-run")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        wait_for(
            lambda: not any(t.name == "sync-wait" and t.is_alive() for t in threading.enumerate()),
            10,
        )
    assert not thread.is_alive()


def cluster(prefix: str, case: str) -> str:
    """A valid cluster id (lowercase DNS label) for one parametrized case."""
    return f"{prefix}-{case}".lower()[:60].strip("-")


def synced_engine(site: SyncSite, store: StateStore, **kwargs: Any) -> SyncEngine:
    engine = site.engine(store, **kwargs)
    first = engine.cycle()
    assert first.result == "synced", first
    return engine


# -- hostile answers must never escape the cycle (nor lock the link) ---------------------------

HUGE_DATE = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"  # OverflowError in parsedate
DIGITS_5000 = "9" * 5000  # int() refuses more than 4300 digits: ValueError

LOCKING: dict[str, dict[bytes, Answer]] = {
    "date-year-overflow": {b"": canned(304, headers={"Date": HUGE_DATE})},
    "x-edge-actions-5000-digits": {b"": canned(304, headers={"X-Edge-Actions": DIGITS_5000})},
}


@pytest.mark.parametrize("answer", sorted(LOCKING))
def test_a_hostile_answer_to_the_recovery_probe_never_locks_the_link(
    sync_sites: Sites, proxy: FaultProxy, answer: str
) -> None:
    site = sync_sites(cluster("adv-lock", answer), server=proxy.url)
    with site.open_store() as store:
        engine = synced_engine(site, store)
        proxy.down()
        assert engine.cycle().result == "unreachable"
        attach(proxy, LOCKING[answer])
        site.ticker.advance(600)
        hostile = cycle_or_exception(engine)  # the recovery probe meets the hostile answer
        proxy.pass_()
        outcomes = []
        for _ in range(3):  # the server is fine again; give the link every chance
            site.ticker.advance(3600)
            outcomes.append(engine.cycle().result)
        engine.close()
    assert (type(hostile).__name__, outcomes[-1]) == ("Outcome", "synced"), (hostile, outcomes)


DEEP = b"[" * 50_000 + b"]" * 50_000
RAISING: dict[str, dict[bytes, Answer]] = {
    **LOCKING,
    "actions-json-nested-50000-deep": {
        b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "1000000"}),
        b"GET /v1/agent/actions": canned(200, b'{"actions":' + DEEP + b"}"),
    },
    "action-seq-1e400": {
        b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "1000000"}),
        b"GET /v1/agent/actions": canned(
            200, b'{"actions":[{"id":"a1","seq":1e400,"type":"resync","created_at":"x"}]}'
        ),
    },
    "events-answer-nested-50000-deep": {
        b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "0"}),
        b"POST /v1/agent/events": canned(200, b'{"accepted":' + DEEP + b"}"),
    },
}


@pytest.mark.parametrize("answer", sorted(RAISING))
def test_a_hostile_answer_is_a_failed_request_not_an_exception(
    sync_sites: Sites, proxy: FaultProxy, answer: str
) -> None:
    site = sync_sites(cluster("adv-raise", answer), server=proxy.url)
    with site.open_store() as store:
        engine = synced_engine(site, store)
        store.enqueue(notes(1, f"raise-{answer}"))
        attach(proxy, RAISING[answer])
        outcome = cycle_or_exception(engine)
        engine.close()
    assert isinstance(outcome, Outcome), f"the cycle raised {outcome!r}"
    assert outcome.result == "unreachable"


# -- the outbox against a server that refuses everything ---------------------------------------


def test_a_server_refusing_every_event_does_not_empty_the_outbox(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    site = sync_sites("adv-refuse-all", server=proxy.url)
    with site.open_store() as store:
        engine = synced_engine(site, store)
        engine.cycle()  # deliver what enrolment queued
        store.enqueue(notes(16, "refuse-all"))
        fake = attach(
            proxy,
            {
                b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "0"}),
                b"POST /v1/agent/events": problem(422, "events are not accepted"),
            },
        )
        engine.cycle()
        stats = store.outbox_stats()
        posts = fake.count(b"POST /v1/agent/events")
        engine.close()
    assert stats["count"] >= 15, stats  # at most the one event found refused alone
    assert posts <= 10, posts  # not one request per event


# -- the waiter (long poll) against a hostile server -------------------------------------------


def real_time_engine(site: SyncSite, store: StateStore) -> SyncEngine:
    """The engine with the real monotonic clock, as ``edge-agent sync`` builds it."""
    return SyncEngine(site.config, store, site.clock)


def test_a_long_poll_answered_at_once_is_not_a_tight_loop(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    site = sync_sites("adv-wait-204", server=proxy.url)
    fake = FakeServerAtLink({b"GET /v1/agent/wait": canned(204)})
    proxy.answer(fake)
    with site.open_store() as store:
        engine = real_time_engine(site, store)
        with running(engine):
            wait_for(lambda: fake.count(b"GET /v1/agent/wait") >= 1, 15)
            first = fake.count(b"GET /v1/agent/wait")
            time.sleep(1.0)
            waits = fake.count(b"GET /v1/agent/wait") - first
    assert waits <= 3, f"{waits} long polls in one second"


def test_endless_change_notices_are_paced(sync_sites: Sites, proxy: FaultProxy) -> None:
    """A server answering every long poll at once with 'changed' gets at most one cycle per
    WAKE_GAP_S (2 s), never a loop."""
    site = sync_sites("adv-wait-changed", server=proxy.url)
    fake = FakeServerAtLink(
        {b"GET /v1/agent/wait": canned(200, b'{"changed":true,"etag":null,"actions":0}')}
    )
    proxy.answer(fake)
    with site.open_store() as store:
        engine = real_time_engine(site, store)
        with running(engine):
            wait_for(lambda: fake.count(b"GET /v1/agent/wait") >= 1, 15)
            first, cycles = fake.count(b"GET /v1/agent/wait"), engine.cycles
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                time.sleep(0.1)
            waits = fake.count(b"GET /v1/agent/wait") - first
            ran = engine.cycles - cycles
    assert waits <= 2, f"{waits} long polls in 2.5 s"
    assert ran <= 3, f"{ran} cycles in 2.5 s"


def test_a_server_without_the_long_poll_stays_online_by_polling(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    site = sync_sites("adv-wait-404", server=proxy.url)
    fake = FakeServerAtLink({b"GET /v1/agent/wait": problem(404, "no such route")})
    proxy.answer(fake)
    with site.open_store() as store:
        engine = real_time_engine(site, store)
        with running(engine):
            wait_for(lambda: fake.count(b"GET /v1/agent/wait") >= 1, 15)
            time.sleep(0.5)
            link = connectivity(store.sync_state(), proxy.url)
    assert link["state"] == "online", link


def test_after_re_enrolment_the_long_poll_is_held_again(
    sync_sites: Sites, stub: StubProcess
) -> None:
    site = sync_sites("adv-reenrol")
    site.assign("web")
    with site.open_store() as store:
        engine = synced_engine(site, store)
        queue_action(stub, "adv-reenrol", "reconcile-now")
        assert engine.cycle().actions == 1  # run, and its result delivered: done on the server
        listed = stub.admin.get("/v1/admin/actions", params={"cluster_id": "adv-reenrol"}).json()
        assert [a["state"] for a in listed["actions"]] == ["done"]
        store.clear_sync_credential()
        (site.root / "enroll.token").write_text(stub.token(uses=1, cluster_id="adv-reenrol"))
        assert engine.cycle().result == "synced"  # enrolled again
        assert engine.cycle().result == "synced"  # idle
        state = store.sync_state()
        credential = (store.sync_credential() or {})["credential"]
        engine.close()
    with SyncClient(stub.url, credential=credential, wait_s=1, timeout_s=5) as client:
        started = time.monotonic()
        answer = client.wait(state.get("etag"), int(state.get("actions_seq") or 0))
        held_s = time.monotonic() - started
    assert answer is None, f"answered at once ({held_s:.2f} s): {answer}"


# -- rejections that depend on the site, not on the bytes --------------------------------------


def test_a_bundle_rejected_for_the_site_clock_is_fetched_again_once_the_clock_is_right(
    sync_sites: Sites, stub: StubProcess
) -> None:
    site = sync_sites("adv-clock-behind")
    site.clock.advance(days=-3)  # an RTC three days behind: plausible, but wrong
    site.assign("web")
    with site.open_store() as store:
        engine = synced_engine(site, store)
        assert store.imports()[-1]["code"] == "not-yet-valid"
        assert revision(store) is None
        site.clock.advance(days=3)  # NTP answered
        site.ticker.advance(600)
        assert engine.cycle().result == "synced"
        in_force = revision(store)
        engine.close()
    assert in_force == site.desired_on_server()


# -- what a server says is shown, bounded and on one line --------------------------------------


def test_server_text_in_errors_is_bounded_and_one_line(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    """A problem detail of 60 KB with a newline and a terminal escape: what reaches the
    error, last_error (status) and the journal is one bounded, printable line."""
    site = sync_sites("adv-server-text", server=proxy.url)
    hostile = "A" * 60_000 + "\nCRITICAL edge_agent: forged line\x1b[2J"
    with site.open_store() as store:
        engine = synced_engine(site, store)
        attach(proxy, {b"": problem(500, hostile)})
        outcome = engine.cycle()
        last_error = str(store.sync_state().get("last_error"))
        engine.close()
    assert outcome.result == "unreachable"
    for text in (outcome.detail, last_error):
        assert len(text) <= 2000, len(text)
        assert text.isprintable(), repr(text[-60:])


def test_the_status_snapshot_follows_the_link_state(sync_sites: Sites, proxy: FaultProxy) -> None:
    site = sync_sites("adv-snapshot", server=proxy.url)
    site.assign("web")
    with site.open_store() as store:
        engine = synced_engine(site, store)
        site.enforce(store)  # writes the snapshot: online
        proxy.down()
        assert engine.cycle().result == "unreachable"
        engine.close()
    snapshot = json.loads(site.config.status_snapshot.read_text())
    doc = report(
        snapshot,
        cluster_id=site.cluster_id,
        labels={},
        source="snapshot",
        now=site.clock.now(),
        sync_server=proxy.url,
    )
    assert doc["connectivity"]["state"] == "offline", doc["connectivity"]


# -- standards that hold: these fail if they regress -------------------------------------------


def year_ahead() -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=365), True)


@pytest.mark.parametrize("retry_after", ["a-year-in-seconds", "a-year-as-a-date", "20-digits"])
def test_a_retry_after_of_a_year_is_capped_and_the_link_comes_back(
    sync_sites: Sites, proxy: FaultProxy, retry_after: str
) -> None:
    value = {
        "a-year-in-seconds": "31536000",
        "a-year-as-a-date": year_ahead(),
        "20-digits": "9" * 20,
    }[retry_after]
    site = sync_sites(cluster("adv-retry", retry_after), server=proxy.url)
    with site.open_store() as store:
        engine = synced_engine(site, store)
        attach(proxy, {b"": canned(429, b"", {"Retry-After": value})})
        failed = engine.cycle()
        assert failed.result == "unreachable"
        if retry_after == "20-digits":  # unusable: the backoff decides (retry_max_s is 2)
            assert failed.next_in_s <= 2.0
        else:
            assert 3500 <= failed.next_in_s <= 3600.001, failed
        connections = proxy.connections
        for _ in range(20):
            assert engine.cycle().result == "waiting"
        assert proxy.connections == connections
        proxy.pass_()
        site.ticker.advance(3601)
        assert engine.cycle().result == "synced"
        engine.close()


HUGE: dict[str, dict[bytes, Answer]] = {
    "200-KiB-header": {b"": canned(304, headers={"X-Junk": "a" * 200_000})},
    "5-MiB-action-list": {
        b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "1000000"}),
        b"GET /v1/agent/actions": canned(200, b'{"actions":[],"pad":"' + b"p" * (5 << 20) + b'"}'),
    },
    "5-MiB-problem": {b"": problem(500, "d" * (5 << 20))},
}


@pytest.mark.parametrize("answer", sorted(HUGE))
def test_huge_answers_are_cut_off_and_are_a_failed_request(
    sync_sites: Sites, proxy: FaultProxy, answer: str
) -> None:
    site = sync_sites(cluster("adv-huge", answer), server=proxy.url)
    with site.open_store() as store:
        engine = synced_engine(site, store)
        attach(proxy, HUGE[answer])
        outcome = cycle_or_exception(engine)
        assert isinstance(outcome, Outcome), outcome
        assert outcome.result == "unreachable" and len(outcome.detail) < 70_000
        assert engine.cycle().result == "waiting"
        engine.close()


def test_a_replayed_old_bundle_with_a_lying_revision_header_changes_nothing(
    sync_sites: Sites, stub: StubProcess, proxy: FaultProxy
) -> None:
    site = sync_sites("adv-replay", server=proxy.url)
    site.assign("web", name="a-adv-replay")
    with site.open_store() as store:
        engine = synced_engine(site, store)
        old = revision(store)
        assert old is not None
        old_bytes = (stub.data / "bundles" / f"{old}.bundle").read_bytes()
        stub.admin.put(
            "/v1/admin/assignments/a-adv-replay",
            json={"profile": "base", "selector": {"cluster_id": "adv-replay"}},
        ).raise_for_status()
        assert engine.cycle().result == "synced"
        current = revision(store)
        assert current is not None and current > old
        site.enforce(store)
        files, inventory = manifest_state(site.manifests), store.inventory()
        attach(
            proxy,
            {
                b"GET /v1/agent/desired": canned(
                    200,
                    old_bytes,
                    {
                        "ETag": f'"{hashlib.sha256(old_bytes).hexdigest()}"',
                        "X-Edge-Revision": str(current + 100),
                        "Content-Type": "application/vnd.edge-agent.bundle",
                    },
                )
            },
        )
        engine.cycle()
        assert revision(store) == current
        assert store.imports()[-1]["code"] == "rollback"
        summary = site.enforce(store)
        assert summary is not None and summary["counts"]["pruned"] == 0
        assert manifest_state(site.manifests) == files and store.inventory() == inventory
        engine.close()


def echo_authorization(status: int) -> Callable[[bytes], bytes]:
    """A server that quotes the Authorization header back, in its detail and a header."""

    def respond(head: bytes) -> bytes:
        auth = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                auth = value.strip()
        text = auth.decode()
        secret = text.split()[-1] if text else ""
        return problem(
            status, f"you sent {text!r}; token {secret}", {"X-Echo": text, "Retry-After": "1"}
        )

    return respond


@pytest.mark.parametrize("where", ["enroll-401", "desired-401", "desired-429", "desired-500"])
def test_a_server_echoing_the_secret_never_gets_it_into_errors_state_or_logs(
    sync_sites: Sites, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent")  # the agent's own lines, all of them
    site = sync_sites(cluster("adv-echo", where), server=proxy.url)
    token = (site.root / "enroll.token").read_text().strip()
    status = int(where.split("-")[1])
    with site.open_store() as store:
        engine = site.engine(store)
        if where.startswith("enroll"):
            secret = token
            attach(proxy, {b"POST /v1/enroll": echo_authorization(status)})
        else:
            assert engine.cycle().result == "synced"
            secret = (store.sync_credential() or {})["credential"]
            attach(proxy, {b"GET /v1/agent/desired": echo_authorization(status)})
        outcome = engine.cycle()
        view = json.dumps(store.view())
        state = json.dumps(store.sync_state())
        engine.close()
    assert outcome.result in ("refused", "unreachable"), outcome
    assert "you sent" in outcome.detail  # the server's text is quoted ...
    for text in (outcome.detail, view, state, caplog.text):
        assert secret not in text  # ... never the secret in it
    snapshot = site.config.status_snapshot
    assert not snapshot.exists() or secret not in snapshot.read_text()


def test_two_engines_offered_the_same_actions_run_each_once(
    sync_sites: Sites, stub: StubProcess
) -> None:
    """``sync --once`` started while the daemon runs: both fetch the same pending actions at
    the same moment, each action still runs exactly once."""
    site = sync_sites("adv-two-engines")
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def runner(name: str) -> Callable[[Action], tuple[str, str, dict[str, Any]]]:
        def run(action: Action) -> tuple[str, str, dict[str, Any]]:
            with lock:
                ran.append((name, action.id))
            time.sleep(0.05)
            return "succeeded", "ran", {}

        return run

    with site.open_store() as first_store, site.open_store() as second_store:
        first = synced_engine(site, first_store, actions=runner("first"))
        second = site.engine(second_store, actions=runner("second"))
        for _ in range(4):
            queue_action(stub, "adv-two-engines", "collect-diagnostics")
        barrier = threading.Barrier(2)
        outcomes: list[Outcome] = []

        def go(engine: SyncEngine) -> None:
            barrier.wait(5)
            outcomes.append(engine.cycle())

        threads = [threading.Thread(target=go, args=(e,)) for e in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [o.result for o in outcomes] == ["synced", "synced"], outcomes
        journal = first_store.action_journal()
        first.close()
        second.close()
    ids = [action_id for _, action_id in ran]
    assert len(ids) == 4 and len(set(ids)) == 4, ran
    assert sorted(e["outcome"] for e in journal) == ["succeeded"] * 4


def test_an_action_listed_twice_by_the_server_runs_once(
    sync_sites: Sites, proxy: FaultProxy
) -> None:
    site = sync_sites("adv-dup-action", server=proxy.url)
    ran: list[str] = []

    def runner(action: Action) -> tuple[str, str, dict[str, Any]]:
        ran.append(action.id)
        return "succeeded", "ran", {}

    item = {"id": "dup-1", "seq": 7, "type": "resync", "params": {}, "created_at": "x"}
    with site.open_store() as store:
        engine = synced_engine(site, store, actions=runner)
        attach(
            proxy,
            {
                b"GET /v1/agent/desired": canned(304, headers={"X-Edge-Actions": "7"}),
                b"GET /v1/agent/actions": canned(200, as_json({"actions": [item, item]})),
                b"POST /v1/agent/events": canned(200, b'{"accepted":1,"duplicates":0}'),
            },
        )
        assert engine.cycle().result == "synced"
        store.update_sync_state({"actions_seq": 0})  # as if asked again (a restart, a resync)
        assert engine.cycle().result == "synced"
        engine.close()
    assert ran == ["dup-1"]
