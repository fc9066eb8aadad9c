"""The GP extract adapter: header checks, row errors with locations, CSV quoting, replay and streaming."""

from __future__ import annotations

import csv
import gc
import io
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.gp import COLUMNS, REQUIRED_COLUMNS, GpAdapter
from adapters.records import AdapterError, RecordError, SourceRecord

HEADER = ",".join(COLUMNS) + "\n"


def line(**cells: str) -> str:
    """One CSV data line in the extract's column order (practice, patient id and NHS number filled in)."""
    values = dict.fromkeys(COLUMNS, "")
    values.update(practice_ods="Y90001", gp_patient_id="GP1", nhs_number="9990000018")
    values.update(cells)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([values[c] for c in COLUMNS])
    return out.getvalue()


def read(text: str | bytes) -> list[SourceRecord | RecordError]:
    stream: Any = io.BytesIO(text) if isinstance(text, bytes) else io.StringIO(text, newline="")
    return list(GpAdapter().read(stream))


def records(text: str | bytes) -> list[SourceRecord]:
    items = read(text)
    assert all(isinstance(i, SourceRecord) for i in items), items
    return [i for i in items if isinstance(i, SourceRecord)]


def test_a_row_becomes_a_record_with_stripped_fields() -> None:
    [record] = records(HEADER + line(family_name="  Smith ", gp_patient_id=" GP7 "))
    assert record.source == "gp"
    assert record.location == "line 2"
    assert record.local_id == "GP7"
    assert record.fields["family_name"] == "Smith"
    assert record.fields["nhs_number"] == "9990000018"
    assert set(record.fields) == {*COLUMNS, "care_plans"}


# Header ------------------------------------------------------------------------------------------


def test_a_utf8_bom_is_dropped_from_bytes_and_from_text() -> None:
    assert records(b"\xef\xbb\xbf" + (HEADER + line()).encode())[0].fields["practice_ods"] == "Y90001"
    assert records("\ufeff" + HEADER + line())[0].fields["practice_ods"] == "Y90001"


def test_header_cells_are_trimmed_and_order_is_free() -> None:
    columns = list(reversed(COLUMNS))
    header = ",".join(f" {c} " for c in columns) + "\n"
    row = ",".join(
        "Y90002" if c == "practice_ods" else ("GP9" if c == "gp_patient_id" else "") for c in columns
    )
    [record] = records(header + row + "\n")
    assert record.fields["practice_ods"] == "Y90002"
    assert record.local_id == "GP9"


def test_only_the_required_columns_are_needed() -> None:
    header = ",".join(sorted(REQUIRED_COLUMNS)) + "\n"
    values = {"gp_patient_id": "GP1", "nhs_number": "9990000018", "plan_id": "", "practice_ods": "Y90001"}
    [record] = records(header + ",".join(values[c] for c in sorted(REQUIRED_COLUMNS)) + "\n")
    assert record.fields["care_plans"] == []


@pytest.mark.parametrize("missing", sorted(REQUIRED_COLUMNS))
def test_a_missing_required_column_is_an_adapter_error(missing: str) -> None:
    header = ",".join(c for c in COLUMNS if c != missing) + "\n"
    with pytest.raises(AdapterError, match=missing) as caught:
        read(header)
    assert "9990000018" not in str(caught.value)


@pytest.mark.parametrize("text", ["", b"", b"\xef\xbb\xbf"])
def test_an_empty_file_is_an_adapter_error(text: str | bytes) -> None:
    with pytest.raises(AdapterError, match="empty"):
        read(text)


def test_a_header_only_file_has_no_records() -> None:
    assert read(HEADER) == []


def test_blank_lines_are_skipped() -> None:
    items = records(HEADER + "\n" + line(gp_patient_id="GP1") + ",,,\n" + "\n" + line(gp_patient_id="GP2"))
    assert [(r.local_id, r.location) for r in items] == [("GP1", "line 3"), ("GP2", "line 6")]


