"""The community EPR adapter: JSON Lines in, SourceRecords or RecordErrors out, one line at a time."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.community import CommunityAdapter
from adapters.records import AdapterError, RecordError, SourceRecord
from gateway.synth.community import write_community
from gateway.synth.defects import DefectPlan
from gateway.synth.population import nhs_numbers, population

_ids = itertools.count(1)
_numbers = nhs_numbers()


def a_line(**overrides: Any) -> dict[str, Any]:
    """A valid export line with a fresh patient id and NHS number."""
    n = next(_ids)
    line: dict[str, Any] = {
        "provider_ods": "R9Z02",
        "patient_id": f"CM{n:07d}",
        "nhs_number": next(_numbers),
        "nhs_number_status": "01",
        "family_name": "Okafor",
        "given_names": "Ngozi",
        "date_of_birth": "1944-05-17",
        "sex": "F",
        "plan": {
            "plan_id": f"CP{n:08d}",
            "plan_type": "FRAILTY",
            "status": "ACTIVE",
            "goals": [{"goal_id": "G1", "description": "Stay at home safely", "status": "ACTIVE"}],
        },
    }
    line.update(overrides)
    return line


def text(*lines: dict[str, Any] | str) -> str:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)


def read(data: str | bytes) -> list[SourceRecord | RecordError]:
    stream: io.IOBase = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    return list(CommunityAdapter().read(stream))


def test_each_line_is_one_record_with_the_plan_as_its_care_plans() -> None:
    first, second = a_line(), a_line()
    items = read(text(first, second))
    assert [type(i) for i in items] == [SourceRecord, SourceRecord]
    record = items[0]
    assert isinstance(record, SourceRecord)
    assert (record.source, record.location, record.local_id) == ("community", "line 1", first["patient_id"])
    assert record.fields["care_plans"] == [first["plan"]]
    assert record.fields["source_ods"] == "R9Z02"
    assert record.fields["nhs_number"] == first["nhs_number"]
    assert items[1].location == "line 2"


def test_binary_stream_with_bom_and_crlf_reads_like_text() -> None:
    line = a_line()
    data = b"\xef\xbb\xbf" + json.dumps(line).encode() + b"\r\n" + json.dumps(a_line()).encode() + b"\r\n"
    items = read(data)
    assert all(isinstance(i, SourceRecord) for i in items)
    assert items[0].local_id == line["patient_id"]
    assert isinstance(items[0], SourceRecord) and items[0].raw == json.dumps(line)


def test_blank_lines_are_skipped_but_keep_line_numbers_true() -> None:
    items = read(text(a_line()) + "\n   \n" + text(a_line()))
    assert [i.location for i in items] == ["line 1", "line 4"]


def test_a_cut_off_line_is_quarantined_and_the_next_line_still_comes_through() -> None:
    whole = json.dumps(a_line())
    after = a_line()
    items = read(text(a_line(), whole[:57], after))
    assert isinstance(items[1], RecordError)
    assert (items[1].reason, items[1].location, items[1].raw) == ("json-truncated", "line 2", whole[:57])
    assert isinstance(items[2], SourceRecord) and items[2].local_id == after["patient_id"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"patient_id": "CM1",, "plan": {}}', "json-unreadable"),
        ('{"patient_id": "CM1"} trailing', "json-unreadable"),
        ("[1, 2, 3]", "json-not-an-object"),
        ('{"patient_id": "CM1", "plan": {"status": "active", "status": "revoked"}}', "json-duplicate-name"),
        ('"just a string"', "json-not-an-object"),
    ],
)
def test_lines_that_are_not_json_objects_are_quarantined(line: str, reason: str) -> None:
    items = read(text(line, a_line()))
    assert isinstance(items[0], RecordError) and items[0].reason == reason
    assert isinstance(items[1], SourceRecord)


@pytest.mark.parametrize("local_id", [None, "", "   "])
def test_a_line_without_patient_id_is_quarantined(local_id: str | None) -> None:
    (item,) = read(text(a_line(patient_id=local_id)))
    assert isinstance(item, RecordError)
    assert (item.reason, item.field) == ("local-id-missing", "patient_id")


def test_a_numeric_patient_id_becomes_text() -> None:
    (item,) = read(text(a_line(patient_id=123456)))
    assert isinstance(item, SourceRecord) and item.local_id == "123456"


@pytest.mark.parametrize("missing", ["provider_ods", "plan"])
def test_required_fields_missing(missing: str) -> None:
    line = a_line()
    del line[missing]
    (item,) = read(text(line))
    assert isinstance(item, RecordError) and (item.reason, item.field) == ("field-missing", missing)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"plan": ["not", "an", "object"]}, "plan"),
        ({"address": "12 High Street"}, "address"),
        ({"date_of_birth": 19440517}, "date_of_birth"),
        ({"patient_id": True}, "patient_id"),
        ({"plan": {"plan_id": "CP1", "goals": {"G1": "x"}}}, "plan.goals"),
        ({"plan": {"plan_id": "CP1", "goals": ["Stay at home"]}}, "plan.goals[0]"),
        ({"plan": {"plan_id": "CP1", "activities": [None]}}, "plan.activities[0]"),
        ({"plan": {"plan_id": "CP1", "care_team": [{"name": ["Ann", "Lee"]}]}}, "plan.care_team[0].name"),
    ],
)
def test_fields_of_the_wrong_json_type_are_named(overrides: dict[str, Any], field: str) -> None:
    (item,) = read(text(a_line(**overrides)))
    assert isinstance(item, RecordError)
    assert (item.reason, item.field) == ("field-wrong-type", field)


def test_a_line_that_is_not_utf8_is_quarantined_and_reading_goes_on() -> None:
    data = json.dumps(a_line()).encode().replace(b"Okafor", b"Ok\xe1for") + b"\n" + text(a_line()).encode()
    items = read(data)
    assert isinstance(items[0], RecordError) and items[0].reason == "not-utf8"
    assert isinstance(items[1], SourceRecord)


def test_a_text_stream_that_cannot_be_decoded_is_an_adapter_error() -> None:
    stream = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\xfd\n"), encoding="utf-8")
    with pytest.raises(AdapterError):
        list(CommunityAdapter().read(stream))


class CountingLines:
    """A line source that counts how many lines were taken from it."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.taken = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.taken += 1
            yield line


