"""The store reads behind the IG pages: the register, the log, the HIE's state, data quality.

Read only: nothing here writes (the pages log what they show through ``log_read``). Care
records are never read here: the shared care view goes through the disclosure function.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, case, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.chain import Entry, StoredEntry
from gateway.audit.export import AuditFilter
from gateway.console.filters import AccessFilter, ConsentFilter, PublicationFilter
from gateway.store.audit import entries_query, stream_entries
from gateway.store.schema import api_clients, audit_log, consents, contributions, hie_people

#: A contribution whose NHS number carries UK Core verification status 01 ("present and verified").
#: Stored JSON is compact (orjson) and the mapping writes system before code.
VERIFIED_PATTERN: Final = '%NHSNumberVerificationStatusEngland","code":"01"%'


async def client_names(conn: AsyncConnection) -> dict[str, str]:
    """Registered clients' names by client id (to say who recorded or read what)."""
    rows = await conn.execute(select(api_clients.c.client_id, api_clients.c.name))
    return {cid: name for cid, name in rows.all()}


def _start(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.min, UTC)


def _end(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.max, UTC)


def consent_conditions(f: ConsentFilter) -> list[ColumnElement[bool]]:
    """A change (recorded or withdrawn) inside the date window, and the other fields as given."""
    c = consents.c
    found: list[ColumnElement[bool]] = []
    if f.nhs_number:
        found.append(c.nhs_number == f.nhs_number)
    if f.source:
        found.append(c.source == f.source)
    if f.status:
        found.append(c.status == f.status)
    if f.kind:
        found.append(c.kind == f.kind)
    if f.since or f.until:

        def inside(column: Any) -> ColumnElement[bool]:
            parts = [column.is_not(None)]
            if f.since:
                parts.append(column >= _start(f.since))
            if f.until:
                parts.append(column <= _end(f.until))
            return and_(*parts)

        found.append(or_(inside(c.recorded_at), inside(c.withdrawn_at)))
    return found


async def consent_page(
    conn: AsyncConnection, f: ConsentFilter, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of matching opt-outs, most recently recorded first, and how many match."""
    where = consent_conditions(f)
    total = (await conn.execute(select(func.count()).select_from(consents).where(*where))).scalar()
    rows = await conn.execute(
        select(consents)
        .where(*where)
        .order_by(consents.c.recorded_at.desc(), consents.c.id)
        .offset(offset)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()], int(total or 0)


async def consent_stream(
    conn: AsyncConnection, f: ConsentFilter, chunk: int = 1000
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every matching opt-out, oldest first, a chunk at a time (keyset paging on recorded_at, id)."""
    where = consent_conditions(f)
    after: tuple[datetime, str] | None = None
    while True:
        query = select(consents).where(*where)
        if after is not None:
            query = query.where(tuple_(consents.c.recorded_at, consents.c.id) > tuple_(*after))
        rows = [
            dict(r)
            for r in (
                await conn.execute(query.order_by(consents.c.recorded_at, consents.c.id).limit(chunk))
            ).mappings()
        ]
        if not rows:
            return
        yield rows
        after = (rows[-1]["recorded_at"], rows[-1]["id"])


def access_conditions(f: AccessFilter, kind: str | None = "disclosure") -> list[ColumnElement[bool]]:
    where = AuditFilter(
        nhs_number=f.nhs_number or None,
        org_ods=f.org_ods or None,
        since=f.since or None,
        until=f.until or None,
        decision=f.decision or None,
        kind=kind,
    ).conditions()
    if f.purpose:
        where.append(audit_log.c.purpose == f.purpose)
    return where


def _stored(rows: list[Any]) -> list[StoredEntry]:
    return [StoredEntry(r[0], Entry(*r[1:-1]), r[-1]) for r in rows]


async def access_page(
    conn: AsyncConnection, where: list[ColumnElement[bool]], before: int | None, limit: int
) -> tuple[list[StoredEntry], bool]:
    """Matching entries newest first, below ``before`` (a seq) when given; and whether more follow."""
    query = entries_query().where(*where)
    if before is not None:
        query = query.where(audit_log.c.seq < before)
    rows = (await conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit + 1))).all()
    return _stored(list(rows[:limit])), len(rows) > limit


async def count_entries(conn: AsyncConnection, where: list[ColumnElement[bool]]) -> int:
    value = (await conn.execute(select(func.count()).select_from(audit_log).where(*where))).scalar()
    return int(value or 0)


def entry_stream(
    conn: AsyncConnection, where: list[ColumnElement[bool]], chunk: int = 5000
) -> AsyncIterator[list[StoredEntry]]:
    """Matching entries in ``seq`` order, a chunk at a time (what ``gateway.audit.export`` writes)."""
    return stream_entries(conn, entries_query().where(*where), chunk)


async def people_at_hie(
    conn: AsyncConnection, f: PublicationFilter, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """What the HIE holds, person by person (most recently changed first), and how many match."""
    c = hie_people.c
    where: list[ColumnElement[bool]] = []
    if f.state:
        where.append(c.state == f.state)
    if f.nhs_number:
        where.append(c.nhs_number == f.nhs_number)
    total = (await conn.execute(select(func.count()).select_from(hie_people).where(*where))).scalar()
    rows = await conn.execute(
        select(c.nhs_number, c.state, c.published, c.attempts, c.last_error, c.changed_at)
        .where(*where)
        .order_by(c.changed_at.desc(), c.nhs_number)
        .offset(offset)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()], int(total or 0)


async def verified_by_source(conn: AsyncConnection) -> list[tuple[str, int, int]]:
    """Per source: (source, records with a verified NHS number, records)."""
    verified = func.sum(case((contributions.c.content.like(VERIFIED_PATTERN), 1), else_=0))
    rows = await conn.execute(
        select(contributions.c.source, verified, func.count())
        .group_by(contributions.c.source)
        .order_by(contributions.c.source)
    )
    return [(source, int(v or 0), int(n)) for source, v, n in rows.all()]
