"""The FHIR Bundle adapter: grouping per person, reference forms, every RecordError reason, replay."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir import FhirBundleAdapter
from adapters.records import AdapterError, Item, RecordError, SourceRecord
from mappings import nhs_number

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / ".." / "shared" / "fixtures"
UKCORE = FIXTURES / "ukcore-examples" / "json"
R4 = FIXTURES / "r4-examples"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
TEST_NUMBER = "9990000018"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def richard() -> dict[str, Any]:
    return load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")


def wellness_plan() -> dict[str, Any]:
    return load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")


def entry(resource: Any, full_url: str | None = None, method: str | None = "POST") -> dict[str, Any]:
    out: dict[str, Any] = {"resource": resource}
    if full_url:
        out["fullUrl"] = full_url
    if method and isinstance(resource, dict):
        out["request"] = {"method": method, "url": resource.get("resourceType", "")}
    return out


def bundle(*entries: Any, kind: str = "transaction", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, **extra, "entry": list(entries)}


def read(data: dict[str, Any] | bytes | str, adapter: FhirBundleAdapter | None = None) -> list[Item]:
    raw = data if isinstance(data, bytes | str) else json.dumps(data)
    stream = io.BytesIO(raw.encode() if isinstance(raw, str) else raw)
    return list((adapter or FhirBundleAdapter()).read(stream))


def records(items: list[Item]) -> list[SourceRecord]:
    return [i for i in items if isinstance(i, SourceRecord)]


def errors(items: list[Item]) -> list[RecordError]:
    return [i for i in items if isinstance(i, RecordError)]


def with_number(patient: dict[str, Any], number: str = TEST_NUMBER) -> dict[str, Any]:
    patient = copy.deepcopy(patient)
    patient["identifier"] = [{"system": NHS, "value": number}]
    return patient


def test_ukcore_patient_and_its_care_plan_are_one_record() -> None:
    assert nhs_number.is_valid("9912003888")  # the UK Core example's number passes Modulus 11
    items = read(
        bundle(
            entry(wellness_plan(), "urn:uuid:5b0f41bb-3c1f-4b3a-9f0c-000000000001"),
            entry(richard(), "urn:uuid:5b0f41bb-3c1f-4b3a-9f0c-000000000002", "PUT"),
            timestamp="2026-03-01T09:30:00+00:00",
        )
    )
    [record] = items
    assert isinstance(record, SourceRecord)
    assert (record.source, record.location) == ("fhir", "entry 1")
    assert record.local_id == "Patient/UKCore-Patient-RichardSmith-Example"
    fields = record.fields
    assert fields["nhs_number"] == "9912003888"
    assert fields["nhs_number_status"] == "01"
    assert fields["nhs_number_verification"] == ["01"]
    assert fields["patient"] == richard()
    assert fields["recorded_at"] == "2026-03-01T09:30:00+00:00"
    assert fields["source_ods"] == ""
    [plan] = fields["care_plans"]
    assert plan["local_id"] == "CarePlan/UKCore-CarePlan-WellnessPlan-Example"
    assert plan["status"] == "active"


def test_references_to_the_person_become_references_by_nhs_number() -> None:
    [record] = records(read(bundle(entry(richard()), entry(wellness_plan()))))
    [plan] = record.fields["care_plans"]
    by_number = {"system": NHS, "value": "9912003888"}
    assert plan["subject"] == {"type": "Patient", "identifier": by_number, "display": "Richard SMITH"}
    assert plan["activity"][0]["detail"]["performer"] == [{"type": "Patient", "identifier": by_number}]
    # what was sent is kept for replay untouched
    assert "Patient/UKCore-Patient-RichardSmith-Example" in record.raw


@pytest.mark.parametrize(
    ("subject", "full_url"),
    [
        (
            {"reference": "urn:uuid:0d2f7c61-7d37-4c55-8c5c-1f1f1f1f1f1f"},
            "urn:uuid:0d2f7c61-7d37-4c55-8c5c-1f1f1f1f1f1f",
        ),
        ({"reference": "Patient/p1"}, "https://sender.example.nhs.uk/fhir/Patient/p1"),
        ({"reference": "Patient/p1/_history/3"}, "https://sender.example.nhs.uk/fhir/Patient/p1"),
        (
            {"reference": "https://sender.example.nhs.uk/fhir/Patient/p1"},
            "https://sender.example.nhs.uk/fhir/Patient/p1",
        ),
        (
            {"reference": f"Patient?identifier={NHS}|{TEST_NUMBER}"},
            "urn:uuid:0d2f7c61-7d37-4c55-8c5c-1f1f1f1f1f1f",
        ),
        ({"reference": f"Patient?identifier={NHS}%7C999%20000%200018"}, None),
        ({"identifier": {"system": NHS, "value": TEST_NUMBER}}, None),
    ],
)
def test_every_reference_form_groups_the_plan_with_its_patient(
    subject: dict[str, Any], full_url: str | None
) -> None:
    patient = with_number({"resourceType": "Patient", "gender": "female"})
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subject}
    items = read(
        bundle(entry(patient, full_url), entry(plan, "urn:uuid:7e0c7d2e-0000-4000-8000-000000000001"))
    )
    [record] = items
    assert isinstance(record, SourceRecord)
    assert record.location == "entry 0"
    assert len(record.fields["care_plans"]) == 1


def test_patient_by_id_when_full_url_is_a_placeholder() -> None:
    patient = with_number({"resourceType": "Patient", "id": "p1"})
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
    }
    [record] = records(
        read(bundle(entry(plan), entry(patient, "urn:uuid:1c0e7a56-0000-4000-8000-000000000002")))
    )
    assert len(record.fields["care_plans"]) == 1


def test_plans_naming_only_an_nhs_number_form_a_record_of_their_own() -> None:
    plan = {
        "resourceType": "CarePlan",
        "identifier": [{"system": "https://sender.example/care-plan", "value": "CP-7"}],
        "status": "active",
        "intent": "plan",
        "subject": {"reference": f"Patient?identifier={NHS}|{TEST_NUMBER}"},
    }
    second = {**plan, "identifier": [{"value": "CP-8"}]}
    [record] = read(bundle(entry(plan), entry(second)))
    assert isinstance(record, SourceRecord)
    assert (record.location, record.local_id) == ("entry 0", TEST_NUMBER)
    assert record.fields["nhs_number"] == TEST_NUMBER
    assert record.fields["patient"] is None
    assert [p["local_id"] for p in record.fields["care_plans"]] == [
        "https://sender.example/care-plan|CP-7",
        "CP-8",
    ]


def test_local_ids_prefer_stable_ids_over_placeholders() -> None:
    no_id = with_number({"resourceType": "Patient"})
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "urn:uuid:a"},
    }
    [record] = records(read(bundle(entry(no_id, "urn:uuid:a"), entry(plan, "urn:uuid:b"))))
    assert record.local_id == TEST_NUMBER  # a urn:uuid lives for one Bundle; the NHS number does not change
    assert record.fields["care_plans"][0]["local_id"] == "urn:uuid:b"
    [record] = records(read(bundle(entry(no_id, "https://sender.example/fhir/Patient/9"))))
    assert record.local_id == "https://sender.example/fhir/Patient/9"
    long_url = "https://sender.example/fhir/" + "x" * 200 + "/Patient/9"
    [record] = records(read(bundle(entry(no_id, long_url))))
    assert record.local_id.startswith("sha256:") and len(record.local_id) <= 128


def test_source_ods_from_meta_source_and_the_authenticated_sender() -> None:
    meta = {"source": f"{ODS}|y90001", "lastUpdated": "2026-02-01T00:00:00Z"}
    data = bundle(entry(with_number({"resourceType": "Patient", "id": "p1"})), meta=meta)
    [record] = records(read(data))
    assert record.fields["source_ods"] == "Y90001"
    assert record.fields["recorded_at"] == "2026-02-01T00:00:00Z"
    assert record.local_id == "Patient/p1@Y90001"  # two senders' "p1" cannot collide
    [record] = records(read(data, FhirBundleAdapter(sender_ods="A81001")))
    assert record.fields["source_ods"] == "A81001"
    for source in ("https://sender.example/fhir", f"{ODS}|not an ods code", "Y90001"):
        [record] = records(
            read(bundle(entry(with_number({"resourceType": "Patient"})), meta={"source": source}))
        )
        assert record.fields["source_ods"] == ""


@pytest.mark.parametrize("kind", ["transaction", "batch", "collection"])
def test_bundle_types(kind: str) -> None:
    assert (
        len(
            records(
                read(bundle(entry(richard(), method=None if kind == "collection" else "POST"), kind=kind))
            )
        )
        == 1
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[]", "not a FHIR Bundle"),
        (json.dumps(richard()).encode(), "not a FHIR Bundle"),
        (json.dumps(bundle(kind="searchset")).encode(), "Bundle.type"),
        (json.dumps({"resourceType": "Bundle", "type": "batch", "entry": {}}).encode(), "Bundle.entry"),
        (
            json.dumps(bundle(entry(richard())))
            .replace('"gender": ', '"gender": "female", "gender": ')
            .encode(),
            "an object names 'gender' twice",
        ),
    ],
)
def test_unreadable_input_is_an_adapter_error(raw: bytes, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        read(raw)


def test_a_bundle_over_the_size_limit_is_refused() -> None:
    data = json.dumps(bundle(entry(richard())))
    with pytest.raises(AdapterError, match="larger than"):
        read(data, FhirBundleAdapter(max_chars=len(data) - 1))
    assert len(read(data, FhirBundleAdapter(max_chars=len(data)))) == 1


def test_entry_errors_keep_their_place_and_the_rest_is_read() -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    provenance = {"resourceType": "Provenance", "target": [{"reference": "Patient/p1"}]}
    unresolved = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/zz"},
    }
    not_a_patient = {**unresolved, "subject": {"reference": "Group/g1"}}
    items = read(
        bundle(
            "not an object",
            {"fullUrl": "urn:uuid:x"},
            entry({"id": "no-type"}),
            {"request": {"method": "DELETE", "url": f"Patient?identifier={NHS}|{TEST_NUMBER}"}},
            entry(observation),
            entry(provenance),
            entry(richard()),
            entry(unresolved),
            entry(not_a_patient),
            entry({"resourceType": "CarePlan", "status": "active", "intent": "plan"}),
        )
    )
    got = [(i.location, i.reason if isinstance(i, RecordError) else "record") for i in items]
    assert got == [
        ("entry 0", "fhir-invalid-entry"),
        ("entry 1", "fhir-invalid-entry"),
        ("entry 2", "fhir-invalid-entry"),
        ("entry 3", "fhir-delete-not-supported"),
        ("entry 4", "fhir-unsupported-resource"),
        ("entry 6", "record"),
        ("entry 7", "fhir-unresolved-reference"),
        ("entry 8", "fhir-unresolved-reference"),
        ("entry 9", "fhir-unresolved-reference"),
    ]
    assert errors(items)[4].detail.startswith("Observation entries are not accepted")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PATCH"])
def test_only_creates_and_updates_are_taken(method: str) -> None:
    items = read(bundle(entry(richard(), method=method), entry(with_number(richard(), "9990000026"))))
    assert [(i.location, i.reason) for i in errors(items)] == [("entry 0", "fhir-method-not-supported")]
    assert errors(items)[0].field == "request.method"
    assert len(records(items)) == 1  # the next entry still goes through


ID_DIFFERS = "request.url names another id than the resource's"
TYPE_DIFFERS = "request.url names another resource type than the resource"


@pytest.mark.parametrize(
    ("method", "url", "problem"),
    [
        ("PUT", "Patient/p-other", ID_DIFFERS),  # FHIR update: body id and URL id must agree
        ("PUT", "https://ehr.example.nhs.uk/fhir/Patient/p-other", ID_DIFFERS),
        ("POST", "CarePlan", TYPE_DIFFERS),
        ("PUT", "CarePlan/p1", TYPE_DIFFERS),
        ("PUT", "Patient/p1", None),
        ("PUT", "https://ehr.example.nhs.uk/fhir/Patient/p1", None),
        (
            "PUT",
            f"Patient?identifier={NHS}|9912003888",
            None,
        ),  # a conditional update naming the body's number
        ("POST", "Patient", None),
        ("POST", "https://ehr.example.nhs.uk/fhir/Patient/", None),
    ],
)
def test_the_request_url_must_name_the_entrys_own_type_and_id(
    method: str, url: str, problem: str | None
) -> None:
    patient = {**richard(), "id": "p1"}
    items = read(bundle({"resource": patient, "request": {"method": method, "url": url}}))
    if problem is None:
        assert errors(items) == [] and len(records(items)) == 1
    else:
        [error] = errors(items)
        assert (error.reason, error.field) == ("fhir-url-mismatch", "request.url")
        assert error.detail == problem


def test_ambiguous_and_conflicting_nhs_numbers_are_not_guessed() -> None:
    twin = {"resourceType": "Patient", "identifier": [{"system": NHS, "value": TEST_NUMBER}]}
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": f"Patient?identifier={NHS}|{TEST_NUMBER}"},
    }
    items = read(bundle(entry(twin), entry(twin), entry(plan)))
    assert [i.reason for i in errors(items)] == ["fhir-unresolved-reference"]
    assert "more than one" in errors(items)[0].detail
    two = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": TEST_NUMBER}, {"system": NHS, "value": "9990000026"}],
    }
    [error] = read(bundle(entry(two)))
    assert isinstance(error, RecordError) and error.reason == "fhir-nhs-number-conflict"


def test_no_patient_data_in_error_details() -> None:
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/Smith-9990000018"},
    }
    for item in read(
        bundle(
            entry(plan), {"request": {"method": "DELETE", "url": f"Patient?identifier={NHS}|{TEST_NUMBER}"}}
        )
    ):
        assert isinstance(item, RecordError)
        assert TEST_NUMBER not in item.detail and "Smith" not in item.detail
        assert TEST_NUMBER in item.raw  # the raw entry is kept for replay


def test_every_item_rereads_from_its_raw() -> None:
    meta = {"source": f"{ODS}|Y90001"}
    plan_only = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"identifier": {"system": NHS, "value": "9990000026"}},
    }
    data = bundle(
        entry(wellness_plan()),
        entry({"resourceType": "Observation"}),
        entry(richard(), "urn:uuid:ab"),
        entry(plan_only),
        meta=meta,
        timestamp="2026-01-01T00:00:00Z",
    )
    items = read(data, FhirBundleAdapter(sender_ods="A81001"))
    assert len(items) == 3
    adapter = FhirBundleAdapter()  # replay runs without the request's sender: the raw keeps it
    for item in items:
        assert list(adapter.reread(item.raw, item.location)) == [item]


def test_text_stream_with_bom() -> None:
    text = "\ufeff" + json.dumps(bundle(entry(richard())))
    assert len(list(FhirBundleAdapter().read(io.StringIO(text.lstrip("\ufeff"))))) == 1
    assert len(list(FhirBundleAdapter().read(io.BytesIO(text.encode())))) == 1


EXAMPLE_PATIENTS = sorted(R4.glob("Patient-*.json")) + sorted(
    p for p in UKCORE.glob("*.json") if "CarePlan" not in p.name
)


@pytest.mark.parametrize("path", EXAMPLE_PATIENTS, ids=lambda p: p.name)
def test_every_example_patient_is_a_record(path: Path) -> None:
    patient = load(path)
    [record] = read(bundle(entry(patient, f"urn:uuid:{path.stem}")))
    assert isinstance(record, SourceRecord)
    assert record.fields["patient"] == patient
    assert record.fields["nhs_number"] == ("9912003888" if "RichardSmith" in path.name else "")


# --- what cannot be processed as if it were absent (FHIR R4 extensibility, resource.html) ----------

MODIFIER = [
    {"url": "https://ehr.example.nhs.uk/fhir/StructureDefinition/not-for-sharing", "valueBoolean": True}
]


def a_plan(**extra: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/UKCore-Patient-RichardSmith-Example"},
        "activity": [{"detail": {"kind": "ServiceRequest", "status": "scheduled"}}],
    }
    plan.update(extra)
    return plan


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("patient", "resource.modifierExtension"),
        ("plan", "resource.modifierExtension"),
        ("activity", "resource.activity[0].modifierExtension"),
        ("detail", "resource.activity[0].detail.modifierExtension"),
        ("contained", "resource.contained[0].modifierExtension"),
        ("request", "request.modifierExtension"),
    ],
)
def test_a_modifier_extension_quarantines_the_whole_record(where: str, field: str) -> None:
    patient, plan = richard(), a_plan()
    plan_entry = entry(plan)
    if where == "patient":
        patient["modifierExtension"] = MODIFIER
    elif where == "plan":
        plan["modifierExtension"] = MODIFIER
    elif where == "activity":
        plan["activity"][0]["modifierExtension"] = MODIFIER
    elif where == "detail":
        plan["activity"][0]["detail"]["modifierExtension"] = MODIFIER
    elif where == "contained":
        plan["contained"] = [{"resourceType": "Goal", "id": "g", "modifierExtension": MODIFIER}]
    else:
        plan_entry["request"]["modifierExtension"] = MODIFIER
    other = with_number(richard(), "9990000026")
    other["id"] = "someone-else"
    items = read(bundle(entry(patient), plan_entry, entry(other)))
    [error] = errors(items)
    assert (error.location, error.reason, error.field) == ("entry 0", "fhir-modifier-extension", field)
    assert error.detail.startswith(f"entry {0 if where == 'patient' else 1}: {field} is a modifier extension")
    assert "not-for-sharing" not in error.detail  # the path, never the values
    assert len(records(items)) == 1  # the other person's record is read as usual
    assert list(FhirBundleAdapter().reread(error.raw, error.location)) == [error]


@pytest.mark.parametrize("contained", [False, True])
def test_implicit_rules_quarantine_the_whole_record(contained: bool) -> None:
    rules = "https://ehr.example.nhs.uk/fhir/rules/local-v2"
    plan = (
        a_plan(contained=[{"resourceType": "Goal", "id": "g", "implicitRules": rules}])
        if contained
        else a_plan()
    )
    patient = richard() if contained else {**richard(), "implicitRules": rules}
    [error] = read(bundle(entry(patient), entry(plan)))
    assert isinstance(error, RecordError)
    assert error.reason == "fhir-implicit-rules"
    assert error.field == ("resource.contained[0].implicitRules" if contained else "resource.implicitRules")
    assert rules not in error.detail


def test_a_bundle_with_implicit_rules_is_not_read() -> None:
    with pytest.raises(AdapterError, match="implicitRules"):
        read(bundle(entry(richard()), implicitRules="https://ehr.example.nhs.uk/fhir/rules/bundle"))


CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def labelled(*labels: tuple[str, str]) -> dict[str, Any]:
    return {"security": [{"system": system, "code": code} for system, code in labels]}


@pytest.mark.parametrize("code", ["U", "L", "M", "N"])
def test_a_normal_confidentiality_label_is_taken(code: str) -> None:
    [record] = read(bundle(entry({**richard(), "meta": labelled((CONFIDENTIALITY, code))}), entry(a_plan())))
    assert isinstance(record, SourceRecord)


@pytest.mark.parametrize(
    ("label", "where", "shown"),
    [
        ((CONFIDENTIALITY, "R"), "patient", "R"),  # PDS: a person whose address may not be shared
        ((CONFIDENTIALITY, "V"), "plan", "V"),
        (("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY"), "contained", "of another kind"),
        ((CONFIDENTIALITY, "9990000018"), "patient", "of another kind"),  # never echoes a value
        ((CONFIDENTIALITY, "Smith"), "patient", "of another kind"),  # nor a word it does not know
    ],
)
def test_a_restrictive_security_label_quarantines_the_whole_record(
    label: tuple[str, str], where: str, shown: str
) -> None:
    patient, plan = richard(), a_plan()
    if where == "patient":
        patient["meta"] = labelled((CONFIDENTIALITY, "N"), label)
    elif where == "plan":
        plan["meta"] = labelled(label)
    else:
        plan["contained"] = [{"resourceType": "Goal", "id": "g", "meta": labelled(label)}]
    [error] = read(bundle(entry(patient), entry(plan)))
    assert isinstance(error, RecordError)
    assert error.reason == "fhir-security-label"
    field = {"patient": "resource.meta", "plan": "resource.meta", "contained": "resource.contained[0].meta"}
    assert error.field == f"{field[where]}.security"
    assert f"security label {shown} " in error.detail
    assert "9990000018" not in error.detail


def test_a_bundle_with_a_restrictive_security_label_is_not_read() -> None:
    with pytest.raises(AdapterError, match=r"Bundle\.meta\.security: security label R "):
        read(bundle(entry(richard()), meta=labelled((CONFIDENTIALITY, "R"))))


# --- conditional interactions: honoured or refused, never ignored (FHIR R4 http.html) --------------


def conditional(resource: dict[str, Any], **request: str) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"ifNoneExist": f"identifier={NHS}|9912003888"}, "request.ifNoneExist"),
        ({"ifNoneMatch": 'W/"1"'}, "request.ifNoneMatch"),
        ({"ifModifiedSince": "2026-01-01T00:00:00Z"}, "request.ifModifiedSince"),
        (
            {"method": "PUT", "url": "Patient/UKCore-Patient-RichardSmith-Example", "ifMatch": 'W/"1"'},
            "request.ifMatch",
        ),
        ({"method": "PUT", "url": "Patient?name=Smith"}, "request.url"),
        ({"method": "PUT", "url": "Patient?identifier=https://ehr.example.nhs.uk/mrn|123"}, "request.url"),
        (
            {"method": "PUT", "url": f"Patient?identifier={NHS}|9912003888&birthdate=1970-01-01"},
            "request.url",
        ),
        (
            {"url": f"Patient?identifier={NHS}|9912003888"},
            "request.url",
        ),  # a POST: conditional create is ifNoneExist
    ],
)
def test_conditional_interactions_this_gateway_cannot_honour_are_refused(
    request_: dict[str, str], field: str
) -> None:
    items = read(bundle(conditional(richard(), **request_), entry(a_plan())))
    [error] = items
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("fhir-conditional-not-supported", field)
    assert "9912003888" not in error.detail


def test_a_conditional_update_naming_another_nhs_number_than_the_body_is_refused() -> None:
    """The probe's case: PUT Patient?identifier=...|A with a body carrying B was stored under B."""
    url = f"Patient?identifier={NHS}|{TEST_NUMBER}"
    [error] = read(bundle(conditional(richard(), method="PUT", url=url)))
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("fhir-conditional-mismatch", "request.url")
    assert TEST_NUMBER not in error.detail and "9912003888" not in error.detail
    for agreeing in (f"Patient?identifier={NHS}|9912003888", f"Patient?identifier={NHS}%7C991%20200%203888"):
        [record] = read(bundle(conditional(richard(), method="PUT", url=agreeing)))
        assert isinstance(record, SourceRecord)


