"""The council social care adapter: one JSON document in, streamed case by case."""

from __future__ import annotations

import io
import itertools
import json
import random
import tracemalloc
from collections.abc import Iterator
from typing import IO, Any, cast

import pytest

from adapters.records import AdapterError, RecordError, SourceRecord
from adapters.social_care import SocialCareAdapter
from gateway.synth.defects import DefectPlan
from gateway.synth.population import nhs_numbers, population
from gateway.synth.social_care import write_social_care

HEADER = {"system": "Test system", "council_ods": "Z9A01", "generated_at": "2026-11-01T02:00:00Z"}
_ids = itertools.count(7000001)
_numbers = nhs_numbers(5000)


def a_case(**overrides: Any) -> dict[str, Any]:
    """A valid case with a fresh person id and NHS number."""
    n = next(_ids)
    case: dict[str, Any] = {
        "person_id": n,
        "person": {
            "nhs_number": next(_numbers),
            "nhs_number_status": "02",
            "forenames": "Arthur",
            "surname": "Hughes",
            "date_of_birth": "1936-02-29",
            "gender": "Male",
        },
        "care_and_support_plans": [
            {
                "plan_id": f"CSP-{n}",
                "plan_type": "CSP",
                "status": "ACTIVE",
                "services": [
                    {"service_type": "HOMECARE", "status": "ACTIVE", "units_per_week": 7.5, "unit": "HOUR"}
                ],
            }
        ],
    }
    case.update(overrides)
    return case


def document(*cases: Any, header: dict[str, Any] | None = None) -> str:
    return json.dumps({"export": header or HEADER, "cases": list(cases)})


def read(data: str | bytes) -> list[SourceRecord | RecordError]:
    stream: IO[bytes] | IO[str] = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    return list(SocialCareAdapter().read(stream))


def test_each_case_is_one_record() -> None:
    first, second = a_case(), a_case()
    items = read(document(first, second))
    assert all(isinstance(i, SourceRecord) for i in items)
    record = items[0]
    assert isinstance(record, SourceRecord)
    assert (record.source, record.location, record.local_id) == (
        "social-care",
        "case 1",
        f"{first['person_id']}@Z9A01",  # qualified by the council: two councils cannot collide
    )
    assert record.fields["care_plans"] == first["care_and_support_plans"]
    assert record.fields["source_ods"] == "Z9A01"
    assert record.fields["person"] == first["person"]
    assert items[1].location == "case 2"


def test_numbers_keep_their_value_and_raw_is_a_one_case_document() -> None:
    case = a_case()
    (record,) = read(document(case))
    assert isinstance(record, SourceRecord)
    assert record.fields["care_plans"][0]["services"][0]["units_per_week"] == 7.5
    assert json.loads(record.raw) == {"export": HEADER, "cases": [case]}


def test_binary_stream_with_bom_reads_like_text() -> None:
    case = a_case()
    items = read(b"\xef\xbb\xbf" + document(case).encode())
    assert [i.local_id for i in items if isinstance(i, SourceRecord)] == [f"{case['person_id']}@Z9A01"]


def test_unknown_top_level_members_are_passed_over() -> None:
    doc = json.dumps(
        {"export": HEADER, "summary": {"counts": [1, 2, {"x": []}]}, "cases": [a_case()], "end": 1}
    )
    assert [type(i) for i in read(doc)] == [SourceRecord]


def test_a_case_that_is_not_an_object_is_quarantined_and_the_next_still_comes_through() -> None:
    items = read(document("not a case", [1, 2], a_case()))
    assert [i.reason for i in items if isinstance(i, RecordError)] == ["json-not-an-object"] * 2
    assert [i.location for i in items] == ["case 1", "case 2", "case 3"]
    assert isinstance(items[2], SourceRecord)


@pytest.mark.parametrize("person_id", [None, "", "  "])
def test_a_case_without_person_id_is_quarantined(person_id: Any) -> None:
    (item,) = read(document(a_case(person_id=person_id)))
    assert isinstance(item, RecordError) and (item.reason, item.field) == ("local-id-missing", "person_id")


