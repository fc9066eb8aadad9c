"""Per-person tables: source contributions to the shared Patient, and demographic conflicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.dialect import upsert
from gateway.store.schema import conflicts, contributions
from mappings.shared_view import Conflict


@dataclass(frozen=True, slots=True)
class StoredContribution:
    source: str
    local_id: str
    nhs_number: str
    source_ods: str | None
    opt_out_code: str | None
    recorded: str
    content_hash: str
    content: dict[str, Any]


async def load_contributions(conn: AsyncConnection, nhs_numbers: Iterable[str]) -> list[StoredContribution]:
    numbers = sorted(set(nhs_numbers))
    out: list[StoredContribution] = []
    for start in range(0, len(numbers), 500):
        rows = await conn.execute(
            select(contributions).where(contributions.c.nhs_number.in_(numbers[start : start + 500]))
        )
        for r in rows.mappings():
            out.append(
                StoredContribution(
                    r["source"],
                    r["local_id"],
                    r["nhs_number"],
                    r["source_ods"],
                    r["opt_out_code"],
                    r["recorded"],
                    r["content_hash"],
                    orjson.loads(r["content"]),
                )
            )
    return out


async def save_contributions(conn: AsyncConnection, rows: Sequence[StoredContribution]) -> None:
    if not rows:
        return
    values = [
        {
            "source": c.source,
            "local_id": c.local_id,
            "nhs_number": c.nhs_number,
            "source_ods": c.source_ods,
            "opt_out_code": c.opt_out_code,
            "recorded": c.recorded,
            "content_hash": c.content_hash,
            "content": orjson.dumps(c.content).decode(),
        }
        for c in rows
    ]
    await conn.execute(
        upsert(
            conn,
            contributions,
            ["source", "local_id", "nhs_number"],
            ["source_ods", "opt_out_code", "recorded", "content_hash", "content"],
        ),
        values,
    )


async def retire_contribution(
    conn: AsyncConnection,
    source: str,
    local_id: str,
    *,
    source_ods: str | None = None,
    nhs_number: str | None = None,
) -> list[str]:
    """Remove a source's contribution under a local id (an HL7 merge retires the old one): only the
    one sent by ``source_ods`` (or by no named sender) when it is given, only the one for
    ``nhs_number`` when that is given.

    Returns the NHS numbers whose shared Patient must be rebuilt.
    """
    where = and_(contributions.c.source == source, contributions.c.local_id == local_id)
    if source_ods:
        where = and_(
            where, or_(contributions.c.source_ods == source_ods, contributions.c.source_ods.is_(None))
        )
    if nhs_number:
        where = and_(where, contributions.c.nhs_number == nhs_number)
    numbers = [n for (n,) in await conn.execute(select(contributions.c.nhs_number).where(where))]
    await conn.execute(delete(contributions).where(where))
    return numbers


async def set_conflicts(
    conn: AsyncConnection, found: Mapping[str, Sequence[Conflict]], when: datetime
) -> None:
    """Make the stored conflicts of each person in ``found`` exactly what it lists."""
    numbers = sorted(found)
    for start in range(0, len(numbers), 500):
        await conn.execute(delete(conflicts).where(conflicts.c.nhs_number.in_(numbers[start : start + 500])))
    rows = [
        {
            "nhs_number": number,
            "element": c.element,
            "sources": ",".join(c.sources),
            "distinct_values": c.distinct_values,
            "detected_at": when,
        }
        for number in numbers
        for c in found[number]
    ]
    if rows:
        await conn.execute(conflicts.insert(), rows)
