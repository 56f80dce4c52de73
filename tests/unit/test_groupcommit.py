"""GroupCommit: one commit per window, each submitter gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mgmt_stub.groupcommit import GroupCommit


def test_submissions_in_one_window_share_one_commit() -> None:
    calls: list[list[int]] = []

    def commit(items: Sequence[int]) -> list[int | Exception]:
        calls.append(list(items))
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    async def main() -> list[object]:
        group: GroupCommit[int, int] = GroupCommit(commit, window_s=0.01)
        return await asyncio.gather(*(group.submit(i) for i in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert calls == [[0, 1, 2, 3, 4]]
    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"


def test_a_full_group_commits_without_waiting_and_a_failed_commit_fails_everyone() -> None:
    calls: list[int] = []

    def commit(items: Sequence[int]) -> list[int | Exception]:
        calls.append(len(items))
        if len(calls) == 2:
            raise OSError("disk full")
        return list(items)

    async def main() -> list[object]:
        group: GroupCommit[int, int] = GroupCommit(commit, window_s=60, max_items=3)
        first = await asyncio.gather(*(group.submit(i) for i in range(3)))
        second = asyncio.gather(*(group.submit(i) for i in range(3)), return_exceptions=True)
        return [first, await second]

    first, second = asyncio.run(main())  # a 60 s window: only max_items can have flushed
    assert first == [0, 1, 2] and calls == [3, 3]
    assert all(isinstance(r, OSError) for r in second)


def test_flush_at_shutdown_commits_what_is_pending() -> None:
    committed: list[int] = []

    def commit(items: Sequence[int]) -> list[int | Exception]:
        committed.extend(items)
        return list(items)

    async def main() -> None:
        group: GroupCommit[int, int] = GroupCommit(commit, window_s=60)
        task = asyncio.ensure_future(group.submit(7))
        await asyncio.sleep(0)
        group.flush()
        assert await task == 7

    asyncio.run(main())
    assert committed == [7]
