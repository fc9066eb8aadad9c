"""Group commit for the log: concurrent appends share one transaction, each still waits for its commit.

A serving process appends one entry per request. Appending each in its own
transaction serialises every request on the log's head lock and a commit;
instead they share transactions through ``gateway.group_commit``: no request
returns before its entry is committed, and a failed batch fails every request in it.
"""

from __future__ import annotations

from collections.abc import Sequence

from consent.chain import Entry
from gateway.audit.log import AuditLog
from gateway.group_commit import GroupCommit


class BatchedAppender:
    def __init__(self, log: AuditLog, max_batch: int = 1000) -> None:
        self.log = log
        self._group: GroupCommit[Sequence[Entry]] = GroupCommit(self._commit, max_batch, weight=len)

    async def append(self, entries: Sequence[Entry]) -> None:
        """Return once ``entries`` are committed to the log; raise what the commit raised."""
        await self._group.submit(entries)

    async def _commit(self, batch: list[Sequence[Entry]]) -> None:
        await self.log.append([e for entries in batch for e in entries])
