"""Wake-ups for agents waiting on the notification endpoint.

One ``asyncio.Event`` per cluster with at least one waiter, shared by all its waiters and
dropped once fired: an idle waiting agent costs a coroutine and a socket, never a thread.
Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

MAX_WAITERS_PER_CLUSTER = 4


class TooManyWaiters(Exception):
    """A cluster already has the most waiting requests allowed."""


class Hub:
    def __init__(self) -> None:
        self._events: dict[str, tuple[asyncio.Event, list[int]]] = {}
        self.waiting = 0

    def waiters(self, cluster_id: str) -> int:
        entry = self._events.get(cluster_id)
        return entry[1][0] if entry else 0

    def notify(self, cluster_ids: Iterable[str]) -> None:
        for cluster_id in cluster_ids:
            entry = self._events.pop(cluster_id, None)
            if entry is not None:
                entry[0].set()

    async def wait(self, cluster_id: str, timeout_s: float) -> bool:
        """Wait until ``cluster_id`` is notified (True) or the timeout passes (False).

        One agent needs one waiting request (two while it reconnects); a cluster's credential
        cannot hold more than MAX_WAITERS_PER_CLUSTER open, so it cannot exhaust the server.
        """
        entry = self._events.get(cluster_id)
        if entry is not None and entry[1][0] >= MAX_WAITERS_PER_CLUSTER:
            raise TooManyWaiters(cluster_id)
        if entry is None:
            entry = self._events[cluster_id] = (asyncio.Event(), [0])
        event, count = entry
        count[0] += 1
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
            return event.is_set()
        finally:
            self.waiting -= 1
            count[0] -= 1
            if count[0] == 0 and self._events.get(cluster_id) is entry:
                del self._events[cluster_id]  # idle clusters cost nothing
