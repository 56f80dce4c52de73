"""The sync groundwork in the real state store: credential, outbox and action journal."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent import state as state_module
from edge_agent.errors import StateError
from edge_agent.outbox import Counters, Event, OutboxPolicy, Queued, admit, new_event
from edge_agent.state import INTERRUPTED, StateStore
from tests.conftest import NOW, Site

SECRET = "ea1_s3cr3t-value-that-must-never-leak"
CREDENTIAL = {
    "server_url": "https://mgmt.example:8700",
    "cluster_id": "site-1",
    "credential_id": "cred-42",
    "credential": SECRET,
}


# -- sync credential -------------------------------------------------------------------


def test_sync_credential_round_trip_and_clear(site: Site, store: StateStore) -> None:
    assert store.sync_credential() is None
    store.set_sync_credential(CREDENTIAL)
    assert store.sync_credential() == CREDENTIAL
    store.close()
    with site.open_store() as reopened:
        assert reopened.sync_credential() == CREDENTIAL
        reopened.set_sync_credential({**CREDENTIAL, "credential": "rotated"})
        assert reopened.sync_credential() == {**CREDENTIAL, "credential": "rotated"}
        reopened.clear_sync_credential()
        reopened.clear_sync_credential()  # twice is harmless
        assert reopened.sync_credential() is None


def test_sync_credential_never_reaches_view_or_snapshot(site: Site, store: StateStore) -> None:
    store.set_sync_credential(CREDENTIAL)
    store.write_snapshot()
    assert SECRET not in repr(store.view())
    snapshot = site.config.status_snapshot
    assert snapshot is not None and snapshot.exists()
    assert SECRET not in snapshot.read_text(encoding="utf-8")
    # The only place it lives is the private store folder.
    folder = store.state_dir / "store"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in Path(store.state_dir).rglob("*"):
        if path.is_file() and not path.is_relative_to(folder):
            assert SECRET.encode() not in path.read_bytes(), path


def test_sync_credential_refuses_non_json_without_quoting_it(store: StateStore) -> None:
    with pytest.raises(StateError) as caught:
        store.set_sync_credential({"credential": SECRET, "bad": object()})
    assert SECRET not in str(caught.value)
    assert store.sync_credential() is None


# -- outbox ----------------------------------------------------------------------------


def make_events(n: int, kind: str = "reconcile", start: int = 0) -> list[Event]:
    rng = random.Random(start)
    return [
        new_event(kind, {"n": start + i}, NOW + dt.timedelta(seconds=start + i), rng)
        for i in range(n)
    ]


def numbers(batch: list[tuple[int, str]]) -> list[int]:
    return [json.loads(text)["data"]["n"] for _, text in batch]


def test_order_batch_ack_and_idempotent_ack(store: StateStore) -> None:
    assert store.outbox_batch(10, 1 << 20) == []
    store.enqueue(make_events(600))  # spans three index pages
    batch = store.outbox_batch(500, 1 << 20)
    assert numbers(batch) == list(range(500))
    assert store.outbox_batch(500, 1 << 20) == batch  # not removed until acked
    store.ack([seq for seq, _ in batch[:300]])
    store.ack([seq for seq, _ in batch[:300]])  # again: harmless
    store.ack([10**9, -1])  # unknown: ignored
    assert numbers(store.outbox_batch(1000, 1 << 20)) == list(range(300, 600))
    store.ack([seq for seq, _ in batch[400:450]])  # a hole in the middle
    assert numbers(store.outbox_batch(1000, 1 << 20)) == [
        *range(300, 400),
        *range(450, 600),
    ]
    assert store.outbox_stats()["count"] == 250


def test_batch_respects_byte_limit_but_always_sends_one(store: StateStore) -> None:
    store.enqueue(make_events(10))
    size = len(store.outbox_batch(1, 1 << 20)[0][1].encode())
    assert len(store.outbox_batch(100, 3 * size + 2)) == 3
    assert len(store.outbox_batch(100, 1)) == 1


def test_stats_and_view_show_counts_only(store: StateStore, site: Site) -> None:
    store.enqueue(make_events(3, "health", start=5))
    stats = store.outbox_stats()
    assert stats["count"] == 3 and stats["bytes"] > 0
    assert stats["oldest_time"] == "2026-11-24T12:00:05Z"
    assert stats["dropped"] == {} and stats["coalesced"] == {}
    store.write_snapshot()
    view = store.view()
    assert view["outbox"] == stats
    assert '"n"' not in json.dumps(view)  # no event contents


def test_policy_on_disk_matches_the_pure_model(store: StateStore) -> None:
    policy = OutboxPolicy(max_events=7)
    rng = random.Random(3)
    kinds = ["health", "drift", "reconcile", "import", "action-result", "custom"]
    arrivals = [
        new_event(rng.choice(kinds), {"n": i}, NOW + dt.timedelta(seconds=i), rng)
        for i in range(300)
    ]
    model: list[Queued] = []
    counters = Counters()
    for i, event in enumerate(arrivals):
        model = admit(policy, model, Queued(i, event.type, len(event.encode())), counters)
        store.enqueue([event], policy=policy)
    batch = store.outbox_batch(100, 1 << 30)
    assert numbers(batch) == [q.seq for q in model]
    stats = store.outbox_stats()
    assert stats["dropped"] == counters.dropped and stats["coalesced"] == counters.coalesced
    assert stats["count"] == len(model)


def test_outbox_survives_reopen(site: Site, store: StateStore) -> None:
    store.enqueue(make_events(5))
    store.ack([0])
    store.close()
    with site.open_store() as reopened:
        assert numbers(reopened.outbox_batch(10, 1 << 20)) == [1, 2, 3, 4]
        reopened.enqueue(make_events(1, start=99))
        assert numbers(reopened.outbox_batch(10, 1 << 20)) == [1, 2, 3, 4, 99]


def test_hundred_thousand_events_enqueue_and_drain(store: StateStore) -> None:
    events = make_events(100_000)
    started = time.perf_counter()
    for i in range(0, len(events), 1000):
        store.enqueue(events[i : i + 1000])
    queued = time.perf_counter()
    assert store.outbox_stats()["count"] == 100_000
    drained: list[int] = []
    while batch := store.outbox_batch(1000, 1 << 30):
        drained.extend(numbers(batch))
        store.ack([seq for seq, _ in batch])
    done = time.perf_counter()
    assert drained == list(range(100_000))
    assert store.outbox_stats()["count"] == 0
    print(
        f"\n100,000 events: enqueue {queued - started:.2f} s (100 x 1,000), "
        f"drain {done - queued:.2f} s (100 batches + acks), total {done - started:.2f} s"
    )


CHILD = """
import datetime as dt, random, sys
from pathlib import Path
from edge_agent.outbox import new_event
from edge_agent.state import StateStore
store = StateStore.open(Path(sys.argv[1]))
mode = sys.argv[2]
now = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
if mode == "outbox":
    rng = random.Random(1)
    for i in range(0, 2000, 100):
        store.enqueue([new_event("reconcile", {"n": n}, now, rng) for n in range(i, i + 100)])
    batch = store.outbox_batch(700, 1 << 30)
    print("sent", len(batch), flush=True)
