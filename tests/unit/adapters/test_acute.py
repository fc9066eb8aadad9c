"""The acute ADT adapter: real messages, framing variants, streaming, and each RecordError reason."""

from __future__ import annotations

import io
import random
import types
from pathlib import Path
from typing import IO, cast

import pytest

from adapters.acute import AcuteAdapter
from adapters.records import AdapterError, Item, RecordError, SourceRecord
from gateway.synth.acute import write_acute
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population

REPO = Path(__file__).resolve().parents[3]
HL7 = REPO / ".." / "shared" / "fixtures" / "hl7v2"

#: What each shared fixture must give: a record (its hospital number) or a RecordError reason.
EXPECTED = {
    "derived-emap-A03-bad-msh2.hl7": "hl7-unreadable",
    "derived-ms-ADT01-28-truncated-no-pid.hl7": "hl7-no-pid",
    "emap-A01.hl7": "record:40800000",
    "emap-A02.hl7": "record:40800000",
    "emap-A03.hl7": "record:40800000",
    "emap-A08_v1.hl7": "record:40800000",
    "emap-A11.hl7": "record:40800000",
    "emap-A40.hl7": "record:40800001",
    "ms-ADT-A03-02.hl7": "record:PATID1234",
    "ms-ADT01-28.hl7": "record:PATID1234",
    "nwgmsa-MFT-OML_O21_PDF.hl7": "hl7-unsupported-message",
    "nwgmsa-NWGMSA-ORU_R01_PDF.hl7": "hl7-unsupported-message",
}


def read_bytes(data: bytes, adapter: AcuteAdapter | None = None) -> list[Item]:
    return list((adapter or AcuteAdapter()).read(io.BytesIO(data)))


def only_record(items: list[Item]) -> SourceRecord:
    assert len(items) == 1, items
    item = items[0]
    assert isinstance(item, SourceRecord), item
    return item


def only_error(items: list[Item]) -> RecordError:
    assert len(items) == 1, items
    item = items[0]
    assert isinstance(item, RecordError), item
    return item


def adt(*segments: str, event: str = "A08") -> bytes:
    msh = f"MSH|^~\\&|PAS|R9Z01|CONCORD|ICB|20260401120000||ADT^{event}|C1|P|2.5"
    return "\r".join([msh, f"EVN|{event}|20260401120000", *segments]).encode() + b"\r"


PID = "PID|1||H1^^^R9Z01^MR~9990000018^^^NHS^NH||Smith^Ann^Mary^^Mrs||19500102|F"