def test_a_conditional_update_of_a_care_plan_is_keyed_on_its_identifier() -> None:
    ident = {"system": "https://ehr.example.nhs.uk/care-plan", "value": "CP-42"}
    plan = a_plan(identifier=[{"system": "https://ehr.example.nhs.uk/other", "value": "X"}, ident])
    url = f"CarePlan?identifier={ident['system']}|{ident['value']}"
    [record] = read(bundle(entry(richard()), conditional(plan, method="PUT", url=url)))
    assert isinstance(record, SourceRecord)
    assert record.fields["care_plans"][0]["local_id"] == "https://ehr.example.nhs.uk/care-plan|CP-42"
    other = f"CarePlan?identifier={ident['system']}|CP-43"
    [error] = read(bundle(entry(richard()), conditional(plan, method="PUT", url=other)))
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("fhir-conditional-mismatch", "request.url")


def test_if_match_is_taken_on_care_plan_updates_only_when_the_caller_checks_it() -> None:
    plan = {**a_plan(), "id": "cp1"}
    sent = bundle(entry(richard()), conditional(plan, method="PUT", url="CarePlan/cp1", ifMatch='W/"2"'))
    [error] = read(sent)  # the command line cannot compare it with the store: refused, not ignored
    assert isinstance(error, RecordError) and error.reason == "fhir-conditional-not-supported"
    [record] = read(sent, FhirBundleAdapter(checks_if_match=True))  # POST /fhir compares it
    assert isinstance(record, SourceRecord)


