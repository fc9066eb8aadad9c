"""The acute mapping specs: real and synthetic ADT messages to UK Core Patient, CarePlan and Provenance."""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.acute import AcuteAdapter
from adapters.records import RecordError, SourceRecord
from gateway.synth.acute import write_acute
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from mappings.engine import MappingError
from mappings.mapper import MappedRecord, Mapper
from mappings.terminology import load_tables
from mappings.validate import NHS_NUMBER_SYSTEM, VERIFICATION_SYSTEM, validate

REPO = Path(__file__).resolve().parents[3]
HL7 = REPO / ".." / "shared" / "fixtures" / "hl7v2"
SCT = "http://snomed.info/sct"
RECORDED = "2026-11-01T06:00:00+00:00"

#: The SNOMED CT concepts the acute maps use, as checked when the maps were written (docs/sources/acute.md).
SNOMED = {
    "736372004": "Discharge care plan",
    "185389009": "Follow-up visit",
    "281036007": "Follow-up consultation",
    "182836005": "Review of medication",
    "396550006": "Blood test",
    "439708006": "Home visit",
    "225358003": "Wound care",
    "91251008": "Physical therapy procedure",
    "84478008": "Occupational therapy",
    "306238000": "Referral to social services",
    "306206005": "Referral to service",
}


def read(data: bytes) -> list[SourceRecord | RecordError]:
    return list(AcuteAdapter().read(io.BytesIO(data)))


def record_of(data: bytes) -> SourceRecord:
    [item] = read(data)
    assert isinstance(item, SourceRecord), item
    return item


def validated(mapped: MappedRecord) -> dict[str, dict[str, Any]]:
    """Every resource of a mapped record validated (Provenance.recorded set as the store sets it), by type."""
    patient = {"resourceType": "Patient", "id": mapped.patient_id, **mapped.contribution}
    validate(patient)
    out: dict[str, dict[str, Any]] = {"Patient": patient}
    for resource in mapped.resources:
        if resource["resourceType"] == "Provenance":
            resource = {**resource, "recorded": RECORDED}
        validate(resource)
        out[resource["resourceType"]] = resource
    return out


def adt(*segments: str, event: str = "A03") -> bytes:
    msh = f"MSH|^~\\&|PAS|R9Z01|CONCORD|ICB|20260401120000||ADT^{event}|C1|P|2.5"
    return "\r".join([msh, f"EVN|{event}|20260401120000", *segments]).encode() + b"\r"


PID = (
    "PID|1||H1^^^R9Z01^MR~999 000 0018^^^NHS^NH||Smith^Ann Mary^^^Mrs||19500102|F|||"
    "1 Mill Lane^^Barking^^ig11 7ab^GBR^H"
)
PV1 = (
    "PV1|1|I|W12^^^R9Z01||||C1^Morris^Jo^^^Dr|||430|||||||||V77"
    + "|" * 17
    + "19"
    + "|" * 8
    + "20260401090000|20260405140000"
)


def follow_up(n: int, value: str, due: str = "20260412", ods: str = "Y90001") -> str:
    return f"OBX|{n}|CWE|FOLLOWUP^Follow-up^L|{n}|{value}||||||F|||{due}" + "|" * 9 + f"Org^^^^^^^^^{ods}"


@pytest.mark.parametrize("path", sorted(HL7.glob("*.hl7")), ids=lambda p: p.name)
def test_every_real_message_maps_to_valid_resources_or_fails_with_a_reason(
    mapper: Mapper, path: Path
) -> None:
    for item in read(path.read_bytes()):
        if isinstance(item, RecordError):
            assert item.reason.startswith("hl7-")
            continue
        try:
            mapped = mapper.map(item)
        except MappingError as exc:
            assert exc.issue.reason == "nhs-number-missing", path.name
            assert path.name.startswith("ms-")  # US samples: no NHS number anywhere
            continue
        resources = validated(mapped)
        assert mapped.nhs_number == "9999999999"
        assert resources["Patient"]["identifier"][0]["value"] == "9999999999"


