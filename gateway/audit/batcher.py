"""Group commit for the log: concurrent appends share one transaction, each still waits for its commit.

A serving process appends one entry per request. Appending each in its own
transaction serialises every request on the log's head lock and a commit;
instead the first appender to find no flush running becomes the flusher and
writes everything queued, in one transaction, until the queue is empty.
Requests arriving meanwhile join the next batch. No request returns before its
entry is committed, and a failed batch fails every request in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from consent.chain import Entry
from gateway.audit.log import AuditLog


class BatchedAppender:
    def __init__(self, log: AuditLog, max_batch: int = 1000) -> None:
        self.log = log
        self.max_batch = max_batch
        self._queue: list[tuple[Sequence[Entry], asyncio.Future[None]]] = []
        self._flushing = False

    async def append(self, entries: Sequence[Entry]) -> None:
        """Return once ``entries`` are committed to the log; raise what the commit raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entries, done))
        if not self._flushing:
            self._flushing = True
            try:
                while self._queue:
                    await self._flush_one()
            finally:
                self._flushing = False
        await done

    async def _flush_one(self) -> None:
        batch: list[tuple[Sequence[Entry], asyncio.Future[None]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch):
            item = self._queue.pop(0)
            batch.append(item)
            size += len(item[0])
        try:
            await self.log.append([e for entries, _ in batch for e in entries])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, not swallowed
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
