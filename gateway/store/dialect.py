"""The one place SQLite and PostgreSQL differ in what concord writes: upserts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def upsert(
    conn: AsyncConnection,
    table: Table,
    keys: Sequence[str],
    update: Sequence[str],
    add: Sequence[str] = (),
) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, for either dialect.

    Columns in ``update`` take the new row's value; columns in ``add`` are summed with it (counters).
    """
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(table)
    if not update and not add:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    changes: dict[str, Any] = {name: stmt.excluded[name] for name in update}
    changes.update({name: table.c[name] + stmt.excluded[name] for name in add})
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=changes)
