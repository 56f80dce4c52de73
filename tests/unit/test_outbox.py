"""The outbox policy (pure): coalescing, drop order, counters, protected types, event ids."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.outbox import (
    Admit,
    Counters,
    Event,
    Evict,
    OutboxPolicy,
    Queued,
    Reason,
    Refuse,
    admit,
    new_event,
    next_step,
    usage_of,
)
from tests.conftest import NOW

TYPES = ["health", "drift", "reconcile", "import", "action-result", "custom"]


def run(policy: OutboxPolicy, kinds: list[str], size: int = 10) -> tuple[list[Queued], Counters]:
    queue: list[Queued] = []
    counters = Counters()
    for seq, kind in enumerate(kinds):
        queue = admit(policy, queue, Queued(seq, kind, size), counters)
    return queue, counters


def test_room_left_admits_and_keeps_history() -> None:
    queue, counters = run(OutboxPolicy(max_events=10), ["health"] * 5)
    assert [q.seq for q in queue] == [0, 1, 2, 3, 4]
    assert counters == Counters()


def test_full_outbox_coalesces_health_and_drift_first_oldest_first() -> None:
    kinds = ["reconcile", "health", "drift", "health", "import", "drift"]
    queue, counters = run(OutboxPolicy(max_events=6), [*kinds, "health"])
    # the oldest superseded health goes, reconcile stays
    assert [q.type for q in queue] == ["reconcile", "drift", "health", "import", "drift", "health"]
    assert counters.coalesced == {"health": 1} and counters.dropped == {}
    queue, counters = run(OutboxPolicy(max_events=6), [*kinds, "health", "custom", "custom"])
    assert [q.type for q in queue] == ["reconcile", "import", "drift", "health", "custom", "custom"]
    assert counters.coalesced == {"health": 2, "drift": 1}


def test_then_oldest_reconcile_results_then_others_never_protected() -> None:
    policy = OutboxPolicy(max_events=4)
    queue, counters = run(policy, ["import", "reconcile", "custom", "reconcile", "health", "x"])
    assert [q.type for q in queue] == ["import", "custom", "health", "x"]
    assert counters.dropped == {"reconcile": 2}
    queue, counters = run(policy, ["import", "custom", "health", "action-result", "drift"])
    assert [q.type for q in queue] == ["import", "health", "action-result", "drift"]
    assert counters.dropped == {"custom": 1}


def test_only_protected_left_refuses_the_newest_and_counts_it() -> None:
    policy = OutboxPolicy(max_events=3)
    queue, counters = run(policy, ["import", "action-result", "import", "action-result", "health"])
    assert [q.seq for q in queue] == [0, 1, 2]
    assert counters.dropped == {"action-result": 1, "health": 1}


def test_byte_bound_and_oversized_event() -> None:
    policy = OutboxPolicy(max_bytes=100)
    assert isinstance(next_step(policy, {}, "import", 101), Refuse)
    queue = [Queued(0, "reconcile", 60), Queued(1, "health", 30)]
    step = next_step(policy, usage_of(queue), "custom", 20)
    assert step == Evict("reconcile", Reason.DROPPED)
    assert isinstance(next_step(policy, usage_of(queue), "custom", 10), Admit)


def test_policy_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        OutboxPolicy(max_events=0)


def test_event_ids_unique_time_sortable_and_valid() -> None:
    rng = random.Random(7)
    events = [
        new_event("health", {"n": i}, NOW + dt.timedelta(milliseconds=i), rng) for i in range(2000)
    ]
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert [i.split("-")[0] for i in ids] == sorted(i.split("-")[0] for i in ids)
    later = new_event("health", {}, NOW + dt.timedelta(seconds=5), rng)
    assert all(later.id > i for i in ids)
    assert events[0].time == "2026-11-24T12:00:00Z"
    assert Event.decode(events[3].encode()) == events[3]


def test_event_fields_are_checked() -> None:
    with pytest.raises(ValueError):
        Event("bad id!", "health", "2026-11-24T12:00:00Z", {})
    with pytest.raises(ValueError):
        Event("a", "Health", "2026-11-24T12:00:00Z", {})
    with pytest.raises(ValueError):
        Event("a", "health", "2026-11-24 12:00:00", {})


@settings(max_examples=200, deadline=None)
@given(
    max_events=st.integers(1, 8),
    max_bytes=st.integers(1, 200),
    arrivals=st.lists(st.tuples(st.sampled_from(TYPES), st.integers(1, 80)), max_size=60),
)
def test_bounds_hold_and_every_event_is_accounted_for(
    max_events: int, max_bytes: int, arrivals: list[tuple[str, int]]
) -> None:
    policy = OutboxPolicy(max_events=max_events, max_bytes=max_bytes)
    queue: list[Queued] = []
    counters = Counters()
    for seq, (kind, size) in enumerate(arrivals):
        before = {q.seq for q in queue}
        protected_before = [q for q in queue if q.type in ("import", "action-result")]
        queue = admit(policy, queue, Queued(seq, kind, size), counters)
        assert len(queue) <= max_events
        assert sum(q.bytes for q in queue) <= max_bytes
        assert [q.seq for q in queue] == sorted(q.seq for q in queue)  # insertion order
        assert {q.seq for q in queue} - before <= {seq}
        assert all(q in queue for q in protected_before), "a protected event was dropped"
    removed = sum(counters.dropped.values()) + sum(counters.coalesced.values())
    assert len(queue) + removed == len(arrivals)
    for kind in TYPES:  # per type: queued + coalesced + dropped == offered
        offered = sum(1 for k, _ in arrivals if k == kind)
        held = sum(1 for q in queue if q.type == kind)
        assert held + counters.dropped.get(kind, 0) + counters.coalesced.get(kind, 0) == offered
