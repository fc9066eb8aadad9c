"""The data-quality report from the store: people by source, conflicts, unknown codes, quarantine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import quarantine
from gateway.store.schema import conflicts, contributions, unknown_codes


@dataclass(frozen=True, slots=True)
class ConflictCount:
    element: str
    sources: list[str]
    people: int


@dataclass(frozen=True, slots=True)
class UnknownCode:
    source: str
    field: str
    detail: str
    occurrences: int


@dataclass(frozen=True, slots=True)
class QuarantineCount:
    source: str
    reason: str
    records: int


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Counts only: no NHS numbers and no conflicting values (they are patient data)."""

    people_by_source: dict[str, int]
    conflicts: list[ConflictCount]
    unknown_codes: list[UnknownCode]
    quarantine_open: list[QuarantineCount]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def quality_report(conn: AsyncConnection) -> QualityReport:
    people = await conn.execute(
        select(contributions.c.source, func.count(func.distinct(contributions.c.nhs_number))).group_by(
            contributions.c.source
        )
    )
    conflict_rows = await conn.execute(
        select(conflicts.c.element, conflicts.c.sources, func.count())
        .group_by(conflicts.c.element, conflicts.c.sources)
        .order_by(conflicts.c.element, conflicts.c.sources)
    )
    codes = await conn.execute(
        select(unknown_codes).order_by(unknown_codes.c.source, unknown_codes.c.occurrences.desc())
    )
    held = await quarantine.counts(conn)
    return QualityReport(
        people_by_source={s: n for s, n in people},
        conflicts=[ConflictCount(e, s.split(","), n) for e, s, n in conflict_rows],
        unknown_codes=[
            UnknownCode(r["source"], r["field"], r["detail"], r["occurrences"]) for r in codes.mappings()
        ],
        quarantine_open=[QuarantineCount(s, r, n) for (s, r), n in sorted(held.items())],
    )
