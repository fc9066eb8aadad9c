"""GP practice scheduled extract: CSV, one row per care plan item.

Demographics repeat on every row of a person (as GP system extracts do); a row
with an empty ``plan_id`` carries demographics only. ``activities`` packs the
plan's activities as ``code|status|date`` triples separated by ``;``. See
docs/sources/gp.md for every column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import IO, Final

from adapters.records import AdapterError, Item, RecordError, SourceRecord, as_text, ods_code

SOURCE: Final = "gp"
COLUMNS: Final = (
    "practice_ods",
    "gp_patient_id",
    "nhs_number",
    "nhs_number_status",
    "title",
    "family_name",
    "given_names",
    "date_of_birth",
    "sex",
    "address_line_1",
    "address_line_2",
    "town",
    "postcode",
    "phone",
    "opt_out_code",
    "plan_id",
    "plan_type",
    "plan_title",
    "plan_status",
    "plan_start",
    "plan_end",
    "activities",
    "recorded_at",
)
REQUIRED_COLUMNS: Final = frozenset({"practice_ods", "gp_patient_id", "nhs_number", "plan_id"})


class GpAdapter:
    source = SOURCE

    def read(self, stream: IO[str] | IO[bytes]) -> Iterator[Item]:
        with as_text(stream, legacy=True) as text:  # an old export's Windows-1252 row reads as sent
            lines = iter(text)
            header = _header(next(lines, ""))
            yield from _items(header, lines, first_line=2)

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        header_text, _, record_text = raw.partition("\n")
        for item in _items(_header(header_text), iter(io.StringIO(record_text, newline="")), first_line=0):
            yield replace(item, location=location)


def _header(text: str) -> list[str]:
    if not text.strip():
        raise AdapterError("GP extract is empty: no header row")
    parsed = _parse(text)
    if not isinstance(parsed, list):
        raise AdapterError("GP extract header cannot be read")
    header = [h.strip().lstrip("\ufeff") for h in parsed]
    twice = sorted({h for h in header if h and header.count(h) > 1})
    if twice:  # which of two nhs_number columns is the person? The file cannot say
        raise AdapterError(f"GP extract header names a column twice: {', '.join(twice)}")
    missing = REQUIRED_COLUMNS - set(header)
    if missing:
        raise AdapterError(f"GP extract lacks columns: {', '.join(sorted(missing))}")
    return header


def _items(header: list[str], lines: Iterator[str], first_line: int) -> Iterator[Item]:
    """Records after the header; ``raw`` is the header plus the record's text as received."""
    header_line = _line(header)
    for number, record_text, row in _records(lines, first_line):
        location = f"line {number}"
        if isinstance(row, str):
            reason = "csv-unterminated-quote" if row == _UNCLOSED else "csv-unreadable"
            yield RecordError(SOURCE, location, reason, None, row, header_line + record_text)
        elif any(cell.strip() for cell in row):
            yield _record(header, row, location, header_line + record_text)


#: A record may span lines inside quotes; past this many, its opening quote is taken as never closed.
MAX_LINES_PER_RECORD: Final = 20


def _records(lines: Iterator[str], first_line: int) -> Iterator[tuple[int, str, list[str] | str]]:
    """(first line number, text as received, cells or the reason it cannot be read) per record.

    A record continues onto the next line only while a quoted field is open, for at most
    MAX_LINES_PER_RECORD lines. A line whose quote never closes (or whose continuation
    would swallow other records) is given back alone, and the lines after it are read
    afresh: one bad quote costs one row, never the rows after it.
    """
    pending: list[str] = []
    number = first_line
    source = iter(lines)
    while True:
        line = pending.pop(0) if pending else next(source, None)
        if line is None:
            return
        taken = [line]
        cells = _parse(line)
        while cells is _OPEN and len(taken) < MAX_LINES_PER_RECORD:
            more = pending.pop(0) if pending else next(source, None)
            if more is None:
                break
            taken.append(more)
            cells = _parse("".join(taken))
        if isinstance(cells, list):
            yield number, "".join(taken), cells
            number += len(taken)
            continue
        pending = taken[1:] + pending
        alone = _parse(line)
        yield number, line, alone if isinstance(alone, str) else _UNCLOSED
        number += 1


class _Open:
    """A quoted field is still open at the end of the text."""


_OPEN: Final = _Open()
_UNCLOSED: Final = "a quoted field never closes"


def _parse(text: str) -> list[str] | _Open | str:
    """The cells of exactly one CSV record; _OPEN if a quote is still open; else why not."""
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as exc:
        return _OPEN if "unexpected end of data" in str(exc) else f"CSV cannot be read: {exc}"
    if len(rows) > 1:
        return "more than one record on the line"
    return rows[0] if rows else []


def _line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _record(header: list[str], row: list[str], location: str, raw: str) -> Item:
    if len(row) != len(header):
        reason = "truncated-row" if len(row) < len(header) else "extra-columns"
        return RecordError(
            SOURCE, location, reason, None, f"{len(row)} columns, header has {len(header)}", raw
        )
    cells = {name: value.strip() for name, value in zip(header, row, strict=True)}
    local_id = cells.get("gp_patient_id", "")
    if not local_id:
        return RecordError(SOURCE, location, "local-id-missing", "gp_patient_id", "no GP patient id", raw)
    plans = []
    if cells.get("plan_id"):
        plans.append(
            {
                "plan_id": cells["plan_id"],
                "plan_type": cells.get("plan_type"),
                "plan_title": cells.get("plan_title"),
                "plan_status": cells.get("plan_status"),
                "plan_start": cells.get("plan_start"),
                "plan_end": cells.get("plan_end"),
                "recorded_at": cells.get("recorded_at"),
                "activities": _activities(cells.get("activities", "")),
            }
        )
    # The practice's ODS code keys its plans (their identifier system): as ODS writes it.
    fields = {**cells, "practice_ods": ods_code(cells["practice_ods"]), "care_plans": plans}
    return SourceRecord(SOURCE, location, local_id, fields, raw)


def _activities(packed: str) -> list[dict[str, str]]:
    out = []
    for item in packed.split(";"):
        if not item.strip():
            continue
        code, _, rest = item.partition("|")
        status, _, when = rest.partition("|")
        out.append({"code": code.strip(), "status": status.strip(), "date": when.strip()})
    return out
