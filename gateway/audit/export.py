"""Exporting the log: the entries matching a filter, streamed in ``seq`` order, as NDJSON or CSV.

Reading pages through the store with ``stream_entries`` (keyset paging), and
each page is written before the next is read, so memory stays flat for any
log size. Exporting only reads: it appends nothing to the log.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import IO, Final

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.auditevent import CSV_HEADER, audit_event, csv_row
from consent.chain import StoredEntry
from gateway.store.audit import entries_query, stream_entries
from gateway.store.schema import audit_log

CHUNK: Final = 5000


def parse_when(value: str) -> date | datetime:
    """An ISO date (``2024-05-01``) or date-time; a date-time without an offset is UTC."""
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("expected an ISO date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SS)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _text(when: datetime) -> str:
    """``when`` in the log's format (``consent.chain.timestamp``), its year zero-padded as ISO pads it."""
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range") from None
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def since_bound(value: str) -> str:
    """The earliest ``at`` an entry may have: a date means the start of that day (UTC)."""
    when = parse_when(value)
    if not isinstance(when, datetime):
        when = datetime.combine(when, time.min, UTC)
    return _text(when)


def until_bound(value: str) -> str:
    """The latest ``at`` an entry may have: a date means the end of that day (UTC), inclusive."""
    when = parse_when(value)
    if not isinstance(when, datetime):
        # The log keeps microseconds, so the day's last microsecond is the whole day.
        when = datetime.combine(when, time.max, UTC)
    return _text(when)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries to export; ``None`` matches all. ``nhs_number`` must already be normalised.

    ``since`` and ``until`` are ISO dates or date-times, both inclusive (a date-only ``until``
    includes the whole day); the log's ``at`` is UTC text that sorts as time.
    """

    nhs_number: str | None = None
    org_ods: str | None = None
    since: str | None = None
    until: str | None = None
    decision: str | None = None
    kind: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses; raises ValueError for a date that is not ISO 8601."""
        c = audit_log.c
        found: list[ColumnElement[bool]] = []
        if self.nhs_number is not None:
            found.append(c.nhs_number == self.nhs_number)
        if self.org_ods is not None:
            found.append(c.org_ods == self.org_ods)
        if self.since is not None:
            found.append(c.at >= since_bound(self.since))
        if self.until is not None:
            found.append(c.at <= until_bound(self.until))
        if self.decision is not None:
            found.append(c.decision == self.decision)
        if self.kind is not None:
            found.append(c.kind == self.kind)
        return found


async def matching(
    conn: AsyncConnection, where: AuditFilter, chunk: int = CHUNK
) -> AsyncIterator[list[StoredEntry]]:
    """The entries ``where`` matches, in ``seq`` order, a page at a time."""
    query = entries_query().where(*where.conditions())
    async for page in stream_entries(conn, query, chunk):
        yield page


def ndjson_lines(page: list[StoredEntry], gateway_ods: str) -> bytes:
    return b"".join(
        orjson.dumps(audit_event(s.seq, s.entry, s.entry_hash, gateway_ods)) + b"\n" for s in page
    )


def csv_lines(page: list[StoredEntry]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(csv_row(s.seq, s.entry, s.entry_hash) for s in page)
    return buffer.getvalue().encode()


def csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(CSV_HEADER)
    return buffer.getvalue().encode()


async def _write(
    pages: AsyncIterator[list[StoredEntry]], out: IO[bytes], render: Callable[[list[StoredEntry]], bytes]
) -> int:
    written = 0
    async for page in pages:
        out.write(render(page))
        written += len(page)
    return written


async def write_ndjson(pages: AsyncIterator[list[StoredEntry]], out: IO[bytes], gateway_ods: str) -> int:
    """One AuditEvent (JSON) a line; returns the number of entries written."""
    return await _write(pages, out, lambda page: ndjson_lines(page, gateway_ods))


async def write_csv(pages: AsyncIterator[list[StoredEntry]], out: IO[bytes]) -> int:
    """A header row, then one row an entry (RFC 4180, UTF-8); returns the number of entries written."""
    out.write(csv_header())
    return await _write(pages, out, csv_lines)
