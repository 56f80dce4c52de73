"""Stamping findings into events, and the health event: the thin shell over ``findings``.

``stamp`` gives a finding (``findings.*`` data) an id and a time; the caller hands the events
to the state store call that records the outcome itself, so both land in one transaction.
``note_health`` recomputes the health document from the state view and queues it only when
it changed since the last one queued (``StateStore.note_health``).

Event ids are time-sortable and carry 80 random bits from the operating system's generator:
unique across restarts and across agents without any coordination.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from edge_agent.clock import Clock
from edge_agent.errors import StateError
from edge_agent.findings import health_data
from edge_agent.outbox import Event, new_event
from edge_agent.state import StateStore

log = logging.getLogger(__name__)

_RANDOM = random.SystemRandom()


def stamp(event_type: str, data: Mapping[str, Any], clock: Clock) -> Event:
    return new_event(event_type, data, clock.now(), _RANDOM)


def note_health(store: StateStore, clock: Clock) -> bool:
    """Queue a health event if the health document changed; True if one was queued.

    Never raises for a store failure: the outcome it follows is already recorded, and the
    next outcome queues the then-current health anyway.
    """
    try:
        now = clock.now()
        data = health_data(store.view(), now)
        return store.note_health(new_event("health", data, now, _RANDOM))
    except StateError as exc:
        log.warning("health event not queued: %s", exc)
        return False
