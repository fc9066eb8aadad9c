"""Writers on a SQLite file take the write lock promptly, even from a connection that keeps retaking it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.settings import Settings
from gateway.store import sqlite_lock
from gateway.store.database import create_engine, is_unavailable


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(data_dir=tmp_path))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield engine
    await engine.dispose()


class Hog:
    """Another connection that holds the write lock ``hold`` s, leaves it ``gap`` s, and again, until stopped."""

    def __init__(self, path: Path, hold: float, gap: float) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.hold, self.gap = hold, gap
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO t VALUES (0)")
            time.sleep(self.hold)
            self.conn.execute("COMMIT")
            time.sleep(self.gap)


@pytest.fixture
def hog(tmp_path: Path) -> Iterator[Hog]:
    hog = Hog(tmp_path / "concord.db", hold=0.045, gap=0.005)
    hog.thread.start()
    yield hog
    hog.stop.set()
    hog.thread.join()
    hog.conn.close()


async def test_a_writer_is_not_starved_by_a_connection_that_keeps_retaking_the_lock(
    engine: AsyncEngine, hog: Hog
) -> None:
    # The hog leaves the lock free 5 ms in every 50. SQLite's own busy handler looks every 100 ms
    # once it has waited a third of a second, so it finds the lock free about one look in ten: with
    # it, these writes waited about 2 s each (measured). Looking every millisecond or two finds the
    # next gap: at most one cycle.
    waits = []
    for k in range(20):
        started = time.monotonic()
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (:k)"), {"k": k + 1})
        waits.append(time.monotonic() - started)
    assert max(waits) < 0.5, f"longest wait for the write lock {max(waits):.3f} s"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t WHERE x > 0"))).scalar() == 20


async def test_reads_do_not_wait_for_the_write_lock(engine: AsyncEngine, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "concord.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_write_transaction_holds_the_lock_from_its_first_write(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "concord.db", isolation_level=None, timeout=0)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_lock_held_past_the_wait_is_an_outage(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'concord.db'}", connect_args={"timeout": sqlite_lock.LOOK_MS / 1000}
    )
    sqlite_lock.watch_writes(engine, wait_seconds=0.2)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(tmp_path / "concord.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(exc.OperationalError, match="locked") as caught:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        assert 0.2 <= time.monotonic() - started < 5
        assert is_unavailable(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await engine.dispose()


def test_begin_immediate_on_a_bare_connection(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE t (x INTEGER)")
    second = sqlite3.connect(path, isolation_level=None, timeout=sqlite_lock.LOOK_MS / 1000)
    try:
        first.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite_lock.begin_immediate(second, wait_seconds=0.1)
        assert not second.in_transaction

        release = threading.Timer(0.15, lambda: first.execute("COMMIT"))
        release.start()
        sqlite_lock.begin_immediate(second, wait_seconds=5)
        assert second.in_transaction
        second.execute("ROLLBACK")
        release.join()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("statement", "taken_for_a_write"),
    [
        ("INSERT INTO t VALUES (1)", True),
        ("  update t SET x = 2", True),
        ("DELETE FROM t", True),
        ("REPLACE INTO t VALUES (1)", True),
        ("CREATE INDEX ix ON t (x)", True),
        ("WITH n AS (SELECT 1) INSERT INTO t SELECT * FROM n", True),
        ("SELECT count(*) FROM t", False),
        ("\n  select 1", False),
        ("PRAGMA journal_mode", False),
        ("VACUUM", False),
    ],
)
def test_which_statements_take_the_write_lock_first(statement: str, taken_for_a_write: bool) -> None:
    assert sqlite_lock.writes(statement) is taken_for_a_write
