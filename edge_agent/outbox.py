"""The outbox: events waiting for the management server, and what happens when it is full.

One concept: which queued event makes room for a new one. Pure: no I/O, no clock reads
(``now`` and randomness are passed in); ``StateStore`` is the shell that keeps the queue.

Events are delivered at least once (they stay queued until the server acknowledges them)
and the server deduplicates by ``Event.id``, so the effect is exactly once.

Policy when the outbox is full
------------------------------
The outbox is bounded by ``OutboxPolicy.max_events`` and ``max_bytes`` (size of the event's
compact JSON). While a new event fits, it is queued and nothing else happens: health and
drift history is kept as long as there is room. When it does not fit, room is made one
event at a time, in this order:

1. **Coalesce**: the oldest ``health`` event that a newer ``health`` event supersedes (one
   still queued, or the arriving one) is removed; the same for ``drift`` snapshots. Repeated
   to the limit, only the newest of each remains. Counted in ``coalesced[type]``.
2. **Drop low value**: the oldest ``reconcile`` result (a later cycle says more).
3. **Drop ordinary**: the oldest remaining event of any type not protected (the newest
   health or drift, unknown types).
4. **Protected**: ``action-result`` and ``import`` events are never removed to make room.
   If only they remain, the *arriving* event is refused, whatever its type.
   A single event larger than ``max_bytes`` is refused outright.

Steps 2-4 count in ``dropped[type]`` (a refused event counts under its own type). Nothing
disappears silently: every event offered is queued, coalesced or counted as dropped.
Within a step, with several candidate types, the one whose oldest event is oldest goes
first. Invariants: after an admission ``count <= max_events`` and ``bytes <= max_bytes``;
queue order is insertion order.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import random as _random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.clock import format_time, parse_time

#: event id: 1-128 of these characters (the server's rule).
EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: event type: the server's rule.
EVENT_TYPE = re.compile(r"[a-z][a-z0-9-]{0,31}")

COALESCED_TYPES: tuple[str, ...] = ("health", "drift")
LOW_VALUE_TYPES: frozenset[str] = frozenset({"reconcile"})
PROTECTED_TYPES: frozenset[str] = frozenset({"action-result", "import"})


@dataclass(frozen=True, slots=True)
class Event:
    """One event for the management server; ``to_json`` is its wire form."""

    id: str
    type: str
    time: str  # RFC 3339, YYYY-MM-DDTHH:MM:SSZ
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not EVENT_ID.fullmatch(self.id):
            raise ValueError("event id must be 1-128 of [A-Za-z0-9._:-]")
        if not EVENT_TYPE.fullmatch(self.type):
            raise ValueError(f"event {self.id}: type must be 1-32 of [a-z0-9-]")
        parse_time(self.time)  # raises ValueError
        if not isinstance(self.data, Mapping):
            raise ValueError(f"event {self.id}: data must be an object")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, "data": dict(self.data)}

    def encode(self) -> str:
        """Compact JSON text; its UTF-8 length is what counts against ``max_bytes``."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True, allow_nan=False)

    @classmethod
    def decode(cls, text: str) -> Event:
        doc = json.loads(text)
        return cls(doc["id"], doc["type"], doc["time"], doc["data"])


def new_event(
    type: str,
    data: Mapping[str, Any],
    now: dt.datetime,
    random: _random.Random,
) -> Event:
    """A new event with a unique, time-sortable id: ``<unix ms, 12 hex>-<80 random bits hex>``.

    Ids of events made in later milliseconds sort after earlier ones (as text); within a
    millisecond the order is random, which is harmless: the queue keeps insertion order.
    """
    unix_ms = max(0, math.floor(now.timestamp() * 1000))
    event_id = f"{unix_ms:012x}-{random.getrandbits(80):020x}"
    return Event(event_id, type, format_time(now), dict(data))