else:
    print("begun", store.action_begin("act-1", "resync", now=now), flush=True)
sys.stdin.read()  # killed here: between sending and acking, or mid-action
"""


def run_child_and_kill(site: Site, mode: str) -> str:
    repo = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(site.config.state_dir), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline().decode()
        if not line:
            raise AssertionError(child.stderr.read().decode()[-2000:])
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return line


def test_kill_between_batch_and_ack_loses_nothing(site: Site, store: StateStore) -> None:
    store.close()
    assert run_child_and_kill(site, "outbox") == "sent 700\n"
    with site.open_store() as reopened:
        batch = reopened.outbox_batch(5000, 1 << 30)
        assert numbers(batch) == list(range(2000))  # every event, once, in order
        assert len({seq for seq, _ in batch}) == 2000


def test_kill_during_an_action_leaves_it_interrupted(site: Site, store: StateStore) -> None:
    store.close()
    assert run_child_and_kill(site, "action") == "begun True\n"
    with site.open_store() as reopened:
        interrupted = reopened.interrupted_actions()
        assert [a["id"] for a in interrupted] == ["act-1"]
        assert reopened.action_begin("act-1", "resync", now=NOW) is False  # never re-run
        reopened.action_finish("act-1", INTERRUPTED, "agent stopped", now=NOW)
        assert reopened.interrupted_actions() == []
        assert reopened.action_journal(5)[0]["outcome"] == INTERRUPTED


# -- action journal ---------------------------------------------------------------------


def test_action_runs_at_most_once_whatever_its_outcome(store: StateStore) -> None:
    assert store.action_begin("a1", "resync", now=NOW) is True
    assert store.action_begin("a1", "resync", now=NOW) is False  # running
    store.action_finish("a1", "failed", "boom", now=NOW)
    assert store.action_begin("a1", "resync", now=NOW) is False  # failed: still not again
    assert store.action_begin("a2", "reconcile-now", now=NOW) is True
    store.action_finish("a2", "succeeded", now=NOW)
    journal = store.action_journal(10)
    assert [(a["id"], a["outcome"]) for a in journal] == [("a2", "succeeded"), ("a1", "failed")]
    assert journal[1]["detail"] == "boom"
    with pytest.raises(StateError):
        store.action_finish("never", "succeeded", now=NOW)


def test_action_journal_keeps_newest_or_90_days_whichever_is_more(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "ACTION_JOURNAL_KEEP", 5)
    old = NOW - dt.timedelta(days=200)
    for i in range(8):
        store.action_begin(f"old-{i}", "resync", now=old)
        store.action_finish(f"old-{i}", "succeeded", now=old)
    # within 90 days of 'old': nothing forgotten yet, and every id is still refused
    assert store.action_begin("old-0", "resync", now=old) is False
    assert len(store.action_journal(100)) == 8
    for i in range(3):
        store.action_begin(f"new-{i}", "resync", now=NOW)
        store.action_finish(f"new-{i}", "succeeded", now=NOW)
    kept = [a["id"] for a in store.action_journal(100)]
    assert len(kept) == 5 and kept[:3] == ["new-2", "new-1", "new-0"]


def test_a_carried_report_is_kept_as_runs_and_acknowledges_exactly_its_events(
    store: StateStore,
) -> None:
    store.enqueue(make_events(20_000))
    store.ack(range(5000, 5100))  # delivered online meanwhile: a hole in the backlog
    carried = store.outbox_batch(19_000, 1 << 30)
    store.record_report("r1", created_at=NOW, where="/media/usb", seqs=[s for s, _ in carried])
    (report,) = store.carried_reports()
    assert report["events"] == 19_000
    assert report["runs"] == [[0, 4999], [5100, 19_099]]  # two runs, not 19,000 numbers
    assert store.view()["reports"] == [
        {
            "report_id": "r1",
            "created_at": "2026-11-24T12:00:00Z",
            "where": "/media/usb",
            "events": 19_000,
        }
    ]
    store.enqueue(make_events(5, start=20_000))  # queued after the report was written
    assert store.acknowledge_reports(["r1", "unknown"]) == (["r1"], 19_000)
    assert numbers(store.outbox_batch(1000, 1 << 30)) == [
        *range(19_100, 20_000),
        *range(20_000, 20_005),
    ]
    assert store.carried_reports() == []


def test_a_report_whose_events_went_another_way_stops_waiting(store: StateStore) -> None:
    store.enqueue(make_events(10))
    store.record_report("old", created_at=NOW, where="/m", seqs=range(0, 5))
    store.record_report("new", created_at=NOW, where="/m", seqs=range(0, 10))
    store.record_report("empty", created_at=NOW, where="/m", seqs=[])  # carried nothing
    assert [r["report_id"] for r in store.carried_reports()] == ["old", "new"]
    store.ack(range(0, 5))  # online: everything "old" carried
    assert [r["report_id"] for r in store.carried_reports()] == ["new"]
    store.ack(range(5, 10))
    assert store.carried_reports() == []
