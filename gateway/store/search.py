"""Reads the FHIR read API needs: who a resource belongs to, and the narrow reads its loaders make.

``owner`` resolves a resource to its person (NHS number) *before* any decision,
without reading content. Every other function here reads content and is meant
to be called only from a loader handed to ``Disclosure.person``, after a permit,
and each is bound to that person's NHS number: a row that belongs to someone
else is not returned even if its id was asked for.

Pages are ordered by id (stable under offset paging); a person's view puts the
Patient first. Each page read returns ``(total, rows)``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


async def owner(conn: AsyncConnection, resource_type: str, rid: str) -> str | None:
    """The NHS number of the person a current resource belongs to; None if unknown or unattributed."""
    result = await conn.execute(
        select(resources.c.nhs_number).where(
            resources.c.resource_type == resource_type, resources.c.id == rid
        )
    )
    number: str | None = result.scalar_one_or_none()
    return number


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


def patient_query(nhs_number: str) -> Select[Any]:
    """The statement ``patient_of`` runs (an index lookup on ``ix_resources_person``)."""
    return select(*_COLUMNS).where(
        resources.c.nhs_number == nhs_number, resources.c.resource_type == "Patient"
    )


async def patient_of(conn: AsyncConnection, nhs_number: str) -> Stored | None:
    """The shared Patient of this person."""
    row = (await conn.execute(patient_query(nhs_number))).first()
    return None if row is None else _stored(row)


def careplan_queries(
    nhs_number: str, statuses: Collection[str], offset: int, limit: int
) -> tuple[Select[Any], Select[Any]]:
    """The statements ``careplans`` runs: (count, page), both ranges of ``ix_resources_person``.

    The page carries the total of all matches in each row (a window count, taken before the
    limit), so a page with rows needs no second statement.
    """
    where = and_(resources.c.nhs_number == nhs_number, resources.c.resource_type == "CarePlan")
    if statuses:
        where = and_(where, resources.c.status.in_(sorted(statuses)))
    count = select(func.count()).select_from(resources).where(where)
    page = (
        select(*_COLUMNS, func.count().over())
        .where(where)
        .order_by(resources.c.id)
        .offset(offset)
        .limit(limit)
    )
    return count, page


async def careplans(
    conn: AsyncConnection, nhs_number: str, statuses: Collection[str], offset: int, limit: int
) -> tuple[int, list[Stored]]:
    """A page of this person's CarePlans (all sources), optionally only those in ``statuses``."""
    count, page = careplan_queries(nhs_number, statuses, offset, limit)
    rows = (await conn.execute(page)).all() if limit > 0 else []
    if rows:
        return rows[0][-1], [_stored(r[:-1]) for r in rows]
    if offset == 0 and limit > 0:
        return 0, []  # no page from the start: nothing matches
    return (await conn.execute(count)).scalar_one(), []


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