@pytest.mark.parametrize("missing", ["person", "care_and_support_plans"])
def test_a_cut_short_case_is_quarantined(missing: str) -> None:
    case = a_case()
    del case[missing]
    items = read(document(case, a_case()))
    assert isinstance(items[0], RecordError) and (items[0].reason, items[0].field) == (
        "field-missing",
        missing,
    )
    assert isinstance(items[1], SourceRecord)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"person": "Arthur Hughes"}, "person"),
        ({"care_and_support_plans": {"plan_id": "CSP-1"}}, "care_and_support_plans"),
        ({"person_id": 7.5}, "person_id"),
        ({"person": {"nhs_number": 9990000018}}, "person.nhs_number"),
        ({"person": {"address": ["1 Mill Lane"]}}, "person.address"),
        (
            {"care_and_support_plans": [{"services": [{"units_per_week": "10"}]}]},
            "care_and_support_plans[0].services[0].units_per_week",
        ),
        ({"care_and_support_plans": [{"needs": ["NUTRITION"]}]}, "care_and_support_plans[0].needs[0]"),
    ],
)
def test_fields_of_the_wrong_json_type_are_named(change: dict[str, Any], field: str) -> None:
    (item,) = read(document(a_case(**change)))
    assert isinstance(item, RecordError) and (item.reason, item.field) == ("field-wrong-type", field)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "this is not JSON",
        "[]",
        json.dumps([{"export": HEADER, "cases": []}]),
        json.dumps({"cases": [], "export": HEADER}),
        json.dumps({"export": {"system": "no ods"}, "cases": []}),
        json.dumps({"export": "header", "cases": []}),
        json.dumps({"export": HEADER}),
        json.dumps({"export": HEADER, "cases": {"1": {}}}),
        json.dumps({"export": HEADER, "cases": []}) + " trailing",
        '{"export": {"council_ods": "Z9A0',
    ],
)
def test_a_document_that_cannot_be_read_as_a_whole_is_an_adapter_error(data: str) -> None:
    with pytest.raises(AdapterError):
        read(data)


def test_an_empty_cases_array_is_no_records() -> None:
    assert read(document()) == []


def collect(data: str) -> tuple[list[SourceRecord | RecordError], AdapterError | None]:
    items: list[SourceRecord | RecordError] = []
    try:
        for item in SocialCareAdapter().read(io.StringIO(data)):
            items.append(item)
    except AdapterError as exc:
        return items, exc
    return items, None


def test_a_document_cut_off_part_way_keeps_the_cases_before_and_names_where_it_broke() -> None:
    whole = document(a_case(), a_case(), a_case())
    items, error = collect(whole[: whole.rindex('"person_id"') + 20])
    assert error is not None
    assert [type(i) for i in items] == [SourceRecord, SourceRecord, RecordError]
    broken = items[-1]
    assert isinstance(broken, RecordError)
    assert (broken.reason, broken.location) == ("json-truncated", "case 3")


def test_a_syntax_error_inside_a_case_is_quarantined_then_the_run_stops() -> None:
    good = json.dumps(a_case())
    data = '{"export": ' + json.dumps(HEADER) + ', "cases": [' + good + ', {"person_id": 1,, "person": {}}]}'
    items, error = collect(data)
    assert error is not None and "case 2" in str(error)
    assert isinstance(items[0], SourceRecord)
    assert isinstance(items[1], RecordError) and (items[1].reason, items[1].location) == (
        "json-unreadable",
        "case 2",
    )


def test_error_details_carry_no_patient_data() -> None:
    case = a_case()
    case["person"]["surname"] = "Zebedee"
    whole = document(case, a_case(person="Zebedee"))
    items, error = collect(whole[: whole.index("Zebedee") + 4])
    assert error is not None and "Zebedee" not in str(error)
    for item in items:
        assert isinstance(item, RecordError)
        assert "Zebedee" not in item.detail and case["person"]["nhs_number"] not in item.detail


class TrickleStream:
    """A binary stream that builds the document as it is read and counts the bytes it gave out."""

    def __init__(self, cases: int) -> None:
        self.given = 0
        self.chunks = self._chunks(cases)
        self.pending = b""

    def _chunks(self, cases: int) -> Iterator[bytes]:
        yield b'{"export": ' + json.dumps(HEADER).encode() + b', "cases": ['
        for n in range(cases):
            yield (b"," if n else b"") + json.dumps(a_case()).encode()
        yield b"]}"

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.pending) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.pending += chunk
        out, self.pending = (self.pending, b"") if size < 0 else (self.pending[:size], self.pending[size:])
        self.given += len(out)
        return out


def test_read_is_lazy_it_yields_the_first_case_before_the_stream_is_exhausted() -> None:
    stream = TrickleStream(cases=2000)
    items = SocialCareAdapter().read(cast(IO[bytes], stream))
    first = next(items)
    assert isinstance(first, SourceRecord) and first.location == "case 1"
    assert stream.given < 200_000
    assert next(stream.chunks, None) is not None


def test_memory_does_not_grow_with_the_number_of_cases() -> None:
    def peak(cases: int) -> int:
        stream = TrickleStream(cases)
        count = 0
        tracemalloc.start()
        try:
            for _ in SocialCareAdapter().read(cast(IO[bytes], stream)):
                count += 1
            highest = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == cases
        return highest

    small, large = peak(200), peak(4000)
    assert large < small * 1.5 + 100_000


def test_reread_reproduces_the_record() -> None:
    for item in read(document(a_case(), a_case())):
        assert isinstance(item, SourceRecord)
        assert list(SocialCareAdapter().reread(item.raw, item.location)) == [item]


