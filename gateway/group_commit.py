"""Group commit: concurrent submissions share one commit, and each waits for its own.

Committing each submission in its own transaction serialises callers on a lock
and a commit (the log's head, the outbox). Instead submissions queue, and one
flush task (started by the first submission to find none running) commits the
queue a batch at a time until it is empty; submissions arriving meanwhile join
the next batch. Before each batch the task yields once, so everything already
runnable joins it. No submitter returns before its item is committed, and a
failed commit fails every submitter in that batch with the same error.

The flushing is a task of its own, not one of the submitters: a submitter that
flushed for everyone would be held for as long as others kept submitting
(measured under load: requests held for seconds), and cancelling it would
cancel a commit that others wait on.

Waiting for what is on its way: a caller that can tell how many submissions
are already under way (``coming``: the requests decided but not yet logged,
say) may let a batch wait up to ``linger`` seconds for them, so one commit
takes them all instead of the next few taking a handful each. A submission
that leaves none still coming (or fills the batch) starts the commit at once,
and with nothing under way a batch never waits: a lone request pays nothing.
A commit's cost is mostly per batch (PostgreSQL: a transaction, a flush of its
log to disk, a lock), so under load the batches grow and each request's share
shrinks (measured: bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Concurrent submissions committed together by ``commit``.

    A batch holds items whose ``weight`` sums to at most ``max_batch`` (and at least one item,
    however heavy). With a ``linger``, a batch waits up to that many seconds while ``coming()``
    (submissions on their way, not yet made) is above zero and the batch is not full.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[None]],
        max_batch: int = 500,
        weight: Callable[[T], int] = lambda _: 1,
        linger: float = 0.0,
        coming: Callable[[], int] = lambda: 0,
    ) -> None:
        self.commit = commit
        self.max_batch = max_batch
        self.weight = weight
        self.linger = linger
        self.coming = coming
        self._queue: deque[tuple[T, asyncio.Future[None]]] = deque()
        self._queued = 0  # the weight in the queue
        self._flusher: asyncio.Task[None] | None = None
        self._lingering: asyncio.Future[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once ``item`` is committed; raise what its commit raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        self._queued += self.weight(item)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._drain())
        elif self._lingering is not None and (self._queued >= self.max_batch or self.coming() <= 0):
            _release(self._lingering)  # the batch has all it was waiting for
        await done

    async def _drain(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # whatever is runnable now joins this batch
                if self.linger > 0:
                    await self._wait_for_coming()
                await self._flush_one()
        finally:
            self._flusher = None

    async def _wait_for_coming(self) -> None:
        """Up to ``linger`` seconds, until nothing more is coming or the batch is full."""
        if self.coming() <= 0 or self._queued >= self.max_batch:
            return
        loop = asyncio.get_running_loop()
        lingering = self._lingering = loop.create_future()
        timer = loop.call_later(self.linger, _release, lingering)
        try:
            await lingering
        finally:
            timer.cancel()
            self._lingering = None

    async def _flush_one(self) -> None:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        size = 0
        queue = self._queue
        while queue and (not batch or size + self.weight(queue[0][0]) <= self.max_batch):
            item = queue.popleft()
            batch.append(item)
            size += self.weight(item[0])
        self._queued -= size
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


def _release(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