# Row errors --------------------------------------------------------------------------------------


def test_a_truncated_row_is_a_record_error_and_the_run_goes_on() -> None:
    truncated = "Y90001,GP2,99900000\n"
    items = read(HEADER + line() + truncated + line(gp_patient_id="GP3"))
    assert [type(i).__name__ for i in items] == ["SourceRecord", "RecordError", "SourceRecord"]
    error = items[1]
    assert isinstance(error, RecordError)
    assert (error.source, error.location, error.reason) == ("gp", "line 3", "truncated-row")
    assert error.raw == HEADER + truncated  # replayable: header plus the row as read
    assert "99900000" not in error.detail
    assert items[2].location == "line 4"


def test_extra_columns_are_a_record_error() -> None:
    row = line().rstrip("\n") + ",surplus\n"
    [error] = read(HEADER + row)
    assert isinstance(error, RecordError)
    assert error.reason == "extra-columns"
    assert error.location == "line 2"
    assert "surplus" not in error.detail


def test_a_row_without_a_gp_patient_id_is_a_record_error() -> None:
    [error] = read(HEADER + line(gp_patient_id="  "))
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("local-id-missing", "gp_patient_id")


# Quoting -----------------------------------------------------------------------------------------


def test_quoted_fields_keep_commas_quotes_and_newlines() -> None:
    text = HEADER + line(address_line_1="Flat 2, Rose Court", family_name='O"Brien', title="Line\nbreak")
    [record] = records(text)
    assert record.fields["address_line_1"] == "Flat 2, Rose Court"
    assert record.fields["family_name"] == 'O"Brien'
    assert record.fields["title"] == "Line\nbreak"


def test_a_multiline_row_does_not_shift_the_lines_after_it() -> None:
    items = records(HEADER + line(address_line_1="a\nb\nc") + line(gp_patient_id="GP2"))
    assert items[1].local_id == "GP2"
    assert items[1].location == "line 5"


def test_crlf_line_endings() -> None:
    text = (HEADER + line(address_line_1="x\ny") + line(gp_patient_id="GP2")).replace("\n", "\r\n")
    items = records(text.encode())
    assert [r.local_id for r in items] == ["GP1", "GP2"]
    assert items[0].fields["address_line_1"] == "x\r\ny"
    assert items[1].fields["activities"] == ""


# Demographics and plans --------------------------------------------------------------------------


def test_a_row_without_plan_id_carries_demographics_only() -> None:
    [record] = records(
        HEADER + line(plan_type="LTC-DM", plan_title="ignored", activities="BP|DUE|2024-01-01")
    )
    assert record.fields["care_plans"] == []


def test_a_plan_row_carries_one_plan_with_its_activities() -> None:
    text = HEADER + line(
        plan_id="GP1-CP1",
        plan_type="LTC-DM",
        plan_title="Diabetes",
        plan_status="ACTIVE",
        plan_start="2024-01-01",
        plan_end="",
        recorded_at="2024-01-01T09:00:00+00:00",
        activities=" HBA1C|COMPLETED|2024-02-01 ; FOOT|SCHEDULED| ;;MEDREV; BP||2024-03-01",
    )
    [record] = records(text)
    assert record.fields["care_plans"] == [
        {
            "plan_id": "GP1-CP1",
            "plan_type": "LTC-DM",
            "plan_title": "Diabetes",
            "plan_status": "ACTIVE",
            "plan_start": "2024-01-01",
            "plan_end": "",
            "recorded_at": "2024-01-01T09:00:00+00:00",
            "activities": [
                {"code": "HBA1C", "status": "COMPLETED", "date": "2024-02-01"},
                {"code": "FOOT", "status": "SCHEDULED", "date": ""},
                {"code": "MEDREV", "status": "", "date": ""},
                {"code": "BP", "status": "", "date": "2024-03-01"},
            ],
        }
    ]


