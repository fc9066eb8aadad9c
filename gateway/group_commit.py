"""Group commit: concurrent submissions share one commit, and each waits for its own.

Committing each submission in its own transaction serialises callers on a lock
and a commit (the log's head, the outbox). Instead the first submitter to find
no flush running becomes the flusher and commits everything queued, a batch at
a time, until the queue is empty; submissions arriving meanwhile join the next
batch. No submitter returns before its item is committed, and a failed commit
fails every submitter in that batch with the same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Concurrent submissions committed together by ``commit``.

    A batch holds items whose ``weight`` sums to at most ``max_batch`` (and at least one item,
    however heavy).
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[None]],
        max_batch: int = 500,
        weight: Callable[[T], int] = lambda _: 1,
    ) -> None:
        self.commit = commit
        self.max_batch = max_batch
        self.weight = weight
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing = False

    async def submit(self, item: T) -> None:
        """Return once ``item`` is committed; raise what its commit raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if not self._flushing:
            self._flushing = True
            try:
                while self._queue:
                    await self._flush_one()
            finally:
                self._flushing = False
        await done

    async def _flush_one(self) -> None:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        size = 0
        while self._queue and (not batch or size + self.weight(self._queue[0][0]) <= self.max_batch):
            item = self._queue.pop(0)
            batch.append(item)
            size += self.weight(item[0])
        failed: Exception | None = None
        try:
            await self.commit([i for i, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting submitter, not swallowed
            failed = exc
        for waiting in (w for _, w in batch if not w.done()):
            if failed is None:
                waiting.set_result(None)
            else:
                waiting.set_exception(failed)
