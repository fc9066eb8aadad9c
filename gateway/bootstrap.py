"""The composition root: the one place settings become engines, mappers and services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.keys import signing_key
from gateway.audit.log import AuditLog, HeadMismatch, PostgresWriter
from gateway.decisions import Decider, LocalDecider, RedisDecider, StoreDecider
from gateway.disclosure import Disclosure
from gateway.fence import FileFence
from gateway.ingest import Ingestor
from gateway.publish.signal import OutboxSignal
from gateway.register import ConsentRegister
from gateway.settings import Settings
from gateway.store.database import create_engine, migrate, reader
from gateway.store.hot_reads import HotReads, open_hot_reads
from mappings.engine import Engine
from mappings.ids import IdMaker
from mappings.mapper import Mapper
from mappings.specs import load_specs
from mappings.terminology import load_tables

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    mapper: Mapper
    ingestor: Ingestor
    log: AuditLog
    decider: Decider
    register: ConsentRegister
    disclosure: Disclosure
    signal: OutboxSignal
    #: The API's searches and the decider's register reads, at the driver (``store.hot_reads``).
    reads: HotReads

    async def connect_ahead(self) -> None:
        """Make the connections requests use (the search pool's, the log's own) and prepare the
        searches' statements now, so the first requests under load do not wait while they are made
        (a serving process calls this at start). A failure is logged, not raised: whatever could not
        be made here is made on first use, as it would have been."""
        try:
            await self.reads.open()
            await self.log.open()
        except Exception as exc:  # noqa: BLE001 - the type only: a driver's message may quote the URL
            logger.warning(
                "could not connect to the store ahead of requests (%s); connecting on first use",
                type(exc).__name__,
            )

    async def close(self, sign: bool = True) -> None:
        """Sign whatever the log holds unsigned (the shutdown checkpoint), then disconnect."""
        try:
            if sign:
                await self.log.checkpoint()
        except HeadMismatch:
            # The command's own work is done and committed; the log needs an auditor, not a retry.
            logger.error("the audit log's head names no entry: not signed; run concord audit verify")
        finally:
            await self.decider.close()
            await self.reads.close()
            await self.log.close()
            await self.engine.dispose()


def build_mapper(settings: Settings) -> Mapper:
    return Mapper(load_specs(), Engine(load_tables()), IdMaker(settings.resolved_id_key()))


def build_decider(settings: Settings, engine: AsyncEngine, reads: HotReads | None = None) -> Decider:
    """Redis when configured; else a shared-memory fence beside a SQLite store; else the store itself.

    The decider reads the register through ``reads`` when given, else through ``engine``.
    """
    if settings.redis_url:
        from redis.asyncio import Redis

        client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return RedisDecider(
            engine,
            client,
            settings.consent_cache_seconds,
            prefix=f"{settings.redis_prefix}consent:",
            reads=reads,
        )
    path = settings.sqlite_path()
    if path is not None:
        fence = FileFence(path.with_name(path.name + ".consent-fence"))
        return LocalDecider(engine, fence, settings.consent_cache_seconds, reads=reads)
    return StoreDecider(engine, reads=reads)


async def bootstrap(settings: Settings, *, run_migrations: bool = True) -> Services:
    """Connect, migrate (idempotent), and wire the services. Callers must ``await services.close()``."""
    key = signing_key(settings)  # before connecting: a missing key stops start-up with nothing open
    engine = create_engine(settings)
    if run_migrations:
        await migrate(engine)
    mapper = build_mapper(settings)
    log = AuditLog(
        engine,
        key,
        settings.audit_checkpoint_entries,
        sqlite_path=settings.sqlite_path(),
        postgres=(
            PostgresWriter(settings.resolved_database_url(), settings.database_schema)
            if engine.dialect.name == "postgresql"
            else None
        ),
    )
    reads = open_hot_reads(settings, engine)
    decider = build_decider(settings, reader(engine), reads)  # it only reads: one statement per decision
    signal = OutboxSignal(
        decider.redis if isinstance(decider, RedisDecider) else None, f"{settings.redis_prefix}outbox"
    )
    register = ConsentRegister(engine, log, decider, mapper.ids, settings.sharing_policy_uri)
    register.on_commit = signal.changed
    ingestor = Ingestor(engine, mapper, settings.ingest_batch_size)
    ingestor.register = register
    ingestor.on_commit = signal.changed
    return Services(
        settings,
        engine,
        mapper,
        ingestor,
        log,
        decider,
        register,
        Disclosure(reader(engine), decider, log, reads=reads),
        signal,
        reads,
    )