def test_a_record_with_if_match_rereads_whatever_it_was_held_back_for() -> None:
    """Replay rereads with an adapter that compares no versions: the precondition was the push's, so
    it is neither checked again nor refused (was quarantined again, fhir-conditional-not-supported)."""
    plan = {**a_plan(), "id": "cp1"}
    sent = bundle(entry(richard()), conditional(plan, method="PUT", url="CarePlan/cp1", ifMatch='W/"2"'))
    [record] = read(sent, FhirBundleAdapter(checks_if_match=True))
    assert isinstance(record, SourceRecord)
    held = RecordError(
        record.source, record.location, "fhir-precondition-failed", "request.ifMatch", "", record.raw
    )
    assert list(FhirBundleAdapter().reread(held.raw, held.location)) == [record]
    # Elsewhere no push takes an ifMatch: a Patient's is refused on replay as it was on the push.
    on_patient = bundle(
        conditional(
            richard(), method="PUT", url="Patient/UKCore-Patient-RichardSmith-Example", ifMatch='W/"1"'
        )
    )
    [error] = read(on_patient, FhirBundleAdapter(checks_if_match=True))
    assert isinstance(error, RecordError)
    [again] = FhirBundleAdapter().reread(error.raw, error.location)
    assert isinstance(again, RecordError) and again.reason == "fhir-conditional-not-supported"


