"""Taking SQLite's write lock promptly when other connections and processes want it too.

SQLite lets one writer at a time hold its write lock. A connection that finds it held waits in
SQLite's busy handler, which looks again after sleeping 1, 2, 5, 10, ... and then 100 ms at a time.
With the lock held about half the time (measured: a consent writer at 200 changes/s and a publisher
delivering them on one SQLite file), a waiter that sleeps 100 ms between looks misses release after
release while the others take the lock again: deliveries stalled for up to 1.5 s (bench/RESULTS.md).

So every write transaction here begins with ``BEGIN IMMEDIATE`` under a short busy timeout
(``LOOK_MS``) and tries again at once until ``WAIT_SECONDS`` have passed: the lock is looked at
every millisecond or two for as long as anyone waits. Taking the lock at the first write, as
SQLite's deferred transactions do anyway, keeps what each transaction reads before its first write
outside it, as before (the Python driver's default); the transaction itself now starts holding the
lock, so no later statement in it can find the lock taken.

``watch_writes`` does this for an engine: before a statement that writes on a connection outside a
transaction. ``begin_immediate`` does it on a bare ``sqlite3`` connection (the audit log's writer).
Past ``WAIT_SECONDS`` the last ``database is locked`` error is raised, which the API answers 503
(``store.database.is_unavailable``).
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

#: The busy timeout of every SQLite connection: how long one attempt waits for the lock inside SQLite.
LOOK_MS: Final = 10
#: How long a writer keeps trying for the lock before giving up ("database is locked").
WAIT_SECONDS: Final = 30.0
#: Statements that never take the lock first: reads, and those SQLite refuses inside a transaction.
#: Everything else is taken for a write, so a write nobody listed (a CTE-led INSERT, say) still waits
#: its 30 s for the lock rather than failing after ``LOOK_MS``; a read taken for one only waits.
_NOT_WRITES: Final = re.compile(
    r"\s*(?:SELECT|PRAGMA|EXPLAIN|VACUUM|ATTACH|DETACH|BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b",
    re.IGNORECASE,
)


def writes(statement: str) -> bool:
    """Whether ``watch_writes`` takes the write lock before ``statement`` (outside a transaction)."""
    return _NOT_WRITES.match(statement) is None


def is_locked(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error).lower()


def begin_immediate(conn: sqlite3.Connection, wait_seconds: float = WAIT_SECONDS) -> None:
    """``BEGIN IMMEDIATE`` on a connection in autocommit mode, trying until ``wait_seconds`` pass."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not is_locked(error) or time.monotonic() >= deadline:
                raise


async def begin_immediate_async(conn: Any, wait_seconds: float = WAIT_SECONDS) -> None:
    """The same on an ``aiosqlite.Connection`` (each attempt waits up to ``LOOK_MS`` on its thread)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not is_locked(error) or time.monotonic() >= deadline:
                raise


def watch_writes(engine: AsyncEngine, wait_seconds: float = WAIT_SECONDS) -> None:
    """Before each writing statement outside a transaction, take the write lock (``begin_immediate``)."""

    def before(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        driver = conn.connection.driver_connection
        if driver is None or driver.in_transaction or not writes(statement):
            return
        adapted = conn.connection.dbapi_connection
        assert adapted is not None
        adapted.run_async(lambda c: begin_immediate_async(c, wait_seconds))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
