"""Appending to the log and signing checkpoints.

``AuditLog.append`` writes entries in their own transaction; ``append_in``
writes them inside the caller's, so a consent change and its entry commit
together or not at all. Either way a checkpoint is signed once
``checkpoint_every`` entries are unsigned (in the same transaction, except on
PostgreSQL at the driver: just after it); ``checkpoint()``
signs whatever is unsigned (called on an interval and at shutdown).

``append`` runs at the driver, on a connection of the log's own, where it can:

- on a SQLite file, its whole transaction on a writer thread of the log's own
  (``store.audit.append_sqlite``): one handoff to that thread per append. Through
  the engine every statement is a handoff to aiosqlite's thread and back (about
  50 µs of the event loop's CPU each, measured), and an append is six of them;
- on PostgreSQL, one statement on an asyncpg connection (``store.audit.
  append_postgres``): one round trip per append, where the engine's transaction
  takes six or more (BEGIN, two for the head, the COPY, the head again,
  COMMIT), each with SQLAlchemy's own CPU on top (measured: a quarter of a
  server's GIL samples in a py-spy profile, bench/RESULTS.md). The server
  numbers and hashes the entries under the head's row lock (``audit_append``),
  so appenders in several processes queue on that lock and none is ever sent
  back to chain again; a checkpoint that falls due is saved by a second
  statement just after.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consent.chain import Checkpoint, Entry, key_id, sign_checkpoint
from gateway.periodic import run_periodically
from gateway.store import sqlite_lock
from gateway.store.audit import (
    Head,
    append_entries,
    append_postgres,
    append_sqlite,
    head_matches_log,
    lock_head,
    save_checkpoint,
)
from gateway.store.database import asyncpg_target

T = TypeVar("T")


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
        sqlite_path: Path | None = None,
        postgres: PostgresWriter | None = None,
    ) -> None:
        self.engine = engine
        self.key = key
        self.key_id = key_id(key.public_key())
        self.checkpoint_every = checkpoint_every
        self.clock = clock
        self._writer = SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._postgres = postgres

    async def append(self, entries: Sequence[Entry]) -> Head:
        """Append in a transaction of its own; returns the new head. Raises if the store cannot be written."""
        if self._writer is not None:
            return await self._writer.run(append_sqlite, list(entries), self.checkpoint_every, self._sign_at)
        if self._postgres is not None:
            return await self._postgres.append(entries, self.checkpoint_every, self._sign_at)
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            return await self.append_locked(conn, head, entries)

    def _sign_at(self, seq: int, entry_hash: str) -> Checkpoint:
        return sign_checkpoint(self.key, seq, entry_hash, self.clock())

    async def open(self) -> None:
        """Connect the log's own PostgreSQL connection now rather than at the first append."""
        if self._postgres is not None:
            await self._postgres.open()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        if self._postgres is not None:
            await self._postgres.close()

    async def append_in(self, conn: AsyncConnection, entries: Sequence[Entry]) -> Head:
        """Append inside the caller's transaction (locking the head first if it is not yet held)."""
        return await self.append_locked(conn, await lock_head(conn), entries)

    async def append_locked(self, conn: AsyncConnection, head: Head, entries: Sequence[Entry]) -> Head:
        head = await append_entries(conn, head, entries)
        if head.seq - head.checkpoint_seq >= self.checkpoint_every:
            head = await self._sign(conn, head)
        return head

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the chain's head if any entry is unsigned; returns the new checkpoint, if any.

        The head is signed only when it names the log's last entry: a head edited in the store
        would otherwise have the key vouch for entries that do not exist (``HeadMismatch``).
        """
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            if head.seq == head.checkpoint_seq:
                return None
            if not await head_matches_log(conn, head):
                raise HeadMismatch("the audit log's head does not name its last entry: not signed")
            cp = sign_checkpoint(self.key, head.seq, head.entry_hash, self.clock())
            await save_checkpoint(conn, head, cp)
            return cp

    async def _sign(self, conn: AsyncConnection, head: Head) -> Head:
        return await save_checkpoint(conn, head, self._sign_at(head.seq, head.entry_hash))


class HeadMismatch(RuntimeError):
    """The stored head names no entry of the log (it was edited): nothing is signed over it.
    ``concord audit verify`` says what else changed."""


class SqliteWriter:
    """One thread and one ``sqlite3`` connection for the log's appends; ``run`` hands it a call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concord-audit")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # on the writer thread, at first use
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={sqlite_lock.LOOK_MS}")  # appends: begin_immediate
            conn.execute("PRAGMA synchronous=NORMAL")  # as the engine's connections (store.database)
            self._conn = conn
        return self._conn

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: call(self._connection(), *args)
        )

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=False)


class PostgresWriter:
    """One asyncpg connection for the log's appends, made on first use and again after a failure.

    Appends in this process take turns on it (a server's ``BatchedAppender`` makes one at a time
    anyway). Each is one call of the server's ``audit_append``, which chains the entries on from
    whatever head it finds under the head's row lock (``store.audit.append_postgres``).
    """

    CONNECT_TIMEOUT_SECONDS: Final = 30

    def __init__(self, url: str, schema: str | None) -> None:
        self.dsn, self.server_settings = asyncpg_target(url, schema, "concord audit log")
        self._conn: Any = None
        self._turn = asyncio.Lock()

    async def append(
        self, entries: Sequence[Entry], checkpoint_every: int, sign: Callable[[int, str], Checkpoint]
    ) -> Head:
        async with self._turn:
            try:
                conn = self._conn or await self._connect()
                head = await append_postgres(conn, entries, checkpoint_every, sign)
                if conn.is_closed():  # lost after the append committed (saving a checkpoint, say)
                    self._conn = None
                return head
            except BaseException as exc:
                if self._conn is not None and (
                    self._conn.is_closed() or not isinstance(exc, asyncpg.PostgresError)
                ):  # lost, cancelled mid-statement or otherwise in doubt: a fresh one next time
                    self._conn.terminate()
                    self._conn = None
                raise

    async def open(self) -> None:
        async with self._turn:
            if self._conn is None:
                await self._connect()

    async def _connect(self) -> Any:
        self._conn = await asyncpg.connect(
            self.dsn, timeout=self.CONNECT_TIMEOUT_SECONDS, server_settings=self.server_settings
        )
        return self._conn

    async def close(self) -> None:
        async with self._turn:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


async def sign_periodically(log: AuditLog, every_seconds: float) -> None:
    """Sign unsigned entries every ``every_seconds`` until cancelled (a serving process runs this).

    A failed attempt is retried at the next tick: the entries stay covered by the chain meanwhile.
    Stopping it lets an attempt in flight finish (``gateway.periodic``), so the shutdown
    checkpoint that follows never waits on a lock the cancelled attempt still holds.
    """
    await run_periodically(every_seconds, log.checkpoint, "signing an audit checkpoint")