def nested(depth: int) -> dict[str, Any]:
    """A Patient whose extension nests ``depth`` levels of objects and arrays (below the resource)."""
    deep: Any = {"url": "https://example.org/x", "valueString": "x"}
    for _ in range((depth - 1) // 2):
        deep = {"url": "https://example.org/x", "extension": [deep]}
    return {**richard(), "extension": [deep]}


@pytest.mark.parametrize("depth", [128, 300, 900])
def test_a_bundle_nested_too_deep_is_refused_whole(depth: int) -> None:
    """Was a TypeError from the JSON encoder (255 levels at most): a 500 from the API, a traceback
    from the command line. Refused before anything walks it, on read and on reread."""
    text = json.dumps(bundle(entry(nested(depth))))
    with pytest.raises(AdapterError, match="deeper than 100 levels"):
        read(text)
    with pytest.raises(AdapterError, match="deeper than 100 levels"):
        list(FhirBundleAdapter().reread(text, "entry 0"))


def test_a_bundle_at_the_depth_limit_is_read() -> None:
    [record] = read(bundle(entry(nested(95))))  # Bundle, entry, entry[0], resource: 4 levels more
    assert isinstance(record, SourceRecord)


# --- Bundle invariants (bdl-3, bdl-7) and the request element ----------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (None, "request"),
        ("POST", "request"),
        ({"method": "post", "url": "Patient"}, "request.method"),
        ({"method": "OPTIONS", "url": "Patient"}, "request.method"),
        ({"url": "Patient"}, "request.method"),
        ({"method": "POST"}, "request.url"),
        ({"method": "POST", "url": ["Patient"]}, "request.url"),
    ],
)
def test_a_transaction_or_batch_entry_must_say_what_to_do(request_: Any, field: str) -> None:
    for kind in ("transaction", "batch"):
        bad: dict[str, Any] = {"resource": with_number(richard(), "9990000026")}
        if request_ is not None:
            bad["request"] = request_
        items = read(bundle(bad, entry(richard()), kind=kind))
        [error] = errors(items)
        assert (error.location, error.reason, error.field) == ("entry 0", "fhir-invalid-entry", field)
        assert len(records(items)) == 1