def event_size(event_json: str) -> int:
    return len(event_json.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """Bounds of the outbox on disk."""

    #: queued events at most; 100,000 is over a day of events at one a second.
    max_events: int = 100_000
    #: bytes of queued event JSON at most (64 MiB); the store's own overhead comes on top.
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError("outbox bounds must be positive")


@dataclass(frozen=True, slots=True)
class TypeUsage:
    """What is queued of one event type: how many, their bytes, the oldest one's sequence."""

    count: int
    bytes: int
    oldest_seq: int


class Reason(enum.Enum):
    COALESCED = "coalesced"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Admit:
    """The arriving event fits: queue it."""


@dataclass(frozen=True, slots=True)
class Evict:
    """Remove the oldest queued event of ``type`` (counted under ``reason``), then ask again."""

    type: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not queue the arriving event; count it as dropped under its own type."""


Step = Admit | Evict | Refuse


def next_step(
    policy: OutboxPolicy,
    queued: Mapping[str, TypeUsage],
    incoming_type: str,
    incoming_bytes: int,
) -> Step:
    """What to do next to admit an event of ``incoming_type`` and ``incoming_bytes``.

    ``queued`` is the outbox per type (types with no event may be absent). The caller applies
    an ``Evict`` and calls again with the updated usage until it gets ``Admit`` or ``Refuse``.
    """
    if incoming_bytes > policy.max_bytes:
        return Refuse()
    count = sum(u.count for u in queued.values())
    size = sum(u.bytes for u in queued.values())
    if count + 1 <= policy.max_events and size + incoming_bytes <= policy.max_bytes:
        return Admit()
    live = {t: u for t, u in queued.items() if u.count > 0}
    superseded = [
        t for t in COALESCED_TYPES if t in live and (live[t].count > 1 or incoming_type == t)
    ]
    if superseded:
        return Evict(_oldest(superseded, live), Reason.COALESCED)
    low = [t for t in live if t in LOW_VALUE_TYPES]
    if low:
        return Evict(_oldest(low, live), Reason.DROPPED)
    ordinary = [t for t in live if t not in PROTECTED_TYPES]
    if ordinary:
        return Evict(_oldest(ordinary, live), Reason.DROPPED)
    return Refuse()


def _oldest(types: Sequence[str], live: Mapping[str, TypeUsage]) -> str:
    return min(types, key=lambda t: (live[t].oldest_seq, t))


@dataclass
class Counters:
    """Events removed or refused by the policy, per type."""

    dropped: dict[str, int] = field(default_factory=dict)
    coalesced: dict[str, int] = field(default_factory=dict)

    def count(self, reason: Reason, event_type: str) -> None:
        target = self.coalesced if reason is Reason.COALESCED else self.dropped
        target[event_type] = target.get(event_type, 0) + 1


@dataclass(frozen=True, slots=True)
class Queued:
    """One queued event in the in-memory model: sequence, type, size."""

    seq: int
    type: str
    bytes: int


def usage_of(queue: Sequence[Queued]) -> dict[str, TypeUsage]:
    """Per-type usage of an in-memory queue (oldest first)."""
    usage: dict[str, TypeUsage] = {}
    for item in queue:
        u = usage.get(item.type)
        usage[item.type] = (
            TypeUsage(1, item.bytes, item.seq)
            if u is None
            else TypeUsage(u.count + 1, u.bytes + item.bytes, u.oldest_seq)
        )
    return usage


def admit(
    policy: OutboxPolicy, queue: Sequence[Queued], incoming: Queued, counters: Counters
) -> list[Queued]:
    """The policy applied to an in-memory queue: the queue after ``incoming`` arrives.

    The reference model of what ``StateStore.enqueue`` does on disk (same ``next_step``);
    ``counters`` is updated in place.
    """
    result = list(queue)
    while True:
        step = next_step(policy, usage_of(result), incoming.type, incoming.bytes)
        if isinstance(step, Admit):
            result.append(incoming)
            return result
        if isinstance(step, Refuse):
            counters.count(Reason.DROPPED, incoming.type)
            return result
        victim = next(i for i, q in enumerate(result) if q.type == step.type)
        counters.count(step.reason, step.type)
        del result[victim]
