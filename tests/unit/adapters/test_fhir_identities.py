"""Found by probing the FHIR ingest with UK Core and FHIR R4 examples it had not seen.

- UK Core's NHSNumberVerificationStatus value set holds v3-NullFlavor ``NI`` (no information)
  beside England's and Wales's code systems: a Patient sending it is valid UK Core and is read as
  sending no status (docs/sources/fhir.md), never quarantined as ``unknown-code``.
- Two entries of one Bundle that write the same resource (two CarePlans of a person with one
  identifier or id, two Patient entries that are one record of the sender) are held back:
  FHIR R4 http.html fails a transaction whose resource identities overlap, and storing one over
  the other answered both as written while the first was silently lost.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir import FhirBundleAdapter
from adapters.records import Item, RecordError, SourceRecord

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "ukcore-push"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
STATUS_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
ENGLAND = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
NUMBER = "9990001006"


def read(bundle: dict[str, Any]) -> list[Item]:
    return list(FhirBundleAdapter().read(io.BytesIO(json.dumps(bundle).encode())))


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def put(resource: dict[str, Any], n: int) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}" if "id" in resource else resource["resourceType"]
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
        "resource": resource,
        "request": {"method": "PUT" if "id" in resource else "POST", "url": url},
    }


def patient(*codings: dict[str, str], family: str = "Example") -> dict[str, Any]:
    ident: dict[str, Any] = {"system": NHS, "value": NUMBER}
    if codings:
        ident["extension"] = [{"url": STATUS_URL, "valueCodeableConcept": {"coding": list(codings)}}]
    return {"resourceType": "Patient", "id": "p1", "identifier": [ident], "name": [{"family": family}]}


def plan(title: str, **ids: Any) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        **ids,
        "status": "active",
        "intent": "plan",
        "title": title,
        "subject": {"reference": "Patient/p1"},
    }


# --- v3-NullFlavor NI: a member of UK Core's required value set ---------------------------------


def test_a_verification_status_of_no_information_is_read_as_no_status() -> None:
    [record] = read(transaction(put(patient({"system": NULL_FLAVOR, "code": "NI"}), 0)))
    assert isinstance(record, SourceRecord), getattr(record, "reason", None)
    assert record.fields["nhs_number_status"] == ""
    assert record.fields["nhs_number_verification"] == []
    assert record.fields["nhs_number_verification_wales"] == []


def test_an_england_status_beside_no_information_is_taken() -> None:
    codings = ({"system": NULL_FLAVOR, "code": "NI"}, {"system": ENGLAND, "code": "01"})
    [record] = read(transaction(put(patient(*codings), 0)))
    assert isinstance(record, SourceRecord)
    assert record.fields["nhs_number_verification"] == ["01"]


@pytest.mark.parametrize("code", ["UNK", "ASKU", "ni"])
def test_another_null_flavor_is_still_not_in_the_value_set(code: str) -> None:
    [error] = read(transaction(put(patient({"system": NULL_FLAVOR, "code": code}), 0)))
    assert isinstance(error, RecordError)
    assert error.reason == "unknown-code"


def test_the_ukcore_patient_with_no_information_is_accepted() -> None:
    """The asset: a UK Core Patient (extensions, primitive extensions, narrative) with status NI."""
    bundle = json.loads((ASSETS / "patient-nullflavor-status-bundle.json").read_text())
    items = read(bundle)
    assert [type(i).__name__ for i in items] == ["SourceRecord"], [getattr(i, "reason", None) for i in items]


# --- two entries writing one resource -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize(
    "ids",
    [
        {"identifier": [{"system": "https://epr.example/care-plan", "value": "CP-1"}]},
        {"id": "cp-1"},
    ],
)
def test_two_care_plan_entries_writing_one_plan_hold_the_record_back(kind: str, ids: dict[str, Any]) -> None:
    items = read(
        transaction(put(patient(), 0), put(plan("first", **ids), 1), put(plan("second", **ids), 2), kind=kind)
    )
    [error] = items
    assert isinstance(error, RecordError)
    assert (error.reason, error.field, error.location) == ("fhir-duplicate-resource", "resource", "entry 0")
    assert error.detail == "entries 1 and 2 are one CarePlan: a Bundle writes a resource once"
    assert NUMBER not in error.detail


def test_two_care_plans_with_their_own_identifiers_are_both_read() -> None:
    first = plan("first", identifier=[{"system": "urn:a", "value": "1"}])
    second = plan("second", identifier=[{"system": "urn:a", "value": "2"}])
    [record] = read(transaction(put(patient(), 0), put(first, 1), put(second, 2)))
    assert isinstance(record, SourceRecord)
    assert [p["title"] for p in record.fields["care_plans"]] == ["first", "second"]


def test_two_patient_entries_that_are_one_record_are_both_held_back() -> None:
    items = read(transaction(put(patient(family="First"), 0), put(patient(family="Second"), 1)))
    assert [(type(i).__name__, i.location) for i in items] == [
        ("RecordError", "entry 0"),
        ("RecordError", "entry 1"),
    ]
    for error in items:
        assert isinstance(error, RecordError)
        assert error.reason == "fhir-duplicate-resource"
        assert (
            error.detail
            == "entries 0 and 1 are the same Patient of this sender: a Bundle writes a resource once"
        )


def test_two_patient_entries_by_nhs_number_alone_are_one_record() -> None:
    """Without an id or a stable fullUrl a Patient is keyed on its NHS number."""
    one, two = patient(family="First"), patient(family="Second")
    del one["id"], two["id"]
    items = read(transaction(put(one, 0), put(two, 1)))
    assert {getattr(i, "reason", None) for i in items} == {"fhir-duplicate-resource"}


def test_two_patient_entries_with_their_own_ids_stay_two_records() -> None:
    """docs/api-write.md: a sender may hold two records for a person (``Patient/a`` and ``Patient/b``)."""
    other = patient(family="Second")
    other["id"] = "p2"
    items = read(transaction(put(patient(), 0), put(other, 1)))
    assert [type(i).__name__ for i in items] == ["SourceRecord", "SourceRecord"]


def test_a_repeated_patient_beside_others_holds_back_only_that_person() -> None:
    other = {"resourceType": "Patient", "id": "p9", "identifier": [{"system": NHS, "value": "9990001014"}]}
    items = read(transaction(put(patient(), 0), put(other, 1), put(patient(family="Again"), 2)))
    kinds = [(i.location, type(i).__name__) for i in items]
    assert kinds == [("entry 0", "RecordError"), ("entry 1", "SourceRecord"), ("entry 2", "RecordError")]


def test_the_same_resource_sent_twice_loses_nothing_and_is_taken() -> None:
    """Identical entries write the same content: nothing is lost, so nothing is held back."""
    ids = {"identifier": [{"system": "urn:a", "value": "1"}]}
    items = read(transaction(put(patient(), 0), put(plan("same", **ids), 1), put(plan("same", **ids), 2)))
    assert [type(i).__name__ for i in items] == ["SourceRecord"]
    items = read(transaction(put(patient(), 0), put(patient(), 1)))
    assert [type(i).__name__ for i in items] == ["SourceRecord", "SourceRecord"]
