"""Appending to the log: concurrent appenders keep one unbroken chain; checkpoints get signed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace

import asyncpg
import pytest
from sqlalchemy import func, select, text

from consent.chain import Entry, Kind, key_id
from gateway.audit.batcher import BatchedAppender
from gateway.audit.log import AuditLog, PostgresWriter, sign_periodically
from gateway.audit.verify import verify_store
from gateway.bootstrap import Services
from gateway.store.audit import lock_head, read_head
from gateway.store.schema import audit_checkpoints


def entry(n: int) -> Entry:
    return Entry(
        at=f"2026-11-24T10:00:{n % 60:02d}.000000Z",
        kind=Kind.DISCLOSURE,
        action="read",
        request_id=f"r{n}",
        requester_kind="provider",
        org_ods="RY4",
        client_id="community-epr",
        nhs_number="9990000018",
        purpose="direct-care",
        decision="permit",
        reason="no-objection",
    )


def driver_log(services: Services, checkpoint_every: int = 1000) -> AuditLog:
    """An ``AuditLog`` appending at the driver: the writer thread on SQLite, asyncpg on PostgreSQL."""
    settings = services.settings
    postgres = None
    if services.engine.dialect.name == "postgresql":
        postgres = PostgresWriter(settings.resolved_database_url(), settings.database_schema)
    return AuditLog(
        services.engine,
        services.log.key,
        checkpoint_every=checkpoint_every,
        sqlite_path=settings.sqlite_path(),
        postgres=postgres,
    )


async def verified_entries(services: Services) -> int:
    public = services.log.key.public_key()
    verified = await verify_store(services.engine, {key_id(public): public})
    assert verified.result.ok, verified.result.problem
    return verified.result.entries


@pytest.mark.parametrize(
    ("store_settings", "at_driver"),
    [("sqlite", False), ("postgres", False), ("sqlite", True), ("postgres", True)],
    indirect=["store_settings"],
    ids=["sqlite-engine", "postgres-engine", "sqlite-writer-thread", "postgres-driver"],
)
async def test_concurrent_appenders_extend_one_chain(services: Services, at_driver: bool) -> None:
    """Through the engine and at the driver (SQLite: the log's own writer thread, ``append_sqlite``;
    PostgreSQL: ``append_postgres``); then the two kinds of appender interleave on one chain."""
    engine_log = AuditLog(services.engine, services.log.key, checkpoint_every=7)
    log = driver_log(services, checkpoint_every=7) if at_driver else engine_log
    other = AuditLog(services.engine, services.log.key, checkpoint_every=7)

    async def writer(w: int) -> None:
        for i in range(10):
            await (other if w == 0 else log).append([entry(w * 100 + i), entry(w * 100 + i + 50)])

    try:
        await asyncio.gather(*(writer(w) for w in range(4)))
    finally:
        await log.close()
    public = services.log.key.public_key()
    verified = await verify_store(services.engine, {key_id(public): public})
    assert verified.result.ok, verified.result.problem
    assert verified.result.entries == 80
    assert verified.result.checkpoints >= 80 // 7 - 1


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_a_driver_appender_chains_on_from_a_head_another_process_moved(services: Services) -> None:
    """Two writers, each keeping the head it last saw: every append finds the other moved it."""
    first, second = driver_log(services, checkpoint_every=5), driver_log(services, checkpoint_every=5)
    try:
        for n in range(12):
            head = await (first if n % 2 else second).append([entry(n), entry(n + 100)])
            assert head.seq == 2 * (n + 1)
    finally:
        await first.close()
        await second.close()
    assert await verified_entries(services) == 24
    async with services.engine.connect() as conn:
        head = await read_head(conn)
        signed = (await conn.execute(select(func.count()).select_from(audit_checkpoints))).scalar_one()
    assert head.seq == 24 and 24 - head.checkpoint_seq < 5
    assert signed >= 24 // 5 - 1  # each append that left 5 or more unsigned signed its own checkpoint


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_a_driver_appender_reconnects_after_its_connection_is_lost(services: Services) -> None:
    settings = services.settings
    writer = PostgresWriter(settings.resolved_database_url(), settings.database_schema)
    log = AuditLog(services.engine, services.log.key, postgres=writer)
    try:
        await log.append([entry(1)])
        async with services.engine.connect() as conn:  # an operator (or a failover) ends its session
            pid = writer._conn.get_server_pid()
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # How the loss shows depends on when asyncpg notices it: a server error, a closed connection,
        # or its protocol found mid-operation.
        lost = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError)
        with pytest.raises(lost):
            await log.append([entry(2)])
        await log.append([entry(3)])
    finally:
        await log.close()
    assert await verified_entries(services) == 2


async def test_a_failed_driver_append_writes_nothing_and_the_next_one_goes_on(services: Services) -> None:
    """On SQLite's writer thread (``append_sqlite``) and PostgreSQL's one statement (``append_postgres``)."""
    log = driver_log(services)
    failure = (
        asyncpg.NotNullViolationError
        if services.engine.dialect.name == "postgresql"
        else sqlite3.IntegrityError
    )
    try:
        await log.append([entry(1)])
        with pytest.raises(failure):
            await log.append([entry(2), replace(entry(3), kind=None)])  # type: ignore[arg-type]  # NOT NULL
        await log.append([entry(4)])
    finally:
        await log.close()
    async with services.engine.connect() as conn:
        assert (await read_head(conn)).seq == 2
    assert await verified_entries(services) == 2


async def test_the_periodic_signer_covers_the_tail(services: Services) -> None:
    await services.log.append([entry(1), entry(2)])
    async with services.engine.connect() as conn:
        assert (await read_head(conn)).checkpoint_seq == 0
    signer = asyncio.create_task(sign_periodically(services.log, 0.02))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            async with services.engine.connect() as conn:
                if (await read_head(conn)).checkpoint_seq == 2:
                    break
        async with services.engine.connect() as conn:
            assert (await read_head(conn)).checkpoint_seq == 2
    finally:
        signer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signer


async def test_stopping_the_signer_lets_an_attempt_in_flight_finish(services: Services) -> None:
    """Shutdown cancels the signer and then signs: a half-done attempt must not keep the head locked."""
    started, finished = asyncio.Event(), asyncio.Event()

    class HoldingLog(AuditLog):
        async def checkpoint(self):  # type: ignore[no-untyped-def]
            async with self.engine.begin() as conn:
                await lock_head(conn)
                started.set()
                await asyncio.sleep(0.2)
            finished.set()

    await services.log.append([entry(1)])
    signer = asyncio.create_task(sign_periodically(HoldingLog(services.engine, services.log.key), 0.01))
    await asyncio.wait_for(started.wait(), 5)
    signer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await signer
    assert finished.is_set()
    assert signer.cancelled()
    checkpoint = await asyncio.wait_for(services.log.checkpoint(), 5)
    assert checkpoint is not None and checkpoint.seq == 1


class CountingLog(AuditLog):
    appends = 0

    async def append(self, entries):  # type: ignore[no-untyped-def]
        self.appends += 1
        return await super().append(entries)


async def test_group_commit_shares_transactions_and_keeps_every_entry(services: Services) -> None:
    log = CountingLog(services.engine, services.log.key)
    batcher = BatchedAppender(log, max_batch=16)
    await asyncio.gather(*(batcher.append([entry(n)]) for n in range(50)))
    public = services.log.key.public_key()
    verified = await verify_store(services.engine, {key_id(public): public})
    assert verified.result.ok and verified.result.entries == 50
    assert 50 // 16 <= log.appends < 50


async def test_group_commit_failure_reaches_every_waiting_request(services: Services) -> None:
    await services.engine.dispose()
    broken = AuditLog(services.engine, services.log.key)

    async def fail(entries):  # type: ignore[no-untyped-def]
        raise RuntimeError("store down")

    broken.append = fail  # type: ignore[method-assign]
    batcher = BatchedAppender(broken)
    results = await asyncio.gather(*(batcher.append([entry(n)]) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
