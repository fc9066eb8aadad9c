"""The opt-out register's table: read a person's facts, record and withdraw opt-outs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import RowMapping, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.model import Authority, Facts, OptOut, OptOutKind
from gateway.store.schema import consents


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything in the register is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def opt_out_from_row(r: Mapping[Any, Any]) -> OptOut:
    recorded_at = _aware(r["recorded_at"])
    assert recorded_at is not None
    return OptOut(
        id=r["id"],
        nhs_number=r["nhs_number"],
        kind=OptOutKind(r["kind"]),
        authority=Authority(r["authority"]),
        recorded_by=r["recorded_by"],
        recorded_by_ods=r["recorded_by_ods"],
        recorded_at=recorded_at,
        source=r["source"],
        withdrawn_at=_aware(r["withdrawn_at"]),
        withdrawn_by=r["withdrawn_by"],
        withdrawal_authority=Authority(r["withdrawal_authority"]) if r["withdrawal_authority"] else None,
        source_ref=r["source_ref"],
    )


async def read_facts(conn: AsyncConnection, nhs_number: str) -> Facts:
    """Everything the register holds for one person, with their epoch (0: never changed)."""
    rows = (await conn.execute(_FACTS, {"nhs_number": nhs_number})).mappings().all()
    return facts_from_rows(nhs_number, rows)


def facts_from_rows(nhs_number: str, rows: Sequence[Mapping[Any, Any]]) -> Facts:
    """A person's facts from their rows of the register (``store.hot_reads`` reads them bare)."""
    return Facts(
        nhs_number,
        tuple(opt_out_from_row(r) for r in rows),
        max((r["change_seq"] for r in rows), default=0),
    )


async def read_facts_many(conn: AsyncConnection, nhs_numbers: Iterable[str]) -> dict[str, Facts]:
    """Facts for many people at once; people the register has never seen get empty facts."""
    numbers = sorted(set(nhs_numbers))
    found: dict[str, list[RowMapping]] = {}
    for start in range(0, len(numbers), 500):
        rows = await conn.execute(
            select(consents).where(consents.c.nhs_number.in_(numbers[start : start + 500]))
        )
        for r in rows.mappings():
            found.setdefault(r["nhs_number"], []).append(r)
    return {n: facts_from_rows(n, found.get(n, [])) for n in numbers}


async def people_with_opt_outs(conn: AsyncConnection) -> dict[str, Facts]:
    """Facts for every person the register holds anything for (a bulk export screens against these)."""
    rows = (await conn.execute(select(consents).order_by(consents.c.nhs_number))).mappings().all()
    grouped: dict[str, list[RowMapping]] = {}
    for r in rows:
        grouped.setdefault(r["nhs_number"], []).append(r)
    return {n: facts_from_rows(n, rs) for n, rs in grouped.items()}


async def find_by_source_ref(conn: AsyncConnection, refs: Iterable[str]) -> dict[str, OptOut]:
    """Per source reference, the opt-out in force from it, else its latest (a ref may have several)."""
    wanted = sorted(set(refs))
    out: dict[str, OptOut] = {}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(
            select(consents)
            .where(consents.c.source_ref.in_(wanted[start : start + 500]))
            .order_by(consents.c.recorded_at, consents.c.change_seq)
        )
        for r in rows.mappings():
            found = opt_out_from_row(r)
            held = out.get(r["source_ref"])
            if held is None or not held.active or found.active:
                out[r["source_ref"]] = found
    return out


# The register's statements are built once: SQLAlchemy caches a statement's compiled form, but
# building one (``.values(...)``, ``==``) on every change cost more than running it (measured).
_INSERT = consents.insert()
_WITHDRAW = (
    update(consents)
    .where(consents.c.id == bindparam("consent_id"))
    .values(
        status="withdrawn",
        withdrawn_at=bindparam("withdrawn_at"),
        withdrawn_by=bindparam("withdrawn_by"),
        withdrawal_authority=bindparam("withdrawal_authority"),
        change_seq=bindparam("change_seq"),
        version_id=bindparam("version_id"),
        content=bindparam("content"),
    )
)
_VERSION = select(consents.c.version_id).where(consents.c.id == bindparam("consent_id"))
_FACTS = select(consents).where(consents.c.nhs_number == bindparam("nhs_number"))


async def insert_opt_out(
    conn: AsyncConnection, opt_out: OptOut, change_seq: int, content: dict[str, Any]
) -> None:
    await conn.execute(
        _INSERT,
        {
            "id": opt_out.id,
            "nhs_number": opt_out.nhs_number,
            "kind": opt_out.kind.value,
            "status": "active" if opt_out.active else "withdrawn",
            "authority": opt_out.authority.value,
            "source": opt_out.source,
            "source_ref": opt_out.source_ref,
            "recorded_by": opt_out.recorded_by,
            "recorded_by_ods": opt_out.recorded_by_ods,
            "recorded_at": opt_out.recorded_at,
            "withdrawn_at": opt_out.withdrawn_at,
            "withdrawn_by": opt_out.withdrawn_by,
            "withdrawal_authority": _authority(opt_out),
            "change_seq": change_seq,
            "version_id": 1,
            "content": orjson.dumps(content).decode(),
        },
    )


def _authority(opt_out: OptOut) -> str | None:
    return opt_out.withdrawal_authority.value if opt_out.withdrawal_authority else None


async def save_withdrawal(
    conn: AsyncConnection, opt_out: OptOut, change_seq: int, version_id: int, content: dict[str, Any]
) -> None:
    await conn.execute(
        _WITHDRAW,
        {
            "consent_id": opt_out.id,
            "withdrawn_at": opt_out.withdrawn_at,
            "withdrawn_by": opt_out.withdrawn_by,
            "withdrawal_authority": _authority(opt_out),
            "change_seq": change_seq,
            "version_id": version_id,
            "content": orjson.dumps(content).decode(),
        },
    )


async def version_of(conn: AsyncConnection, consent_id: str) -> int:
    value = (await conn.execute(_VERSION, {"consent_id": consent_id})).scalar()
    return int(value or 0)


async def consent_resources(conn: AsyncConnection, nhs_number: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(consents.c.content).where(consents.c.nhs_number == nhs_number).order_by(consents.c.recorded_at)
    )
    return [orjson.loads(r[0]) for r in rows]


async def count_active(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(
        select(consents.c.kind, func.count()).where(consents.c.status == "active").group_by(consents.c.kind)
    )
    return {kind: int(n) for kind, n in rows.all()}