def test_emap_discharge_is_a_patient_contribution_and_a_discharge_care_plan(mapper: Mapper) -> None:
    mapped = mapper.map(record_of((HL7 / "emap-A03.hl7").read_bytes()))
    resources = validated(mapped)
    patient, plan, provenance = resources["Patient"], resources["CarePlan"], resources["Provenance"]
    nhs = patient["identifier"][0]
    assert (nhs["system"], nhs["value"]) == (NHS_NUMBER_SYSTEM, "9999999999")
    status = nhs["extension"][0]["valueCodeableConcept"]["coding"][0]
    assert (status["system"], status["code"]) == (VERIFICATION_SYSTEM, "02")  # no PID-32: present, not traced
    assert (patient["birthDate"], patient["gender"]) == ("1980-06-01", "female")
    assert plan["category"][0]["coding"][0] == {
        "system": SCT,
        "code": "736372004",
        "display": "Discharge care plan",
    }
    assert (plan["status"], plan["intent"], plan["identifier"][0]["value"]) == (
        "active",
        "plan",
        "123412341234",
    )
    assert plan["period"]["start"] == "2013-02-11T10:00:00+00:00"
    assert plan["subject"] == {"reference": f"Patient/{mapped.patient_id}"}
    assert "activity" not in plan
    assert provenance["target"] == [{"reference": f"CarePlan/{plan['id']}"}]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "UCLH"


@pytest.mark.parametrize("name", ["ms-ADT01-28.hl7", "ms-ADT-A03-02.hl7"])
def test_a_message_without_an_nhs_number_is_quarantined_as_missing(mapper: Mapper, name: str) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.map(record_of((HL7 / name).read_bytes()))
    assert caught.value.issue.reason == "nhs-number-missing"


@pytest.mark.parametrize(
    ("nhs", "reason"), [("9990000017", "nhs-number-check-digit"), ("99900", "nhs-number-format")]
)
def test_a_bad_nhs_number_is_quarantined_with_its_reason(mapper: Mapper, nhs: str, reason: str) -> None:
    record = record_of(adt(PID.replace("999 000 0018", nhs), event="A08"))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == reason
    assert nhs not in str(caught.value)


@pytest.mark.parametrize(("pid32", "code"), [("", "02"), ("01", "01"), ("03", "03")])
def test_verification_status_comes_from_pid_32_or_defaults_to_not_traced(
    mapper: Mapper, pid32: str, code: str
) -> None:
    pid = PID + "|" * 21 + pid32
    patient = validated(mapper.map(record_of(adt(pid, event="A08"))))["Patient"]
    assert patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == code


def test_an_unknown_pid_32_is_quarantined_not_guessed(mapper: Mapper) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.map(record_of(adt(PID + "|" * 21 + "AL", event="A08")))
    assert caught.value.issue.reason == "unknown-code"


def test_demographics_land_in_uk_core_elements(mapper: Mapper) -> None:
    patient = validated(mapper.map(record_of(adt(PID, "PD1|||P^^^^^^^^^Y90001", event="A08"))))["Patient"]
    assert patient["identifier"][0]["value"] == "9990000018"  # spaces removed
    assert patient["name"] == [
        {"use": "official", "family": "Smith", "given": ["Ann", "Mary"], "prefix": ["Mrs"]}
    ]
    assert patient["address"] == [
        {
            "use": "home",
            "line": ["1 Mill Lane"],
            "city": "Barking",
            "postalCode": "IG11 7AB",
            "country": "GBR",
        }
    ]
    assert patient["generalPractitioner"][0]["identifier"]["value"] == "Y90001"
    assert "telecom" not in patient  # no phone: no half-empty ContactPoint