def test_reread_of_a_corrected_case_gives_the_record() -> None:
    case = a_case()
    plans = case.pop("care_and_support_plans")
    (broken,) = read(document(case))
    assert isinstance(broken, RecordError) and broken.reason == "field-missing"
    fixed_raw = json.loads(broken.raw)
    fixed_raw["cases"][0]["care_and_support_plans"] = plans
    (fixed,) = SocialCareAdapter().reread(json.dumps(fixed_raw), broken.location)
    assert isinstance(fixed, SourceRecord) and fixed.local_id == f"{case['person_id']}@Z9A01"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"export": {"council_ods": "Z9A01"}, "cases": [{"person_id": 1,', "json-unreadable"),
        (json.dumps({"export": HEADER, "cases": []}), "json-not-an-object"),
        (json.dumps({"export": {"system": "x"}, "cases": [{}]}), "field-missing"),
    ],
)
def test_reread_of_a_broken_raw_is_a_record_error(raw: str, reason: str) -> None:
    (item,) = SocialCareAdapter().reread(raw, "case 9")
    assert isinstance(item, RecordError) and (item.reason, item.location) == (reason, "case 9")


def test_a_synthetic_export_reads_with_exactly_the_defects_it_was_given() -> None:
    out = io.StringIO()
    plan = DefectPlan(rate=0.3, seed=5)
    written = write_social_care(population(3000, seed=5), out, random.Random(5), plan)
    json.loads(out.getvalue())  # the document stays valid JSON whatever the defects
    items = read(out.getvalue())
    tally = plan.report()["social-care"]
    assert len(items) == written
    errors = [i for i in items if isinstance(i, RecordError)]
    assert [(e.reason, e.field) for e in errors] == [("field-missing", "care_and_support_plans")] * tally[
        "truncated"
    ]
    raws = [i.raw for i in items if isinstance(i, SourceRecord)]
    assert len(raws) - len(set(raws)) == tally["duplicate"]


def test_a_case_naming_a_member_twice_is_quarantined_as_sent_and_stays_so_on_replay() -> None:
    """JSON parsers disagree on which of two ``nhs_number`` members counts: the case is not read."""
    first, later = a_case(), a_case()
    number = first["person"]["nhs_number"]
    twice = json.dumps(first).replace('"nhs_number": ', '"nhs_number": "9990000018", "nhs_number": ', 1)
    data = '{"export": ' + json.dumps(HEADER) + ', "cases": [' + twice + ", " + json.dumps(later) + "]}"
    items = read(data)
    assert isinstance(items[0], RecordError)
    assert (items[0].reason, items[0].location) == ("json-duplicate-name", "case 1")
    assert items[0].detail == "an object names 'nhs_number' twice"
    assert '"nhs_number":"9990000018","nhs_number":"' + number + '"' in items[0].raw  # both, as sent
    assert json.loads(items[0].raw)["cases"][0]["person_id"] == first["person_id"]
    assert isinstance(items[1], SourceRecord) and items[1].local_id == f"{later['person_id']}@Z9A01"
    (replayed,) = SocialCareAdapter().reread(items[0].raw, "case 1")
    assert isinstance(replayed, RecordError) and replayed.reason == "json-duplicate-name"
    fixed = items[0].raw.replace('"nhs_number":"9990000018",', "", 1)
    (record,) = SocialCareAdapter().reread(fixed, "case 1")
    assert isinstance(record, SourceRecord) and record.local_id == f"{first['person_id']}@Z9A01"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ('{"export": {"council_ods": "Z9A01", "council_ods": "Z9A02"}, "cases": []}', "'council_ods' twice"),
        ('{"export": {"council_ods": "Z9A01"}, "cases": [], "cases": []}', "'cases' twice"),
    ],
)
def test_the_header_or_top_level_naming_a_member_twice_is_refused(data: str, says: str) -> None:
    with pytest.raises(AdapterError, match=says):
        read(data)


def test_a_name_that_is_not_shaped_like_a_field_is_not_quoted() -> None:
    case = json.dumps(a_case()).replace('"person_id": ', '"Hughes 1936": 1, "Hughes 1936": ', 1)
    (item,) = read('{"export": ' + json.dumps(HEADER) + ', "cases": [' + case + "]}")
    assert isinstance(item, RecordError) and item.detail == "an object names a name twice"


def test_ods_codes_are_read_as_ods_writes_them() -> None:
    """A council that writes its code in lower case lands on the same records (ids are keyed on it)."""
    case = a_case(person_id=7000999)
    case["person"]["gp_practice_ods"] = " y90004 "
    case["care_and_support_plans"][0]["services"][0]["provider"] = {"name": "Homecare", "ods_code": "y9h01"}
    [record] = read(document(case, header={**HEADER, "council_ods": " e09000031 "}))
    assert isinstance(record, SourceRecord)
    assert (record.local_id, record.fields["source_ods"]) == ("7000999@E09000031", "E09000031")
    assert record.fields["person"]["gp_practice_ods"] == "Y90004"
    assert record.fields["care_plans"][0]["services"][0]["provider"]["ods_code"] == "Y9H01"
    [again] = SocialCareAdapter().reread(record.raw, record.location)
    assert again == record
