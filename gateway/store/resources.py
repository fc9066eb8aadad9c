"""Versioned resource writes and reads, with the outbox row written in the same transaction.

Writers call ``current_versions`` for a batch, decide what changed, then
``write_versions``. Two writers racing on one resource cannot both win: the
history table's primary key (type, id, version) rejects the second, whose
transaction then rolls back and is retried by the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.schema import outbox, resource_history, resources

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Current:
    version_id: int
    content_hash: str
    #: When the source recorded this version, as sent (``MappedRecord.recorded``); None: not known.
    recorded: str | None = None


@dataclass(slots=True)
class Version:
    """One new version to write: ``content`` is already stamped with versionId/lastUpdated."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content_hash: str
    content: dict[str, Any]
    nhs_number: str | None
    source: str | None
    recorded: str | None = None


async def current_versions(conn: AsyncConnection, keys: Iterable[Key]) -> dict[Key, Current]:
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, []).append(rid)
    found: dict[Key, Current] = {}
    for rtype, ids in by_type.items():
        for chunk in _chunks(sorted(set(ids)), 500):
            rows = await conn.execute(
                select(
                    resources.c.id, resources.c.version_id, resources.c.content_hash, resources.c.recorded
                ).where(resources.c.resource_type == rtype, resources.c.id.in_(chunk))
            )
            for rid, version_id, chash, recorded in rows:
                found[(rtype, rid)] = Current(version_id, chash, recorded)
    return found


async def write_versions(conn: AsyncConnection, versions: Sequence[Version]) -> None:
    """Insert or update current rows, append history, and queue one outbox row per version.

    A batch may hold several versions of one resource (a hospital stay discharged, then the
    discharge cancelled): every version goes into the history and the outbox, and the current
    row is written once, as the latest, from the version before the batch's first (an insert
    when that first is version 1).
    """
    if not versions:
        return
    history_rows = []
    outbox_rows = []
    #: (type, id) -> (the batch's first version of it, the row of its latest)
    current: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for v in versions:
        body = orjson.dumps(v.content).decode()
        row = {
            "resource_type": v.resource_type,
            "id": v.id,
            "version_id": v.version_id,
            "last_updated": v.last_updated,
            "nhs_number": v.nhs_number,
            "source": v.source,
            "status": v.content.get("status") if isinstance(v.content.get("status"), str) else None,
            "subject_id": _subject_id(v.content),
            "content_hash": v.content_hash,
            "content": body,
            "recorded": v.recorded,
        }
        history_rows.append(
            {
                "resource_type": v.resource_type,
                "id": v.id,
                "version_id": v.version_id,
                "last_updated": v.last_updated,
                "content": body,
            }
        )
        outbox_rows.append(
            {
                "nhs_number": v.nhs_number,
                "resource_type": v.resource_type,
                "resource_id": v.id,
                "version_id": v.version_id,
                "created_at": v.last_updated,
            }
        )
        key = (v.resource_type, v.id)
        first = current[key][0] if key in current else v.version_id
        current[key] = (first, row)  # versions of one resource come in order (the ingest stages them so)
    inserts = []
    for (rtype, rid), (first, row) in current.items():
        if first == 1:
            inserts.append(row)
            continue
        result = await conn.execute(
            update(resources)
            .where(
                and_(
                    resources.c.resource_type == rtype,
                    resources.c.id == rid,
                    resources.c.version_id == first - 1,
                )
            )
            .values(**row)
        )
        if result.rowcount != 1:
            raise ConcurrentWrite(rtype)
    await conn.execute(resource_history.insert(), history_rows)
    if inserts:
        await conn.execute(resources.insert(), inserts)
    await conn.execute(outbox.insert(), outbox_rows)


async def move_recorded(conn: AsyncConnection, recorded: Mapping[Key, str]) -> None:
    """Set ``recorded`` on current rows whose content the source sent again, later (no new version).
    Call after ``write_versions``: a row written in the same batch gets the later time too."""
    if not recorded:
        return
    await conn.execute(
        update(resources)
        .where(resources.c.resource_type == bindparam("b_type"), resources.c.id == bindparam("b_id"))
        .values(recorded=bindparam("b_recorded")),
        [{"b_type": t, "b_id": i, "b_recorded": when} for (t, i), when in recorded.items()],
    )


class ConcurrentWrite(Exception):
    """Another writer changed the resource since it was read; retry the batch."""


def _subject_id(content: dict[str, Any]) -> str | None:
    ref = content.get("subject", {}).get("reference") if isinstance(content.get("subject"), dict) else None
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return ref.removeprefix("Patient/")
    return None


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def read_current(conn: AsyncConnection, resource_type: str, rid: str) -> bytes | None:
    row = await conn.execute(
        select(resources.c.content).where(resources.c.resource_type == resource_type, resources.c.id == rid)
    )
    content = row.scalar_one_or_none()
    return None if content is None else content.encode()


async def read_for_person(conn: AsyncConnection, nhs_number: str) -> list[tuple[str, str, bytes]]:
    """Every current resource of one person: (type, id, JSON bytes), Patient first."""
    rows = await conn.execute(
        select(resources.c.resource_type, resources.c.id, resources.c.content)
        .where(resources.c.nhs_number == nhs_number)
        .order_by(resources.c.resource_type != "Patient", resources.c.resource_type, resources.c.id)
    )
    return [(t, i, c.encode()) for t, i, c in rows]


async def stream_type(conn: AsyncConnection, resource_type: str, page: int = 1000) -> AsyncIterator[bytes]:
    """Every current resource of a type, in id order, a page at a time (keyset pagination)."""
    last = ""
    while True:
        rows = (
            await conn.execute(
                select(resources.c.id, resources.c.content)
                .where(resources.c.resource_type == resource_type, resources.c.id > last)
                .order_by(resources.c.id)
                .limit(page)
            )
        ).all()
        if not rows:
            return
        for rid, content in rows:
            yield content.encode()
            last = rid


async def stream_type_by_person(
    conn: AsyncConnection, resource_type: str, page: int = 1000
) -> AsyncIterator[tuple[str | None, bytes]]:
    """Like ``stream_type``, with each resource's NHS number (for screening by the disclosure function)."""
    last = ""
    while True:
        rows = (
            await conn.execute(
                select(resources.c.id, resources.c.nhs_number, resources.c.content)
                .where(resources.c.resource_type == resource_type, resources.c.id > last)
                .order_by(resources.c.id)
                .limit(page)
            )
        ).all()
        if not rows:
            return
        for rid, number, content in rows:
            yield number, content.encode()
            last = rid


async def count_by_type(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(
        select(resources.c.resource_type, func.count()).group_by(resources.c.resource_type)
    )
    return {t: n for t, n in rows}


async def history(conn: AsyncConnection, resource_type: str, rid: str) -> list[bytes]:
    rows = await conn.execute(
        select(resource_history.c.content)
        .where(tuple_(resource_history.c.resource_type, resource_history.c.id) == (resource_type, rid))
        .order_by(resource_history.c.version_id.desc())
    )
    return [c.encode() for (c,) in rows]