def test_no_activities_is_an_empty_list() -> None:
    [record] = records(HEADER + line(plan_id="P1"))
    assert record.fields["care_plans"][0]["activities"] == []


# Streams and replay ------------------------------------------------------------------------------


def test_binary_and_text_streams_read_the_same() -> None:
    text = HEADER + line(family_name="Zoë Ødegård", address_line_1="a,\nb") + line(gp_patient_id="GP2")
    assert read(text.encode("utf-8")) == read(text)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_only_cr_and_lf_end_a_line_in_a_binary_stream(separator: str) -> None:
    # str.splitlines() also breaks on these; a CSV line does not (pasted text carries them).
    text = HEADER + line(family_name=f"Smith{separator}Jones") + line(gp_patient_id="GP2")
    items = read(text.encode("utf-8"))
    assert items == read(text)
    assert [(r.location, r.fields["family_name"]) for r in records(text.encode("utf-8"))] == [
        ("line 2", f"Smith{separator}Jones"),
        ("line 3", ""),
    ]


def test_a_binary_file_is_read_and_left_to_its_owner(tmp_path: Any) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + line() + line(gp_patient_id="GP2")).encode())
    with path.open("rb") as binary:
        items = list(GpAdapter().read(binary))
        gc.collect()  # no ResourceWarning from a wrapper, and the file is still ours
        assert not binary.closed
    assert [r.local_id for r in records(path.read_bytes())] == [i.local_id for i in items] == ["GP1", "GP2"]


def test_a_text_file_opened_without_newline_translation(tmp_path: Any) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes((HEADER + line(address_line_1="a\nb")).replace("\n", "\r\n").encode())
    with path.open(encoding="utf-8-sig", newline="") as text:
        from_text = list(GpAdapter().read(text))
    assert from_text == read(path.read_bytes())
    assert isinstance(from_text[0], SourceRecord)
    assert from_text[0].fields["address_line_1"] == "a\r\nb"


def test_the_callers_binary_stream_is_left_open() -> None:
    stream = io.BytesIO((HEADER + line() + line(gp_patient_id="GP2")).encode())
    items = GpAdapter().read(stream)
    next(items)
    del items  # the caller stops early, as a caller may
    gc.collect()
    assert not stream.closed
    stream.seek(0)  # e.g. to checksum the upload afterwards


@pytest.mark.parametrize(
    "row",
    [
        line(),
        line(address_line_1="Flat 2,\nRose Court", family_name='O"Brien'),
        line(plan_id="P1", activities="BP|DUE|2024-01-01;FOOT|DONE|2023-01-01"),
        "Y90001,GP2,99900000\n",
        line().rstrip("\n") + ",extra\n",
        line(gp_patient_id=""),
    ],
)
def test_reread_reproduces_the_item(row: str) -> None:
    [item] = read("\ufeff" + HEADER + row)
    [again] = GpAdapter().reread(item.raw, item.location)
    assert again == item


