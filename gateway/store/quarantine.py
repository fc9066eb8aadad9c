"""Quarantined records: what could not be read or mapped, with where and why, kept for replay."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.records import RecordError
from gateway.store.dialect import upsert
from gateway.store.schema import quarantine


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    run_id: int | None
    source: str
    location: str
    reason: str
    field: str | None
    detail: str
    local_id: str | None
    raw: str
    raw_hash: str
    created_at: datetime
    last_seen: datetime
    status: str
    resolved_at: datetime | None


async def add(
    conn: AsyncConnection, run_id: int | None, errors: Sequence[RecordError], when: datetime
) -> None:
    """Quarantine records; one already held (same source and raw bytes) is updated, not duplicated."""
    if not errors:
        return
    rows = {}
    for e in errors:
        raw_hash = hashlib.sha256(f"{e.location}\x1f{e.raw}".encode()).hexdigest()
        rows[(e.source, raw_hash)] = {
            "run_id": run_id,
            "source": e.source,
            "location": e.location[:64],
            "reason": e.reason[:64],
            "field": e.field[:64] if e.field else None,
            "detail": e.detail,
            "local_id": e.local_id[:128] if e.local_id else None,
            "raw": e.raw,
            "raw_hash": raw_hash,
            "created_at": when,
            "last_seen": when,
            "status": "open",
        }
    stmt = upsert(
        conn,
        quarantine,
        ["source", "raw_hash"],
        ["run_id", "reason", "field", "detail", "last_seen", "status"],
    )
    await conn.execute(stmt, list(rows.values()))


async def listing(
    conn: AsyncConnection,
    *,
    source: str | None = None,
    reason: str | None = None,
    status: str | None = "open",
    limit: int = 100,
    after_id: int = 0,
) -> list[Quarantined]:
    query = select(quarantine).where(quarantine.c.id > after_id).order_by(quarantine.c.id).limit(limit)
    if source:
        query = query.where(quarantine.c.source == source)
    if reason:
        query = query.where(quarantine.c.reason == reason)
    if status:
        query = query.where(quarantine.c.status == status)
    rows = await conn.execute(query)
    return [Quarantined(**r) for r in rows.mappings()]


async def get(conn: AsyncConnection, qid: int) -> Quarantined | None:
    row = (await conn.execute(select(quarantine).where(quarantine.c.id == qid))).mappings().first()
    return None if row is None else Quarantined(**row)


async def resolve(conn: AsyncConnection, qid: int, when: datetime) -> None:
    await conn.execute(
        update(quarantine).where(quarantine.c.id == qid).values(status="replayed", resolved_at=when)
    )


async def requarantine(conn: AsyncConnection, qid: int, error: RecordError) -> None:
    """A replay failed again: keep the one row, with the latest reason."""
    await conn.execute(
        update(quarantine)
        .where(quarantine.c.id == qid)
        .values(reason=error.reason[:64], field=error.field, detail=error.detail)
    )


async def counts(conn: AsyncConnection, status: str = "open") -> dict[tuple[str, str], int]:
    rows = await conn.execute(
        select(quarantine.c.source, quarantine.c.reason, func.count())
        .where(quarantine.c.status == status)
        .group_by(quarantine.c.source, quarantine.c.reason)
    )
    return {(s, r): n for s, r, n in rows}
