"""The migrations create exactly the tables ``schema.py`` defines, on both stores."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.bootstrap import Services, bootstrap
from gateway.settings import Settings
from gateway.store.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_table_definitions(services: Services) -> None:
    async with services.engine.connect() as conn:
        differences = await conn.run_sync(_diff)
    assert differences == []


async def test_queue_tables_are_vacuumed_often_on_postgresql(postgres_settings: Settings) -> None:
    """Claims read through every dead outbox row until vacuum removes it (docs/operations.md)."""
    services = await bootstrap(postgres_settings)
    try:
        async with services.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT relname, reloptions FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
                    " AND relname IN ('outbox', 'hie_people')"
                )
            )
            options = {name: set(opts or ()) for name, opts in rows}
    finally:
        await services.close(sign=False)
    for table in ("outbox", "hie_people"):
        assert {"autovacuum_vacuum_scale_factor=0.0", "autovacuum_vacuum_threshold=1000"} <= options[table]