def test_the_fixture_list_is_the_one_these_tests_know() -> None:
    assert sorted(p.name for p in HL7.glob("*.hl7")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_message_gives_a_record_or_a_specific_error(name: str) -> None:
    with (HL7 / name).open("rb") as fh:
        items = list(AcuteAdapter().read(fh))
    assert len(items) == 1
    item = items[0]
    assert item.location == "message 1"
    expected = EXPECTED[name]
    if expected.startswith("record:"):
        assert isinstance(item, SourceRecord)
        assert item.local_id == expected.removeprefix("record:")
        assert item.source == "acute"
    else:
        assert isinstance(item, RecordError)
        assert item.reason == expected
        assert "9999999999" not in item.detail and "944" not in item.detail


def test_emap_discharge_reads_the_nhs_number_and_one_plan_without_the_foreign_obx() -> None:
    record = only_record(read_bytes((HL7 / "emap-A03.hl7").read_bytes()))
    f = record.fields
    assert (f["event"], f["nhs_number"], f["nhs_number_where"]) == ("A03", "9999999999", "PID-3")
    assert (f["family_name"], f["given_names"], f["title"], f["sex"]) == ("AGBTESTD", "Satesta", "MRS", "F")
    assert f["source_ods"] == f["sending_facility"] == "UCLH"
    assert f["phones"] == ["0200 000 0000", "07777 000 000"]
    assert f["nhs_number_status"] == ""
    [plan] = f["care_plans"]
    assert plan["plan_id"] == f["visit_number"] == "123412341234"
    assert (plan["plan_status"], plan["plan_type"], plan["start"]) == ("active", "DISCHARGE", "201302111000")
    assert plan["activities"] == []  # its four OBX are PAS flags, not follow-ups


def test_merge_names_the_retired_hospital_number() -> None:
    record = only_record(read_bytes((HL7 / "emap-A40.hl7").read_bytes()))
    assert record.local_id == "40800001"
    assert record.fields["merged_hospital_number"] == "40800000"
    assert record.fields["care_plans"] == []


def test_cancel_admit_is_demographics_only() -> None:
    record = only_record(read_bytes((HL7 / "emap-A11.hl7").read_bytes()))
    assert record.fields["event"] == "A11"
    assert record.fields["care_plans"] == []
    assert record.fields["nhs_number"] == "9999999999"


def test_us_messages_have_no_nhs_number_even_with_a_pid_19() -> None:
    for name in ("ms-ADT01-28.hl7", "ms-ADT-A03-02.hl7"):
        record = only_record(read_bytes((HL7 / name).read_bytes()))
        assert record.fields["nhs_number"] == ""


@pytest.mark.parametrize(
    ("pid", "nhs", "where"),
    [
        ("PID|1||H1^^^R9Z01^MR~9990000018^^^NHS^NH||Smith^Ann", "9990000018", "PID-3"),
        ("PID|1||9990000018^^^NHS^HN~H1^^^R9Z01^MR||Smith^Ann", "9990000018", "PID-3"),
        ("PID|1||H1^^^R9Z01^MR~999 000 0018^^^NHS^NH||Smith^Ann", "999 000 0018", "PID-3"),
        (
            "PID|1||H1^^^R9Z01^MR~9990000018^^^&2.16.840.1.113883.2.1.4.1&ISO^NH||Smith^Ann",
            "9990000018",
            "PID-3",
        ),
        ("PID|1|999 000 0018|H1^^^R9Z01^MR||Smith^Ann", "999 000 0018", "PID-2"),
        ("PID|1||H1^^^R9Z01^MR||Smith^Ann||||||||||||||999-000-0018", "999-000-0018", "PID-19"),
        ("PID|1||H1^^^R9Z01^MR||Smith^Ann||||||||||||||444333333", "", ""),
        ("PID|1||H1^^^R9Z01^MR~123456789^^^USSSA^SS||Smith^Ann", "", ""),
    ],
)
def test_the_nhs_number_is_found_where_uk_feeds_put_it(pid: str, nhs: str, where: str) -> None:
    record = only_record(read_bytes(adt(pid)))
    assert record.local_id == "H1"
    assert (record.fields["nhs_number"], record.fields["nhs_number_where"]) == (nhs, where)


def test_a_message_with_only_an_nhs_number_has_no_local_id() -> None:
    error = only_error(read_bytes(adt("PID|1||9990000018^^^NHS^NH||Smith^Ann")))
    assert (error.reason, error.field) == ("local-id-missing", "PID-3")
    assert "9990000018" not in error.detail and "Smith" not in error.detail
    assert error.raw.startswith("MSH|")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (adt(PID, event="A60"), "hl7-unsupported-event"),
        (adt(PID, PID), "hl7-multiple-pid"),
        (adt("PV1|1|I"), "hl7-no-pid"),
        (b"MSH|^~\\&|PAS|R9Z01|||20260401||ORU^R01|C1|P|2.5\rPID|1||H1^^^X^MR\r", "hl7-unsupported-message"),
        (b"MSH|^~|PAS|R9Z01|||20260401||ADT^A01|C1|P|2.5\r" + PID.encode(), "hl7-unreadable"),
        (b"MSH|^~\\^|PAS|R9Z01|||20260401||ADT^A01|C1|P|2.5\r" + PID.encode(), "hl7-unreadable"),
        (b"MSHA^~\\&A\r" + PID.encode(), "hl7-unreadable"),
    ],
)
def test_each_unusable_message_has_its_own_reason(data: bytes, reason: str) -> None:
    error = only_error(read_bytes(data))
    assert error.reason == reason
    assert "Smith" not in error.detail


