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

    def reserve(self, cluster_id: str) -> Waiter:
        """Take one of a cluster's waiting slots now (synchronously, so requests arriving
        together cannot all pass the check); raise TooManyWaiters if none is free.

        One agent needs one waiting request (two while it reconnects); a cluster's credential
        cannot hold more than MAX_WAITERS_PER_CLUSTER open, so it cannot exhaust the server.
        """
        entry = self._events.get(cluster_id)
        if entry is None:
            entry = self._events[cluster_id] = (asyncio.Event(), [0])
        elif entry[1][0] >= MAX_WAITERS_PER_CLUSTER:
            raise TooManyWaiters(cluster_id)
        entry[1][0] += 1
        self.waiting += 1
        return Waiter(self, cluster_id, entry)

    def _release(self, cluster_id: str, entry: tuple[asyncio.Event, list[int]]) -> None:
        self.waiting -= 1
        entry[1][0] -= 1
        if entry[1][0] == 0 and self._events.get(cluster_id) is entry:
            del self._events[cluster_id]  # idle clusters cost nothing


class Waiter:
    """One reserved waiting slot; ``release`` (idempotent) gives it back."""

    def __init__(self, hub: Hub, cluster_id: str, entry: tuple[asyncio.Event, list[int]]) -> None:
        self._hub, self._cluster_id, self._entry = hub, cluster_id, entry
        self._released = False

    async def wait(self, timeout_s: float) -> bool:
        """Until the cluster is notified (True) or the timeout passes (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._entry[0].wait(), timeout_s)
        return self._entry[0].is_set()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._hub._release(self._cluster_id, self._entry)
