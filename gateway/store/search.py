"""Reads the FHIR read API's routes make through the engine: reads by id, versions, history, a view.

(Who a resource belongs to, and the two searches, are ``store.hot_reads``.) Every
function here reads content and is meant to be called only from a loader handed
to ``Disclosure.person``, after a permit, and each is bound to that person's NHS
number: a row that belongs to someone else is not returned even if its id was
asked for.

Pages are ordered by id (stable under offset paging); a person's view puts the
Patient first. Each page read returns ``(total, rows)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.schema import resource_history, resources


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version of a resource, its JSON as stored."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: bytes

    @property
    def triple(self) -> tuple[str, str, bytes]:
        return self.resource_type, self.id, self.content


_COLUMNS = (
    resources.c.resource_type,
    resources.c.id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.content,
)


def _stored(row: Sequence[Any]) -> Stored:
    rtype, rid, version_id, last_updated, content = row
    return Stored(rtype, rid, version_id, last_updated, content.encode())


async def read_one(conn: AsyncConnection, resource_type: str, rid: str, nhs_number: str) -> Stored | None:
    """The current version of one of this person's resources."""
    row = (
        await conn.execute(
            select(*_COLUMNS).where(
                resources.c.resource_type == resource_type,
                resources.c.id == rid,
                resources.c.nhs_number == nhs_number,
            )
        )
    ).first()
    return None if row is None else _stored(row)


def _belongs(resource_type: str, rid: str, nhs_number: str) -> Select[tuple[bool]]:
    return select(
        exists().where(
            resources.c.resource_type == resource_type,
            resources.c.id == rid,
            resources.c.nhs_number == nhs_number,
        )
    )


async def read_version(
    conn: AsyncConnection, resource_type: str, rid: str, version_id: int, nhs_number: str
) -> Stored | None:
    """One version from the history of one of this person's resources."""
    if not (await conn.execute(_belongs(resource_type, rid, nhs_number))).scalar():
        return None
    h = resource_history.c
    row = (
        await conn.execute(
            select(h.resource_type, h.id, h.version_id, h.last_updated, h.content).where(
                h.resource_type == resource_type, h.id == rid, h.version_id == version_id
            )
        )
    ).first()
    return None if row is None else _stored(row)


async def history_page(
    conn: AsyncConnection, resource_type: str, rid: str, nhs_number: str, offset: int, limit: int
) -> tuple[int, list[Stored]]:
    """A page of one of this person's resources' versions, newest first."""
    if not (await conn.execute(_belongs(resource_type, rid, nhs_number))).scalar():
        return 0, []
    h = resource_history.c
    where = and_(h.resource_type == resource_type, h.id == rid)
    total = (await conn.execute(select(func.count()).select_from(resource_history).where(where))).scalar_one()
    rows = await conn.execute(
        select(h.resource_type, h.id, h.version_id, h.last_updated, h.content)
        .where(where)
        .order_by(h.version_id.desc())
        .offset(offset)
        .limit(limit)
    )
    return total, [_stored(r) for r in rows]


async def person_page(
    conn: AsyncConnection, nhs_number: str, offset: int, limit: int
) -> tuple[int, list[Stored]]:
    """A page of everything held for this person: the Patient first, then by type and id."""
    where = resources.c.nhs_number == nhs_number
    total = (await conn.execute(select(func.count()).select_from(resources).where(where))).scalar_one()
    rows = await conn.execute(
        select(*_COLUMNS)
        .where(where)
        .order_by(resources.c.resource_type != "Patient", resources.c.resource_type, resources.c.id)
        .offset(offset)
        .limit(limit)
    )
    return total, [_stored(r) for r in rows]