def test_read_is_lazy_it_yields_the_first_record_before_the_stream_is_exhausted() -> None:
    source = CountingLines([text(a_line()) for _ in range(1000)])
    items = CommunityAdapter().read(source)
    first = next(items)
    assert isinstance(first, SourceRecord)
    assert source.taken == 1


def test_reread_reproduces_the_record() -> None:
    items = read(text(a_line(), a_line()))
    for item in items:
        assert isinstance(item, SourceRecord)
        assert list(CommunityAdapter().reread(item.raw, item.location)) == [item]


def test_reread_of_a_corrected_line_gives_the_record() -> None:
    line = a_line()
    (broken,) = read(text(json.dumps(line)[:-3]))
    assert isinstance(broken, RecordError) and broken.reason == "json-truncated"
    (fixed,) = CommunityAdapter().reread(json.dumps(line), broken.location)
    assert isinstance(fixed, SourceRecord)
    assert (fixed.location, fixed.local_id) == ("line 1", line["patient_id"])


def test_error_details_carry_no_patient_data() -> None:
    line = a_line(family_name="Zebedee", date_of_birth=19440517)
    whole = json.dumps(a_line(family_name="Zebedee"))
    items = read(text(line, whole[:-2], whole.replace('"Zebedee"', "Zebedee")))
    for item in items:
        assert isinstance(item, RecordError)
        assert "Zebedee" not in item.detail
        assert "999" not in item.detail


def test_a_synthetic_extract_reads_with_exactly_the_defects_it_was_given() -> None:
    out = io.StringIO()
    plan = DefectPlan(rate=0.3, seed=11)
    written = write_community(population(1500, seed=11), out, random.Random(11), plan)
    items = read(out.getvalue())
    tally = plan.report()["community"]
    assert len(items) == written
    errors = [i for i in items if isinstance(i, RecordError)]
    assert [e.reason for e in errors] == ["json-truncated"] * tally["truncated"]
    raws = [i.raw for i in items if isinstance(i, SourceRecord)]
    assert len(raws) - len(set(raws)) == tally["duplicate"]


def test_a_utf16_extract_is_refused_whole() -> None:
    with pytest.raises(AdapterError, match="UTF-16"):
        read(text(a_line()).encode("utf-16"))


def test_a_line_naming_a_member_twice_says_which_and_stays_quarantined_on_replay() -> None:
    line = json.dumps(a_line()).replace('"patient_id": ', '"patient_id": "CM0", "patient_id": ', 1)
    (item,) = read(text(line))
    assert isinstance(item, RecordError) and item.detail == "an object names 'patient_id' twice"
    assert item.raw == line
    (again,) = CommunityAdapter().reread(item.raw, item.location)
    assert isinstance(again, RecordError) and again.reason == "json-duplicate-name"


def test_ods_codes_are_read_as_ods_writes_them() -> None:
    line = a_line(provider_ods=" r9z02", registered_gp_ods="y90003")
    line["plan"]["care_team"] = [
        {"role": "LEAD_PROFESSIONAL", "name": "Joan Ward", "organisation_ods": "r9z02"}
    ]
    [record] = read(text(line))
    assert isinstance(record, SourceRecord)
    assert (record.fields["source_ods"], record.fields["provider_ods"]) == ("R9Z02", "R9Z02")
    assert record.fields["registered_gp_ods"] == "Y90003"
    assert record.fields["care_plans"][0]["care_team"][0]["organisation_ods"] == "R9Z02"
