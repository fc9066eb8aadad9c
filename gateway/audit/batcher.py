"""Group commit for the log: concurrent appends share one transaction, each still waits for its commit.

A serving process appends one entry per request. Appending each in its own
transaction serialises every request on the log's head lock and a commit;
instead they share transactions through ``gateway.group_commit``: no request
returns before its entry is committed, and a failed batch fails every request in it.

Given ``coming`` (a server passes ``Disclosure.underway``'s count: requests decided or
loading, not yet logged), a batch waits up to ``LINGER_SECONDS`` for them to
join it. On PostgreSQL most of an append's cost, the server's and this
process's, is per batch (measured: 12 entries cost PostgreSQL 480 µs, 48 cost
830 µs); waiting for requests already under way nearly doubled the batches
under load and cut a search's CPU by a fifth (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from consent.chain import Entry
from gateway.audit.log import AuditLog
from gateway.group_commit import GroupCommit

#: The longest a batch waits for requests under way (only while some are).
LINGER_SECONDS: Final = 0.002


class BatchedAppender:
    def __init__(
        self,
        log: AuditLog,
        max_batch: int = 1000,
        coming: Callable[[], int] = lambda: 0,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self.log = log
        self._group: GroupCommit[Sequence[Entry]] = GroupCommit(
            self._commit, max_batch, weight=len, linger=linger, coming=coming
        )

    async def append(self, entries: Sequence[Entry]) -> None:
        """Return once ``entries`` are committed to the log; raise what the commit raised."""
        await self._group.submit(entries)

    async def _commit(self, batch: list[Sequence[Entry]]) -> None:
        await self.log.append([e for entries in batch for e in entries])