def test_follow_ups_become_activities_with_snomed_codes_due_dates_and_performers(mapper: Mapper) -> None:
    data = adt(
        PID, PV1, follow_up(1, "GPREVIEW^Review by GP^L"), follow_up(2, "SOCCARE^Social care^L", ods="Z9A01")
    )
    plan = validated(mapper.map(record_of(data)))["CarePlan"]
    first, second = (a["detail"] for a in plan["activity"])
    assert first["code"]["coding"][0] == {"system": SCT, "code": "185389009", "display": "Follow-up visit"}
    assert (first["kind"], first["status"], first["description"]) == (
        "ServiceRequest",
        "not-started",
        "Review by GP",
    )
    assert first["scheduledPeriod"] == {"end": "2026-04-12"}
    assert first["performer"][0]["identifier"]["value"] == "Y90001"
    assert second["code"]["coding"][0]["code"] == "306238000"
    assert second["performer"][0]["identifier"]["value"] == "Z9A01"
    assert plan["period"]["start"] == "2026-04-05T14:00:00+01:00"  # local time, British Summer Time
    assert plan["author"]["identifier"]["value"] == "R9Z01"


def test_an_unknown_follow_up_code_is_kept_and_reported(mapper: Mapper) -> None:
    mapped = mapper.map(record_of(adt(PID, PV1, follow_up(1, "XFU99^Ring the ward^L"))))
    detail = validated(mapped)["CarePlan"]["activity"][0]["detail"]
    assert detail["code"]["coding"][0] == {
        "system": "https://fhir.concord.health/CodeSystem/acute-follow-up",
        "code": "XFU99",
    }
    assert detail["description"] == "Ring the ward"
    assert [(w.reason, w.field) for w in mapped.warnings] == [("unknown-code", "code")]


def test_a_cancelled_discharge_revokes_the_same_care_plan(mapper: Mapper) -> None:
    discharge = validated(mapper.map(record_of(adt(PID, PV1, follow_up(1, "BLOODS^Bloods^L")))))["CarePlan"]
    cancel = validated(mapper.map(record_of(adt(PID, PV1, event="A13"))))["CarePlan"]
    assert cancel["id"] == discharge["id"]
    assert (discharge["status"], cancel["status"]) == ("active", "revoked")
    assert "activity" not in cancel


def test_mapping_is_deterministic(mapper: Mapper) -> None:
    data = adt(PID, PV1, follow_up(1, "WOUND^Wound care^L"))
    assert mapper.map(record_of(data)) == mapper.map(record_of(data))


def test_the_acute_maps_use_only_the_checked_snomed_concepts() -> None:
    tables = load_tables()
    used = {
        concept.code: concept.display
        for name in ("acute-care-plan-type", "acute-follow-up")
        for concept in tables[name].entries.values()
    }
    assert used.items() <= SNOMED.items()
    assert all(tables[name].entries for name in ("acute-address-use",))


def test_a_synthetic_feed_maps_with_exactly_the_planted_defects(mapper: Mapper) -> None:
    plan = DefectPlan(0.08, 11)
    out = io.StringIO()
    people = list(population(1200, 11))
    born = {p.nhs_number: p.birth_date.isoformat() for p in people}
    written = write_acute(people, out, random.Random(11), plan)
    outcomes: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    for item in read(out.getvalue().encode("utf-8")):
        if isinstance(item, RecordError):
            outcomes[item.reason] += 1
            continue
        try:
            mapped = mapper.map(item)
        except MappingError as exc:
            outcomes[exc.issue.reason] += 1
            continue
        outcomes["mapped"] += 1
        outcomes.update(w.reason for w in mapped.warnings)
        outcomes["birth-date-differs"] += mapped.contribution["birthDate"] != born[mapped.nhs_number]
        for resource in validated(mapped).values():
            if resource["resourceType"] == "CarePlan":
                ids[resource["id"]] += 1
                assert resource["subject"]["reference"] == f"Patient/{mapped.patient_id}"
    planted = plan.report()["acute"]
    assert sum(outcomes.values()) - outcomes["unknown-code"] - outcomes["birth-date-differs"] == written
    assert outcomes["nhs-number-check-digit"] == planted.get("bad-check-digit", 0) > 0
    assert outcomes["nhs-number-missing"] == planted.get("missing-nhs-number", 0) > 0
    assert outcomes["hl7-no-pid"] + outcomes["hl7-unreadable"] == planted.get("truncated", 0) > 0
    assert outcomes["unknown-code"] == planted.get("unknown-code", 0) > 0
    assert outcomes["birth-date-differs"] == planted.get("conflicting-birth-date", 0) > 0
    assert ids and max(ids.values()) == 1  # one discharge plan per stay
