"""Appending to the log: concurrent appenders keep one unbroken chain; checkpoints get signed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import func, select, text

from consent.chain import Checkpoint, Entry, Kind, chained_rows, key_id, sign_checkpoint
from consent.model import Purpose, Requester, RequesterKind
from gateway.audit.batcher import BatchedAppender
from gateway.audit.log import AuditLog, PostgresWriter, sign_periodically
from gateway.audit.verify import verify_store
from gateway.bootstrap import Services
from gateway.disclosure import Ask, Loaded
from gateway.store.audit import Head, append_postgres, lock_head, read_head, save_checkpoint, stream_entries
from gateway.store.database import asyncpg_target
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
    """Two writers taking turns: every append chains on from the head the other one left."""
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


async def test_requests_under_way_are_logged_in_one_append(services: Services) -> None:
    """A served process's log waits for the disclosures already decided (``Disclosure.underway``):
    ten requests whose loads finish one after another share one append, not one each."""
    log = CountingLog(services.engine, services.log.key)
    disclosure = services.disclosure
    disclosure.log = BatchedAppender(log, coming=lambda: disclosure.underway.count, linger=30)
    requester = Requester(RequesterKind.PROVIDER, "RXX01", "epr-1")
    gates = [asyncio.Event() for _ in range(10)]

    def loader(gate: asyncio.Event) -> Callable[[str], Awaitable[Loaded]]:
        async def load(_number: str) -> Loaded:
            await gate.wait()
            return []

        return load

    asks = [Ask(requester, Purpose.DIRECT_CARE, "read", f"r{i}") for i in range(10)]
    requests = [
        asyncio.create_task(disclosure.person(ask, "9990000018", loader(gate)))
        for ask, gate in zip(asks, gates, strict=True)
    ]
    for _ in range(100):
        await asyncio.sleep(0)  # every request decided, each now waiting on its load
    for gate in gates:
        gate.set()
        await asyncio.sleep(0.01)  # long enough for an append of its own, were it not waited for
    decided = await asyncio.wait_for(asyncio.gather(*requests), timeout=10)
    assert all(d.permitted for d in decided)
    assert log.appends == 1
    assert disclosure.underway.count == 0
    assert await verified_entries(services) == 10


async def test_a_request_that_fails_before_the_log_is_no_longer_under_way(services: Services) -> None:
    disclosure = services.disclosure
    requester = Requester(RequesterKind.PROVIDER, "RXX01", "epr-1")

    async def broken(_number: str) -> Loaded:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        await disclosure.person(Ask(requester, Purpose.DIRECT_CARE, "read", "r1"), "9990000018", broken)
    assert disclosure.underway.count == 0


async def test_group_commit_failure_reaches_every_waiting_request(services: Services) -> None:
    await services.engine.dispose()
    broken = AuditLog(services.engine, services.log.key)

    async def fail(entries):  # type: ignore[no-untyped-def]
        raise RuntimeError("store down")

    broken.append = fail  # type: ignore[method-assign]
    batcher = BatchedAppender(broken)
    results = await asyncio.gather(*(batcher.append([entry(n)]) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_every_field_is_stored_and_hashed_as_written(services: Services) -> None:
    """Each field distinct, non-ASCII text and NULLs included: what the driver appender stores (on
    PostgreSQL, hashed by the server's ``audit_append``) reads back whole and verifies."""
    full = Entry(
        at="2026-11-24T10:00:00.000001Z",
        kind=Kind.CONSENT_CHANGE,
        action="opt-out",
        request_id="r-é",
        requester_kind="operator",
        org_ods="X26",
        client_id="cli:zoë",
        nhs_number="9990000018",
        purpose="direct-care",
        decision="deny",
        reason="local-opt-out",
        consent_id="c-1",
        detail='{"note":"Zoë — 😀 \\u0000"}',
    )
    sparse = replace(entry(2), nhs_number=None, purpose=None, decision=None, reason=None)
    log = driver_log(services, checkpoint_every=2)
    try:
        head = await log.append([full, sparse])
        assert head.seq == 2 and head.checkpoint_seq == 2
        assert (await log.append([entry(3)])).seq == 3
    finally:
        await log.close()
    async with services.engine.connect() as conn:
        stored = [s async for chunk in stream_entries(conn) for s in chunk]
    assert [s.entry for s in stored] == [full, sparse, entry(3)]
    assert await verified_entries(services) == 3


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_writers_in_several_processes_queue_on_the_head_and_none_is_lost(services: Services) -> None:
    """Three appenders with connections of their own (as three worker processes), all at once."""
    logs = [driver_log(services, checkpoint_every=10) for _ in range(3)]

    async def appends(w: int) -> list[int]:
        return [(await logs[w].append([entry(w * 100 + i), entry(w * 100 + i + 50)])).seq for i in range(20)]

    try:
        heads = await asyncio.gather(*(appends(w) for w in range(3)))
    finally:
        for log in logs:
            await log.close()
    assert sorted(seq for seqs in heads for seq in seqs) == list(range(2, 121, 2))
    assert await verified_entries(services) == 120
    async with services.engine.connect() as conn:
        head = await read_head(conn)
    assert head.seq == 120 and 120 - head.checkpoint_seq < 10


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_a_checkpoint_another_process_saved_first_is_kept(services: Services) -> None:
    """The periodic signer of another process signed the same head first: the append still succeeds."""
    log = driver_log(services, checkpoint_every=1)
    try:
        head = await log.append([entry(1)])
        _, last = chained_rows(bytes.fromhex(head.entry_hash), head.seq, [entry(2)])
        theirs = sign_checkpoint(services.log.key, 2, last.hex(), datetime(2026, 11, 24, tzinfo=UTC))
        async with services.engine.begin() as conn:
            await save_checkpoint(conn, head, theirs)
        assert (await log.append([entry(2)])) == Head(2, last.hex(), 2)
    finally:
        await log.close()
    async with services.engine.connect() as conn:
        saved = (
            await conn.execute(select(audit_checkpoints.c.signed_at).where(audit_checkpoints.c.seq == 2))
        ).one()
    assert saved.signed_at == theirs.signed_at
    assert await verified_entries(services) == 2


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
@pytest.mark.parametrize("failure", ["the INSERT", "signing"])
async def test_a_checkpoint_that_cannot_be_saved_leaves_the_append_committed(
    services: Services, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    settings = services.settings
    writer = PostgresWriter(settings.resolved_database_url(), settings.database_schema)

    def sign(seq: int, entry_hash: str) -> Checkpoint:
        if failure == "signing":
            raise RuntimeError("the key is unavailable")
        good = sign_checkpoint(services.log.key, seq, entry_hash, datetime(2026, 11, 24, tzinfo=UTC))
        return replace(good, key_id="k" * 40)  # longer than the column: the INSERT fails

    try:
        head = await writer.append([entry(1), entry(2)], 2, sign)
        assert (head.seq, head.checkpoint_seq) == (2, 0)
        assert "an audit checkpoint could not be saved" in caplog.text
        assert (await writer.append([entry(3)], 1000, sign)).seq == 3  # the connection goes on
    finally:
        await writer.close()
    assert await verified_entries(services) == 3


class _WalAfterAppend:
    """An asyncpg connection that notes where WAL ends just after the append's own statement."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.appended_to: str | None = None
        #: Statements run after the append (the WAL writer may flush by itself: this shows who did).
        self.after: list[str] = []

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record:
        row = await self.conn.fetchrow(sql, *args)
        if self.appended_to is None:
            self.appended_to = await self.conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        return row

    async def execute(self, sql: str, *args: object) -> str:
        self.after.append(" ".join(sql.split()))
        return str(await self.conn.execute(sql, *args))

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
@pytest.mark.parametrize("checkpoint_every", [1000, 1], ids=["flushed", "flushed-by-its-checkpoint"])
async def test_a_postgres_append_returns_only_once_it_is_on_disk(
    services: Services, checkpoint_every: int
) -> None:
    """The append commits without waiting for the disk (not to hold the head's lock meanwhile), so
    ``append_postgres`` must make it durable before returning: WAL flushed past the append's commit."""
    settings = services.settings
    dsn, server_settings = asyncpg_target(settings.resolved_database_url(), settings.database_schema)
    conn = await asyncpg.connect(dsn, server_settings=server_settings)
    try:
        watched = _WalAfterAppend(conn)

        def sign(seq: int, entry_hash: str) -> Checkpoint:
            return sign_checkpoint(services.log.key, seq, entry_hash, datetime(2026, 11, 24, tzinfo=UTC))

        head = await append_postgres(watched, [entry(1), entry(2)], checkpoint_every, sign)
        flushed = await conn.fetchval(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", watched.appended_to
        )
        assert flushed, "answered before the append was on disk"
        # ... because the appender itself committed a write after it (the flush, or the checkpoint)
        [statement] = watched.after
        assert statement.startswith("INSERT INTO audit_flushes" if checkpoint_every > 2 else "WITH saved AS")
        assert head.seq == 2
        assert head.checkpoint_seq == (2 if checkpoint_every == 1 else 0)
        assert await conn.fetchval("SHOW synchronous_commit") == "on"  # the session's own is untouched
    finally:
        await conn.close()
    assert await verified_entries(services) == 2
