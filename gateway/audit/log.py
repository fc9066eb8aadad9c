"""Appending to the log and signing checkpoints.

``AuditLog.append`` writes entries in their own transaction; ``append_in``
writes them inside the caller's, so a consent change and its entry commit
together or not at all. Either way a checkpoint is signed in the same
transaction once ``checkpoint_every`` entries are unsigned; ``checkpoint()``
signs whatever is unsigned (called on an interval and at shutdown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consent.chain import Checkpoint, Entry, key_id, sign_checkpoint
from gateway.periodic import run_periodically
from gateway.store.audit import Head, append_entries, lock_head, save_checkpoint


def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """The one writer of the log. Safe to use from several processes at once (the head lock orders them)."""

    def __init__(
        self,
        engine: AsyncEngine,
        key: Ed25519PrivateKey,
        checkpoint_every: int = 1000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.key = key
        self.key_id = key_id(key.public_key())
        self.checkpoint_every = checkpoint_every
        self.clock = clock

    async def append(self, entries: Sequence[Entry]) -> Head:
        """Append in a transaction of its own; returns the new head. Raises if the store cannot be written."""
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            return await self.append_locked(conn, head, entries)

    async def append_in(self, conn: AsyncConnection, entries: Sequence[Entry]) -> Head:
        """Append inside the caller's transaction (locking the head first if it is not yet held)."""
        return await self.append_locked(conn, await lock_head(conn), entries)

    async def append_locked(self, conn: AsyncConnection, head: Head, entries: Sequence[Entry]) -> Head:
        head = await append_entries(conn, head, entries)
        if head.seq - head.checkpoint_seq >= self.checkpoint_every:
            head = await self._sign(conn, head)
        return head

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the chain's head if any entry is unsigned; returns the new checkpoint, if any."""
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            if head.seq == head.checkpoint_seq:
                return None
            cp = sign_checkpoint(self.key, head.seq, head.entry_hash, self.clock())
            await save_checkpoint(conn, head, cp)
            return cp

    async def _sign(self, conn: AsyncConnection, head: Head) -> Head:
        return await save_checkpoint(
            conn, head, sign_checkpoint(self.key, head.seq, head.entry_hash, self.clock())
        )


async def sign_periodically(log: AuditLog, every_seconds: float) -> None:
    """Sign unsigned entries every ``every_seconds`` until cancelled (a serving process runs this).

    A failed attempt is retried at the next tick: the entries stay covered by the chain meanwhile.
    Stopping it lets an attempt in flight finish (``gateway.periodic``), so the shutdown
    checkpoint that follows never waits on a lock the cancelled attempt still holds.
    """
    await run_periodically(every_seconds, log.checkpoint, "signing an audit checkpoint")
