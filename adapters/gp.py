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
from typing import IO, Any, Final

from adapters.records import AdapterError, Item, RecordError, SourceRecord, as_text

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
        with as_text(stream) as text:
            yield from self._rows(csv.reader(text))

    def _rows(self, reader: Any) -> Iterator[Item]:
        try:
            header = next(reader)
        except StopIteration:
            raise AdapterError("GP extract is empty: no header row") from None
        except csv.Error as exc:
            raise AdapterError(f"GP extract header cannot be read: {exc}") from exc
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = REQUIRED_COLUMNS - set(header)
        if missing:
            raise AdapterError(f"GP extract lacks columns: {', '.join(sorted(missing))}")
        header_line = _line(header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield RecordError(SOURCE, f"line {reader.line_num}", "csv-unreadable", None, str(exc))
                continue
            if not row or not any(cell.strip() for cell in row):
                continue
            yield _record(header, row, f"line {reader.line_num}", header_line + _line(row))

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        header_line, _, row_text = raw.partition("\n")
        header = next(csv.reader([header_line]))
        for row in csv.reader(io.StringIO(row_text)):
            yield _record(header, row, location, raw)


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
    fields = {**cells, "care_plans": plans}
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
