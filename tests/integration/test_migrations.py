"""The migrations create exactly the tables ``schema.py`` defines, on both stores."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from gateway.bootstrap import Services
from gateway.store.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_table_definitions(services: Services) -> None:
    async with services.engine.connect() as conn:
        differences = await conn.run_sync(_diff)
    assert differences == []
