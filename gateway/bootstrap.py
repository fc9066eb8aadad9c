"""The composition root: the one place settings become engines, mappers and services."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ingest import Ingestor
from gateway.settings import Settings
from gateway.store.database import create_engine, migrate
from mappings.engine import Engine
from mappings.ids import IdMaker
from mappings.mapper import Mapper
from mappings.specs import load_specs
from mappings.terminology import load_tables


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    mapper: Mapper
    ingestor: Ingestor

    async def close(self) -> None:
        await self.engine.dispose()


def build_mapper(settings: Settings) -> Mapper:
    return Mapper(load_specs(), Engine(load_tables()), IdMaker(settings.resolved_id_key()))


async def bootstrap(settings: Settings, *, run_migrations: bool = True) -> Services:
    """Connect, migrate (idempotent), and wire the services. Callers must ``await services.close()``."""
    engine = create_engine(settings)
    if run_migrations:
        await migrate(engine)
    mapper = build_mapper(settings)
    return Services(settings, engine, mapper, Ingestor(engine, mapper, settings.ingest_batch_size))