def test_two_entries_with_one_full_url_are_refused_whole() -> None:
    url = "urn:uuid:0d2f7c61-7d37-4c55-8c5c-1f1f1f1f1f1f"
    with pytest.raises(AdapterError, match="entries 0 and 2 have the same fullUrl"):
        read(bundle(entry(richard(), url), entry(a_plan()), entry(with_number(richard(), "9990000026"), url)))
    versions = [
        {**with_number(richard(), n), "meta": {"versionId": v}}
        for n, v in (("9990000026", "1"), (TEST_NUMBER, "2"))
    ]
    # bdl-7 allows other versions of one fullUrl, so the Bundle is read; but two writes of one
    # resource overlap (FHIR R4 http.html), whatever NHS numbers they carry: both are held back.
    found = read(bundle(*(entry(p, url) for p in versions)))
    assert [(type(i).__name__, getattr(i, "reason", None)) for i in found] == [
        ("RecordError", "fhir-duplicate-resource")
    ] * 2


# --- references between entries --------------------------------------------------------------------


def test_references_to_another_plan_of_the_record_name_its_local_id() -> None:
    first = {**a_plan(), "identifier": [{"system": "https://ehr.example.nhs.uk/care-plan", "value": "CP-1"}]}
    second = a_plan(
        basedOn=[{"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"}],
        replaces=[{"reference": "CarePlan/cp-old", "display": "an older plan"}],
    )
    someone_else = {
        **a_plan(),
        "subject": {"identifier": {"system": NHS, "value": "9990000026"}},
        "id": "cp-other",
    }
    second["partOf"] = [{"reference": "CarePlan/cp-other"}]
    [record, other] = records(
        read(
            bundle(
                entry(richard()),
                entry(first, "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"),
                entry(second),
                entry(someone_else),
            ),
            FhirBundleAdapter(sender_ods="Y90001"),
        )
    )
    assert other.fields["nhs_number"] == "9990000026"
    plan = record.fields["care_plans"][1]
    assert plan["basedOn"] == [{"reference": "concord-plan:https://ehr.example.nhs.uk/care-plan|CP-1@Y90001"}]
    assert plan["replaces"] == [
        {"reference": "CarePlan/cp-old", "display": "an older plan"}
    ]  # not in the Bundle
    assert plan["partOf"] == [
        {"reference": "CarePlan/cp-other"}
    ]  # another person's plan: left for the mapper