def variants_of(message: bytes) -> dict[str, bytes]:
    segments = [s for s in message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n") if s]
    cr = b"\r".join(segments) + b"\r"
    return {
        "CR": cr,
        "LF": b"\n".join(segments) + b"\n",
        "CRLF": b"\r\n".join(segments) + b"\r\n",
        "no final terminator": b"\r".join(segments),
        "MLLP": b"\x0b" + cr + b"\x1c\r",
        "BOM": b"\xef\xbb\xbf" + cr,
        "batch": b"FHS|^~\\&|PAS|R9Z01\rBHS|^~\\&|PAS|R9Z01\r" + cr + b"BTS|1\rFTS|1\r",
        "batch, LF, blank lines": b"FHS|^~\\&|PAS\n\nBHS|^~\\&|PAS\n"
        + cr.replace(b"\r", b"\n")
        + b"\nBTS|1\nFTS|1\n",
    }


def test_terminators_framing_and_batch_envelopes_do_not_change_the_record() -> None:
    original = (HL7 / "emap-A03.hl7").read_bytes()
    records = {name: only_record(read_bytes(data)) for name, data in variants_of(original).items()}
    first = records["CR"]
    for name, record in records.items():
        assert (record.local_id, record.fields, record.raw) == (first.local_id, first.fields, first.raw), name


def test_a_text_stream_gives_the_same_record_as_bytes() -> None:
    data = (HL7 / "ms-ADT01-28.hl7").read_bytes()  # starts with a BOM
    from_text = list(AcuteAdapter().read(io.StringIO(data.decode("utf-8"))))
    assert [(r.local_id, r.fields) for r in map(only_record, [from_text])] == [
        (r.local_id, r.fields) for r in map(only_record, [read_bytes(data)])
    ]


def test_several_mllp_frames_and_messages_are_numbered_in_order() -> None:
    a03 = (HL7 / "emap-A03.hl7").read_bytes().replace(b"\n", b"\r")
    oru = (HL7 / "nwgmsa-NWGMSA-ORU_R01_PDF.hl7").read_bytes().replace(b"\n", b"\r")
    stream = b"".join(b"\x0b" + m + b"\x1c\r" for m in (a03, oru, a03))
    items = read_bytes(stream)
    assert [i.location for i in items] == ["message 1", "message 2", "message 3"]
    assert [type(i).__name__ for i in items] == ["SourceRecord", "RecordError", "SourceRecord"]


def test_segments_outside_any_message_are_one_error_and_the_next_message_still_reads() -> None:
    data = b"FHS|^~\\&|PAS\rPID|1||H9^^^X^MR\rPV1|1|I\r" + adt(PID)
    items = read_bytes(data)
    assert isinstance(items[0], RecordError) and items[0].reason == "hl7-no-msh"
    assert "2 segment" in items[0].detail
    assert isinstance(items[1], SourceRecord) and items[1].location == "message 2"


@pytest.mark.parametrize("data", [b"", b"\r\n  \n", b"nhs_number,name\r\n9990000018,Smith\r\n"])
def test_an_empty_or_non_hl7_file_is_refused_whole(data: bytes) -> None:
    with pytest.raises(AdapterError) as caught:
        read_bytes(data)
    assert "9990000018" not in str(caught.value)


def test_latin1_bytes_are_decoded_when_the_message_is_not_utf8() -> None:
    data = adt("PID|1||H1^^^X^MR||Ren\xe9e^Zo\xeb").decode("utf-8").encode("latin-1")
    record = only_record(read_bytes(data))
    assert (record.fields["family_name"], record.fields["given_names"]) == ("Renée", "Zoë")


def test_windows_1252_bytes_labelled_latin1_are_read_as_windows_1252() -> None:
    data = (
        adt("PID|1||H1^^^X^MR||O\x92Neill^Ann").decode("utf-8").encode("latin-1")
    )  # 0x92: an apostrophe in 1252
    assert only_record(read_bytes(data)).fields["family_name"] == "O\u2019Neill"


def test_hex_escapes_are_read_in_the_messages_own_character_set() -> None:
    record = only_record(read_bytes(adt("PID|1||H1^^^X^MR||Caf\\XC3A9\\^Ren\\XC3A9\\")))
    assert (record.fields["family_name"], record.fields["given_names"]) == ("Café", "René")


def test_a_lower_case_msh_still_starts_a_message() -> None:
    first, second = adt("PID|1||H1^^^X^MR||Smith^Ann"), adt("PID|1||H2^^^X^MR||Jones^Bo")
    items = read_bytes(first + b"msh" + second[3:])
    assert [(i.location, type(i).__name__) for i in items] == [
        ("message 1", "SourceRecord"),
        ("message 2", "SourceRecord"),
    ]


def test_escape_sequences_are_decoded() -> None:
    record = only_record(read_bytes(adt(r"PID|1||H1^^^X^MR||Smith\T\Jones^\X41\nn||||||1 Mill Lane\F\B")))
    assert record.fields["family_name"] == "Smith&Jones"
    assert record.fields["given_names"] == "Ann"
    assert record.fields["address_line_1"] == "1 Mill Lane|B"


def test_a_name_repetition_holding_only_its_type_is_passed_over() -> None:
    f = only_record(read_bytes(adt("PID|1||H1^^^X^MR||^^^^^^U~Nick^Nicky^^^^^N"))).fields
    assert (f["family_name"], f["given_names"]) == ("Nick", "Nicky")


@pytest.mark.parametrize(
    ("pid3", "expected"),
    [
        ("X999^^^OTHER^PI~H00012^^^R9Z01^MR", "H00012"),  # the sending trust's own number first
        ("X999^^^OTHER^MR~H00012^^^R9Z01^PI", "H00012"),  # ... whatever its type
        ("P1^^^R9Z01^PI~M1^^^R9Z01^MR", "M1"),  # then a medical record number before a patient id
        ("A1^^^OTHER^XX~B1^^^OTHER^XX", "A1"),  # then the order sent
    ],
)
def test_the_hospital_number_is_the_sending_trusts_own(pid3: str, expected: str) -> None:
    record = only_record(read_bytes(adt(f"PID|1||{pid3}~9990000018^^^NHS^NH||Smith^Ann")))
    assert record.local_id == record.fields["hospital_number"] == expected


def test_demographics_prefer_the_legal_name_and_the_home_address() -> None:
    pid = (
        "PID|1||H1^^^X^MR||Nick^Al^^^^^N~Legal^Alan^James^^Mr^^L||19500102|M|||"
        "PO Box 1^^Town^^AB1 2CD^GBR^M~2&Mill Lane^Flat 3^Barking^Essex^IG11 7AB^GBR^H||"
        "0208 1^PRN^PH~^^CP^^^07700^900123"
    )
    f = only_record(read_bytes(adt(pid))).fields
    assert (f["family_name"], f["given_names"], f["title"]) == ("Legal", "Alan James", "Mr")
    assert (f["address_line_1"], f["address_line_2"], f["town"], f["county"]) == (
        "2 Mill Lane",
        "Flat 3",
        "Barking",
        "Essex",
    )
    assert (f["postcode"], f["country"], f["address_type"]) == ("IG11 7AB", "GBR", "H")
    assert f["phones"] == ["0208 1", "07700 900123"]


DISCHARGE = [
    PID,
    "PD1|||Practice^^^^^^^^^Y90001",
    "PV1|1|I|W12^^^R9Z01||||C123^Morris^Jo^^^Dr|||430|||||||||V77|||||||||||||||||19||||||||"
    "20260401090000|20260405140000",
    "OBX|1|NM|LOS^Length of stay^L||4|d|||||F",
    "OBX|2|CWE|FOLLOWUP^Follow-up^L|1|GPREVIEW^Review by GP^L||||||F|||20260412|||||||||"
    "Practice^^^^^^^^^Y90001",
    "OBX|3|CWE|FOLLOWUP^Follow-up^L|2|DNVISIT^District nurse visit^L||||||W|||20260410",
    "OBX|4|ST|FOLLOWUP^Follow-up^L|3|Check the wound dressing||||||F|||20260409|||||||||Community^^R9Z02",
    "OBX|5|CWE|^^^ABC^Assign Benefits^PLW-HL7||||||||N",
]


def test_discharge_follow_ups_are_the_followup_observations_not_withdrawn() -> None:
    record = only_record(read_bytes(adt(*DISCHARGE, event="A03")))
    [plan] = record.fields["care_plans"]
    assert (plan["plan_id"], plan["start"], plan["recorded_at"]) == (
        "V77",
        "20260405140000",
        "20260401120000",
    )
    assert [(a["code"], a["text"], a["due_date"], a["performer_ods"]) for a in plan["activities"]] == [
        ("GPREVIEW", "Review by GP", "20260412", "Y90001"),
        ("", "Check the wound dressing", "20260409", "R9Z02"),  # text-only, ODS in XON.3
    ]
    assert record.fields["registered_practice_ods"] == "Y90001"
    assert (record.fields["consultant_code"], record.fields["consultant_name"]) == ("C123", "Dr Jo Morris")


def test_a_discharge_without_a_visit_number_is_named_by_its_control_id() -> None:
    segments = [s for s in DISCHARGE if not s.startswith("PV1")]
    [plan] = only_record(read_bytes(adt(*segments, event="A03"))).fields["care_plans"]
    assert plan["plan_id"] == "C1"
    assert plan["start"] == "20260401120000"  # no PV1-45: EVN-2


def test_cancel_discharge_revokes_the_plan_of_the_same_visit() -> None:
    [plan] = only_record(read_bytes(adt(*DISCHARGE, event="A13"))).fields["care_plans"]
    assert (plan["plan_id"], plan["plan_status"], plan["activities"]) == ("V77", "revoked", [])
    no_visit = [s for s in DISCHARGE if not s.startswith("PV1")]
    assert only_record(read_bytes(adt(*no_visit, event="A13"))).fields["care_plans"] == []


@pytest.mark.parametrize("event", ["A01", "A02", "A04", "A05", "A08", "A11", "A28", "A31", "A40"])
def test_only_discharge_events_make_plans(event: str) -> None:
    assert only_record(read_bytes(adt(*DISCHARGE, event=event))).fields["care_plans"] == []


def test_reread_gives_the_quarantined_message_back_at_its_location() -> None:
    [first] = read_bytes((HL7 / "emap-A03.hl7").read_bytes())
    assert isinstance(first, SourceRecord)
    [again] = list(AcuteAdapter().reread(first.raw, "message 7"))
    assert isinstance(again, SourceRecord)
    assert (again.location, again.fields, again.raw) == ("message 7", first.fields, first.raw)
    [error] = list(AcuteAdapter().reread((HL7 / "derived-emap-A03-bad-msh2.hl7").read_text(), "message 3"))
    assert isinstance(error, RecordError) and error.reason == "hl7-unreadable"


def test_a_message_over_the_size_limit_is_skipped_not_held() -> None:
    big = adt(PID, "OBX|1|ED|PDF^Report^L||" + "A" * 5000)
    small = adt(PID)
    adapter = AcuteAdapter(chunk_size=256, max_message_bytes=1000)
    items = read_bytes(big + small + big.replace(b"\r", b"\n").replace(b"OBX|1|ED|", b"ZZZ|"), adapter)
    assert [getattr(i, "reason", "record") for i in items] == [
        "hl7-message-too-large",
        "record",
        "hl7-message-too-large",
    ]
    assert all(len(i.raw) < 1000 for i in items)


def test_a_file_without_segment_terminators_is_refused() -> None:
    with pytest.raises(AdapterError):
        read_bytes(b"X" * 5000, AcuteAdapter(chunk_size=512, max_message_bytes=1000))


class CountingStream(io.RawIOBase):
    """A binary stream that records every read, to show the adapter reads in bounded chunks."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.sizes: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        return self._data.read(size)

    @property
    def consumed(self) -> int:
        return self._data.tell()


def test_a_large_feed_is_read_in_chunks_and_yielded_as_it_is_read() -> None:
    out = io.BytesIO()
    written = write_acute(population(1500, 3), out, random.Random(3), DefectPlan(0.0, 3))
    data = out.getvalue()
    stream = CountingStream(data)
    items = AcuteAdapter(chunk_size=4096).read(cast("IO[bytes]", stream))
    assert isinstance(items, types.GeneratorType)
    assert stream.sizes == []  # nothing read before the first item is asked for
    first = next(items)
    assert isinstance(first, SourceRecord)
    assert stream.consumed <= 2 * 4096 < len(data)
    rest = list(items)
    assert 1 + len(rest) == written > 300
    assert all(isinstance(i, SourceRecord) for i in rest)
    assert max(stream.sizes) == 4096 and len(stream.sizes) >= len(data) // 4096


def test_the_hl7_null_reads_as_no_value() -> None:
    """``""`` is HL7's explicit null: a name part, an address, phones or a death time sent as ``""``
    are absent from the record (not the two characters), so what is built from it has none."""
    pid = (
        'PID|1||H1^^^R9Z01^MR~9990000018^^^NHS^NH||Smith^Anna^""^^""||19500102|F|||""||""|""'
        + "|" * 15
        + '""'
    )
    fields = only_record(read_bytes(adt(pid))).fields
    assert (fields["family_name"], fields["given_names"], fields["title"]) == ("Smith", "Anna", "")
    assert fields["phones"] == [] and fields["death_time"] == ""
    assert fields["address_line_1"] == "" and fields["postcode"] == ""
    assert '""' not in repr(fields)


@pytest.mark.parametrize(
    ("death", "indicator", "alone"), [("", "Y", "Y"), ("", "N", "N"), ("20260101", "Y", ""), ("", "", "")]
)
def test_the_death_indicator_stands_alone_only_without_a_time(death: str, indicator: str, alone: str) -> None:
    pid = PID + "|" * 20 + f"|{death}|{indicator}"
    fields = only_record(read_bytes(adt(pid))).fields
    assert (fields["death_time"], fields["death_indicator"]) == (death, indicator)
    assert fields["death_indicator_alone"] == alone


def test_emails_faxes_and_pagers_are_not_phones() -> None:
    """XTN.2/XTN.3 say what a PID-13/14 repetition reaches; an email is in XTN.4 (v2.5) or XTN.1."""
    home = "07700 900123^PRN^CP~anna@example.org^NET^Internet~^NET^Internet^anna2@example.org~^PRN^FX^^^0113^4960002"
    work = "0113 4960000^WPN^PH~^WPN^BP^^^0113^4960009"
    pid = PID + f"|||||{home}|{work}"
    fields = only_record(read_bytes(adt(pid))).fields
    assert fields["phones"] == ["07700 900123"]
    assert fields["business_phones"] == ["0113 4960000"]
    assert fields["other_contacts"] == [
        {"system": "email", "value": "anna@example.org", "use": "home"},
        {"system": "email", "value": "anna2@example.org", "use": "home"},
        {"system": "fax", "value": "0113 4960002", "use": "home"},
        {"system": "pager", "value": "0113 4960009", "use": "work"},
    ]


@pytest.mark.parametrize("cx", ["9990000018^^^NHS^NH", "9990000018^^^NHS^NHS", "9990000018^^^NHS^NHSNBR"])
def test_the_nhs_number_is_found_under_the_identifier_types_trusts_use(cx: str) -> None:
    fields = only_record(read_bytes(adt(f"PID|1||H1^^^R9Z01^MR~{cx}||Smith^Ann||19500102|F"))).fields
    assert (fields["nhs_number"], fields["nhs_number_where"], fields["hospital_number"]) == (
        "9990000018",
        "PID-3",
        "H1",
    )


@pytest.mark.parametrize("event", ["A34", "A47"])
def test_identifier_changes_retire_the_number_mrg_names(event: str) -> None:
    new = "PID|1||H2^^^R9Z01^MR~9990000018^^^NHS^NH||Smith^Ann||19500102|F"
    record = only_record(read_bytes(adt(new, "MRG|H1^^^R9Z01^MR", event=event)))
    assert (record.local_id, record.fields["replaces_local_id"]) == ("H2", "H1")


def test_ods_codes_are_read_as_ods_writes_them() -> None:
    message = adt(PID, "PD1|||Practice^^y90001", "PV1|1|I|||||||||||||||||V1", event="A03").replace(
        b"|R9Z01|CONCORD", b"|r9z01|CONCORD"
    )
    message += b"OBX|1|CWE|FOLLOWUP^Follow-up^L|1|GPREVIEW^Review by GP^L||||||F|||20260412|||||||||Surgery^^y90002\r"
    record = only_record(read_bytes(message))
    assert record.fields["source_ods"] == "R9Z01"
    assert record.fields["registered_practice_ods"] == "Y90001"
    assert record.fields["care_plans"][0]["activities"][0]["performer_ods"] == "Y90002"


ASSETS = REPO / "tests" / "assets" / "hl7"


def test_pid3_identifiers_are_told_apart_as_uk_trusts_send_them() -> None:
    """tests/assets/hl7/pid3-identifiers.hl7 (synthetic): the trust's account and visit numbers are not
    its number for the person; a CHI or Health and Care number sent as type NH is not an NHS number;
    an identifier the NHS assigned is the NHS number whatever its type; a ten-digit hospital number
    in PID-2 is not one either."""
    items = read_bytes((ASSETS / "pid3-identifiers.hl7").read_bytes())
    assert all(isinstance(i, SourceRecord) for i in items), items
    got = [(i.local_id, i.fields["nhs_number"], i.fields["nhs_number_where"]) for i in items]  # type: ignore[union-attr]
    assert got == [
        ("H1001", "9990000018", "PID-3"),  # not ACC7001 (AN) or V5566 (VN), though MSH-4 assigned them
        ("H1002", "", ""),  # 0101011237^^^CHI^NH: Scotland's CHI number (it passes Modulus 11)
        ("H1003", "999 000 0026", "PID-2"),  # 3200000015^^^HSNI^NH: a Northern Ireland H&C number
        ("H1004", "9990000034", "PID-3"),  # 9990000034^^^NHS^MR: the NHS's number, not the trust's
        ("H1005", "", ""),  # PID-2 9990000042^^^R9Z01^MR: the trust's, shaped like an NHS number
    ]


@pytest.mark.parametrize(
    "pid3",
    ["H1^^^NHS^MR~9990000018^^^NHS^NH", "9990000018^^^NHS^NH~H1^^^NHS^MR", "H1^^^NHS^PI~9990000018^^^NHS"],
)
def test_a_trust_that_names_itself_nhs_keeps_its_hospital_number(pid3: str) -> None:
    """An NHS-assigned identifier of a local type, not shaped like an NHS number, is the hospital
    number: taken for the NHS number instead, the message was quarantined as local-id-missing."""
    record = only_record(read_bytes(adt(f"PID|1||{pid3}||Smith^Ann||19500102|F", event="A08")))
    assert (record.local_id, record.fields["nhs_number"]) == ("H1", "9990000018")


def test_a_merge_retires_the_hospital_number_not_an_account_number() -> None:
    new = "PID|1||H2^^^R9Z01^MR~9990000018^^^NHS^NH||Smith^Ann||19500102|F"
    record = only_record(
        read_bytes(adt(new, "MRG|ACC1^^^R9Z01^AN~H1^^^PAS^MR~0101011237^^^CHI^NH", event="A40"))
    )
    assert (record.fields["replaces_local_id"], record.fields["merged_nhs_number"]) == ("H1", "")


def test_a_utf16_file_is_refused_with_a_reason_an_operator_can_act_on() -> None:
    data = (HL7 / "emap-A01.hl7").read_text(encoding="utf-8").encode("utf-16")
    with pytest.raises(AdapterError, match="UTF-16"):
        read_bytes(data)
