"""Group commit: many concurrent requests' writes made durable by one transaction.

With ``synchronous=FULL`` every SQLite commit costs an fsync (about 1-8 ms here), paid on
the event loop thread. ``GroupCommit`` collects the items submitted within ``window_s`` of
the first one (or until ``max_items``), hands them to ``commit`` in one call, and answers
each submitter with its own result once that one commit is durable. The loop then pays at
most one fsync per window, whatever the request rate, for at most ``window_s`` of added
latency. Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        commit: Callable[[Sequence[T]], Sequence[R | Exception]],
        *,
        window_s: float = 0.005,
        max_items: int = 256,
    ) -> None:
        self._commit = commit
        self._window_s = window_s
        self._max_items = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.commits = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max_items:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self.flush)
        return await future

    def flush(self) -> None:
        """Commit everything pending now (also called at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.commits += 1
        self.items += len(batch)
        try:
            results = self._commit([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the client went away; its items are recorded all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