# --- NHS number verification status: UK Core's England and Wales code systems ----------------------

WALES = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusWales"
ENGLAND = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
STU1 = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatus"  # what PDS sends


def with_status(*codings: dict[str, str]) -> dict[str, Any]:
    patient = richard()
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"] = {"coding": list(codings)}
    return patient


@pytest.mark.parametrize(
    ("codings", "england", "wales"),
    [
        ([{"system": WALES, "code": "nn"}], [], ["nn"]),
        ([{"system": WALES, "code": "02"}], [], ["02"]),  # Wales's 02, never rewritten as England's
        ([{"system": ENGLAND, "code": "02"}], ["02"], []),
        ([{"system": WALES, "code": "01"}, {"system": ENGLAND, "code": "01"}], ["01"], []),
        ([{"system": STU1, "code": "01"}], ["01"], []),  # STU1 held England's codes
        ([{"system": STU1, "code": "03"}, {"system": WALES, "code": "nn"}], [], ["nn"]),
    ],
)
def test_a_verification_status_stays_in_its_own_code_system(
    codings: list[dict[str, str]], england: list[str], wales: list[str]
) -> None:
    [record] = read(bundle(entry(with_status(*codings))))
    assert isinstance(record, SourceRecord)
    assert record.fields["nhs_number_verification"] == england
    assert record.fields["nhs_number_verification_wales"] == wales


@pytest.mark.parametrize("value", [9990000018, ["9990000018"], {"v": "9990000018"}])
def test_an_nhs_number_sent_as_a_json_number_is_invalid_fhir_not_missing(value: Any) -> None:
    patient = richard()
    patient["identifier"][0]["value"] = value
    [error] = read(bundle(entry(patient), entry(a_plan())))
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("fhir-invalid", "identifier.value")
    assert "9990000018" not in error.detail


@pytest.mark.parametrize(
    "coding", [{"code": "01"}, {"system": "https://ehr.example.nhs.uk/status", "code": "01"}]
)
def test_a_verification_status_in_no_uk_core_system_is_not_guessed(coding: dict[str, str]) -> None:
    [error] = read(bundle(entry(with_status(coding))))
    assert isinstance(error, RecordError)
    assert (error.reason, error.field) == ("unknown-code", "identifier.extension")