class CountingReader(io.RawIOBase):
    """A binary stream produced lazily from lines, counting the bytes handed out."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._pending = b""
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._lines, None)
            if chunk is None:
                return 0
            self._pending = chunk.encode()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.served += n
        return n


class CountingText(io.StringIO):
    """A text stream over lines made on demand; counts the lines it has given out."""

    def __init__(self, lines: Iterator[str]) -> None:
        super().__init__()
        self._lines = lines
        self.served = 0

    def __next__(self) -> str:  # type: ignore[override]  # typeshed types io.IOBase lines as bytes
        chunk = next(self._lines)
        self.served += 1
        return chunk

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return next(self, "")


def extract(rows: int) -> Iterator[str]:
    yield HEADER
    for n in range(rows):
        yield line(gp_patient_id=f"GP{n}", plan_id=f"P{n}", activities="BP|DUE|2024-01-01")


def test_a_binary_stream_is_read_lazily() -> None:
    stream = CountingReader(extract(100_000))
    total = sum(len(chunk.encode()) for chunk in extract(100_000))
    items = GpAdapter().read(io.BufferedReader(stream, buffer_size=8192))
    first = next(items)
    assert isinstance(first, SourceRecord)
    assert first.local_id == "GP0"
    assert stream.served < 100_000 < total  # a few buffers, not the whole extract
    second = next(items)
    assert second.local_id == "GP1"


def test_a_text_stream_is_read_lazily() -> None:
    stream = CountingText(extract(100_000))
    items = GpAdapter().read(stream)
    assert next(items).local_id == "GP0"
    assert stream.served == 2  # the header and the first row
    assert next(items).local_id == "GP1"
    assert stream.served == 3


def test_an_endless_stream_still_yields() -> None:
    def endless() -> Iterator[str]:
        yield HEADER
        n = 0
        while True:
            yield line(gp_patient_id=f"GP{n}")
            n += 1

    items = GpAdapter().read(CountingText(endless()))
    assert [next(items).local_id for _ in range(3)] == ["GP0", "GP1", "GP2"]


def test_an_unterminated_quote_costs_its_own_row_only() -> None:
    broken = 'Y90001,GP2,"9990000018\n'
    text = (
        HEADER
        + line(gp_patient_id="GP1")
        + broken
        + "".join(line(gp_patient_id=f"GP{i}") for i in range(3, 30))
    )
    items = read(text)
    assert [i.local_id for i in items if isinstance(i, SourceRecord)] == ["GP1"] + [
        f"GP{i}" for i in range(3, 30)
    ]
    errors = [i for i in items if isinstance(i, RecordError)]
    assert [(e.location, e.reason) for e in errors] == [("line 3", "csv-unterminated-quote")]
    assert errors[0].raw == HEADER + broken  # kept as received, for replay
    replayed = list(GpAdapter().reread(errors[0].raw, errors[0].location))
    assert [(r.location, getattr(r, "reason", None)) for r in replayed] == [
        ("line 3", "csv-unterminated-quote")
    ]


def test_a_quoted_newline_record_is_located_at_its_first_line() -> None:
    text = HEADER + line(gp_patient_id="GP1", family_name="Two\nLines") + line(gp_patient_id="GP2")
    got = records(text)
    assert [(r.location, r.fields["family_name"]) for r in got] == [("line 2", "Two\nLines"), ("line 4", "")]


def test_stray_quotes_inside_unquoted_fields_are_data() -> None:
    text = HEADER + line(gp_patient_id="GP1").replace(",,", ',O"Brien,', 1) + line(gp_patient_id="GP2")
    text += line(gp_patient_id="GP3").replace(",,", ',O"Connor,', 1)
    assert [r.local_id for r in records(text)] == ["GP1", "GP2", "GP3"]


def test_a_windows_1252_row_among_utf8_rows_reads_as_sent() -> None:
    utf8 = line(family_name="Zoë").encode()
    legacy = line(gp_patient_id="GP2", family_name="O\u2019Neill", given_names="Zoë").encode("cp1252")
    found = records(HEADER.encode() + utf8 + legacy + utf8)
    assert [r.fields["family_name"] for r in found] == ["Zoë", "O\u2019Neill", "Zoë"]
    assert found[1].fields["given_names"] == "Zoë"


def test_a_utf16_extract_is_refused_whole() -> None:
    data = (HEADER + line()).encode("utf-16")
    with pytest.raises(AdapterError, match="UTF-16"):
        read(data)


def test_a_header_naming_a_column_twice_is_refused() -> None:
    header = ",".join([*COLUMNS, "nhs_number"]) + "\n"
    with pytest.raises(AdapterError, match="twice: nhs_number"):
        read(header + line().rstrip("\n") + ",9990000026\n")


def test_the_practice_ods_code_is_read_as_ods_writes_it() -> None:
    [record] = records(HEADER + line(practice_ods="y90001"))
    assert record.fields["practice_ods"] == "Y90001"
