"""Connecting to the store and migrating it.

SQLite runs in WAL mode (readers never wait for the writer) with
``synchronous=NORMAL`` (durable at each checkpoint; a power cut loses at most
the last transactions, never corrupts). PostgreSQL gets a pool sized for a
gateway process.

Pools keep ``CONCORD_DATABASE_POOL_SIZE`` connections open (16) and allow
``CONCORD_DATABASE_MAX_OVERFLOW`` more under a burst (4): an overflow
connection is closed when it is returned, so a pool whose
kept size is below the load opens a connection (for aiosqlite, a thread; for
asyncpg, a TCP and TLS handshake) on most checkouts. A request holds a
connection only while its statement runs, and PostgreSQL's 100 connections are
shared by every process (several workers, the publisher, the CLI), so the
default total per process is 20, with most of it kept open. PostgreSQL
connections are not pinged on checkout (a round trip per checkout, several per
request); they are recycled after ``RECYCLE_SECONDS`` instead, and a connection
that turns out dead fails its one statement and invalidates the pool, so the
next checkout connects afresh.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.settings import Settings
from gateway.store import sqlite_lock

MIGRATIONS = Path(__file__).parent / "migrations"
RECYCLE_SECONDS = 1800
#: The drivers' own errors, as raised where a driver is used without SQLAlchemy.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)
#: Errors that may mean the store cannot be reached or is out of capacity (``is_unavailable`` decides).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    OSError,
    *DRIVER_ERRORS,
)
#: PostgreSQL SQLSTATE classes of an unavailable server: connection exception, insufficient
#: resources (too many clients, out of disk or memory), operator intervention (shutting down).
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})
#: SQLite: another process holds the write lock past the busy timeout, or the file cannot be opened.
_UNAVAILABLE_SQLITE = ("database is locked", "unable to open database", "disk i/o error")


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url()
    sizes = {"pool_size": settings.database_pool_size, "max_overflow": settings.database_max_overflow}
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # An in-memory database is one connection (SQLAlchemy's static pool): nothing to size.
        sized = {} if ":memory:" in url else sizes
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **sized)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        sqlite_lock.watch_writes(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if settings.database_schema:
        connect_args["server_settings"] = {"search_path": settings.database_schema}
    # hide_parameters: a store error's message must never carry the NHS numbers it was bound to.
    return create_async_engine(
        url,
        pool_recycle=RECYCLE_SECONDS,
        **sizes,
        connect_args=connect_args,
        hide_parameters=True,
    )


def asyncpg_target(url: str, schema: str | None, name: str = "concord") -> tuple[str, dict[str, str]]:
    """For what connects with asyncpg itself, beside the engine (the search reads, the log's appends):
    the DSN of ``url`` (``Settings.resolved_database_url``) and the ``server_settings`` that put
    ``schema`` first on the search path, as the engine's connections have it, and name the
    connection (``application_name``: what ``pg_stat_activity`` shows a DBA)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    return dsn, ({"application_name": name} | ({"search_path": schema} if schema else {}))


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` says the store is down, unreachable or out of capacity (worth a retry).

    Such a request is answered 503 with Retry-After rather than 500: nothing is wrong with it.
    A constraint violation or a bad statement is a fault, never unavailability.
    """
    if isinstance(error, (ConnectionError, TimeoutError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        driver_error: BaseException | None = error.orig
    elif isinstance(error, DRIVER_ERRORS):
        driver_error = error  # raised by a driver used bare (``store.hot_reads``)
    else:
        return False
    if isinstance(driver_error, asyncpg.InterfaceError):
        return True  # the connection is closed or was lost
    sqlstate = getattr(driver_error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    if isinstance(error, sa_exc.OperationalError) or isinstance(driver_error, sqlite3.OperationalError):
        message = str(driver_error).lower()
        return any(text in message for text in _UNAVAILABLE_SQLITE)
    return False


def reader(engine: AsyncEngine) -> AsyncEngine:
    """``engine``'s pool for reads that are each one statement, or need no snapshot across statements.

    On PostgreSQL the connections run in autocommit: a checkout then costs no ``BEGIN`` and
    ``ROLLBACK`` round trips (measured: about a quarter of a pooled read's client CPU). Under READ
    COMMITTED every statement takes its own snapshot anyway, so a read sees what it saw inside a
    transaction. On SQLite it is ``engine`` itself: switching aiosqlite's mode is a thread handoff
    each way, dearer than the rollback it saves. Never write through it.
    """
    if engine.dialect.name != "postgresql":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Short: a writer takes the lock with BEGIN IMMEDIATE and tries again at once (store.sqlite_lock).
    cursor.execute(f"PRAGMA busy_timeout={sqlite_lock.LOOK_MS}")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Safe to run from several processes: PostgreSQL serialises it."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One migrator at a time across processes; released at commit.
            from sqlalchemy import text

            await conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
        await conn.run_sync(_upgrade, revision)
