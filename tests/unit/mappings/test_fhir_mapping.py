"""The fhir mapping specs: pushed UK Core and R4 example resources to UK Core Patient, CarePlan and Provenance.

Every mapped record runs through the same invariants: each resource validates,
ids are unique, the CarePlan's subject is the shared Patient, a ``#`` reference
names a contained resource, every contained resource is referenced (dom-3), and
any other literal reference names the person's shared Patient or a CarePlan of the
same record (anything else would be the sender's ids, or someone else's here).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir import FhirBundleAdapter
from adapters.records import SourceRecord
from mappings.engine import MappingError
from mappings.mapper import MappedRecord, Mapper
from mappings.validate import (
    NHS_NUMBER_SYSTEM,
    UKCORE_CAREPLAN,
    UKCORE_PATIENT,
    VERIFICATION_SYSTEM,
    VERIFICATION_URL,
    ValidationFailure,
    validate,
)

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / ".." / "shared" / "fixtures"
UKCORE = FIXTURES / "ukcore-examples" / "json"
R4 = FIXTURES / "r4-examples"
ODS_SOURCE = "https://fhir.nhs.uk/Id/ods-organization-code|Y90001"
TEST_NUMBER = "9990000018"
RECORDED = "2026-01-01T00:00:00+00:00"
STORED_TYPES = ("Patient/", "CarePlan/", "Provenance/")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def bundle(*resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
            "resource": r,
            "request": {"method": "POST", "url": r.get("resourceType", "")},
        }
        for n, r in enumerate(resources)
    ]
    return {"resourceType": "Bundle", "type": "transaction", **extra, "entry": entries}


def records(data: dict[str, Any]) -> list[SourceRecord]:
    items = list(FhirBundleAdapter().read(io.BytesIO(json.dumps(data).encode())))
    assert all(isinstance(i, SourceRecord) for i in items), items
    return [i for i in items if isinstance(i, SourceRecord)]


def map_one(mapper: Mapper, data: dict[str, Any]) -> MappedRecord:
    [record] = records(data)
    mapped = mapper.map(record)
    check(mapped)
    return mapped


def with_number(patient: dict[str, Any], number: str = TEST_NUMBER) -> dict[str, Any]:
    """A copy with an NHS number: keeping identifier extensions (the verification status example has one)."""
    patient = copy.deepcopy(patient)
    idents = [i for i in patient.get("identifier", []) if i.get("system") != NHS_NUMBER_SYSTEM]
    first = idents.pop(0) if idents and "value" not in idents[0] else {}
    patient["identifier"] = [{**first, "system": NHS_NUMBER_SYSTEM, "value": number}, *idents]
    return patient


def references(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        found = [(path, value["reference"])] if isinstance(value.get("reference"), str) else []
        for key, inner in value.items():
            found += references(inner, f"{path}.{key}")
        return found
    if isinstance(value, list):
        return [ref for inner in value for ref in references(inner, path)]
    return []


def check(mapped: MappedRecord) -> None:
    """The invariants every mapped record keeps."""
    patient = {"resourceType": "Patient", "id": mapped.patient_id, "meta": {"profile": [UKCORE_PATIENT]}}
    validate({**patient, **mapped.contribution})
    ids = [(r["resourceType"], r["id"]) for r in mapped.resources]
    assert len(ids) == len(set(ids))
    for resource in mapped.resources:
        resource = copy.deepcopy(resource)
        if resource["resourceType"] == "Provenance":
            resource["recorded"] = RECORDED
        validate(resource)
        assert resource, "no empty resource"
        if resource["resourceType"] != "CarePlan":
            continue
        assert resource["meta"]["profile"] == [UKCORE_CAREPLAN]
        assert resource["subject"] == {"reference": f"Patient/{mapped.patient_id}"}
        contained = {f"#{c['id']}" for c in resource.get("contained", [])}
        own = {f"Patient/{mapped.patient_id}"} | {
            f"CarePlan/{r['id']}" for r in mapped.resources if r["resourceType"] == "CarePlan"
        }
        found = references(resource)
        for path, ref in found:
            if path == ".subject":
                continue
            if ref.startswith("#"):
                assert ref in contained, path
            assert not ref.startswith(STORED_TYPES) or ref in own, (path, ref)
        assert contained <= {ref for _, ref in found}, "an unreferenced contained resource"


def test_ukcore_patient_and_care_plan(mapper: Mapper) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    mapped = map_one(mapper, bundle(plan, patient, meta={"source": ODS_SOURCE}, timestamp=RECORDED))
    assert (mapped.nhs_number, mapped.source_ods, mapped.recorded) == ("9912003888", "Y90001", RECORDED)
    body = mapped.contribution
    [ident] = body["identifier"]
    assert (ident["system"], ident["value"]) == (NHS_NUMBER_SYSTEM, "9912003888")
    [status] = ident["extension"]
    assert status["url"] == VERIFICATION_URL
    assert status["valueCodeableConcept"]["coding"][0] == {
        "system": VERIFICATION_SYSTEM,
        "code": "01",
        "display": "Number present and verified",
    }
    for element in (
        "extension",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "address",
        "contact",
        "communication",
    ):
        assert body[element] == patient[element], element
    assert "text" not in body and "id" not in body
    care_plan, provenance = mapped.resources
    assert care_plan["resourceType"] == "CarePlan" and provenance["resourceType"] == "Provenance"
    for element in (
        "identifier",
        "basedOn",
        "partOf",
        "status",
        "intent",
        "category",
        "description",
        "period",
    ):
        assert care_plan[element] == plan[element], element
    assert "author" not in care_plan  # a literal reference to the sender's Practitioner: nothing to keep
    detail = care_plan["activity"][0]["detail"]
    assert detail["performer"] == [{"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9912003888"}}]
    assert detail["location"] == {"display": "Patient's home"}
    assert provenance["target"] == [{"reference": f"CarePlan/{care_plan['id']}"}]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "Y90001"


def test_author_by_identifier_is_kept(mapper: Mapper) -> None:
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    author = {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}}
    plan["author"] = {"reference": "Organization/o1", **author, "display": "Barking Medical Group"}
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    [care_plan, _] = map_one(mapper, bundle(patient, plan)).resources
    assert care_plan["author"] == {**author, "display": "Barking Medical Group"}


@pytest.mark.parametrize(
    "path", sorted(p for p in UKCORE.glob("*.json") if "CarePlan" not in p.name), ids=lambda p: p.name
)
def test_every_ukcore_patient_example_maps_and_validates(mapper: Mapper, path: Path) -> None:
    patient = load(path)
    if "RichardSmith" not in path.name:
        patient = with_number(patient)
    mapped = map_one(mapper, bundle(patient))
    assert mapped.resources == []
    sent = {k: v for k, v in patient.items() if k not in ("resourceType", "id", "text", "identifier", "meta")}
    assert {k: mapped.contribution[k] for k in sent} == sent


def resolvable(references: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """References as stored: a contained one as sent, a literal one reduced to identifier and display."""
    kept = [
        {k: v for k, v in ref.items() if k != "reference" or v.startswith("#")} for ref in references or ()
    ]
    return [ref for ref in kept if ref] or None


def test_literal_references_to_resources_never_stored_keep_only_identifier_and_display(
    mapper: Mapper,
) -> None:
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    plan["subject"] = {"reference": f"Patient?identifier={NHS_NUMBER_SYSTEM}|{TEST_NUMBER}"}
    plan["contained"] = [
        {
            "resourceType": "Goal",
            "id": "walk",
            "lifecycleStatus": "active",
            "description": {"text": "Walk to the shops"},
            "subject": {"reference": f"Patient?identifier={NHS_NUMBER_SYSTEM}|{TEST_NUMBER}"},
        }
    ]
    plan["goal"] = [{"reference": "#walk"}, {"reference": "Goal/elsewhere"}]
    plan["addresses"] = [{"reference": "Condition/c1", "display": "Asthma"}]
    plan["careTeam"] = [
        {
            "reference": "https://ehr.example.org/fhir/CareTeam/7",
            "identifier": {"system": "https://ehr.example.org/team", "value": "7"},
        }
    ]
    plan["activity"] = [
        {"detail": {"status": "scheduled", "location": {"reference": "Location/l1", "display": "Day centre"}}}
    ]
    [care_plan, _] = map_one(mapper, bundle(plan)).resources
    assert care_plan["goal"] == [{"reference": "#walk"}]
    assert care_plan["addresses"] == [{"display": "Asthma"}]
    assert care_plan["careTeam"] == [{"identifier": {"system": "https://ehr.example.org/team", "value": "7"}}]
    assert care_plan["activity"][0]["detail"]["location"] == {"display": "Day centre"}


@pytest.mark.parametrize("path", sorted(R4.glob("CarePlan-*.json")), ids=lambda p: p.name)
def test_every_r4_care_plan_maps_and_validates(mapper: Mapper, path: Path) -> None:
    plan = load(path)
    patient = with_number(load(R4 / "Patient-example.json"))
    patient["id"] = plan["subject"]["reference"].removeprefix("Patient/")
    mapped = map_one(mapper, bundle(plan, patient))
    [care_plan, _] = mapped.resources
    for element in ("status", "intent"):
        assert care_plan.get(element) == plan.get(element), element
    for element in ("addresses", "goal", "careTeam"):
        assert care_plan.get(element) == resolvable(plan.get(element)), element
    for contained in care_plan.get("contained", []):
        if "subject" in contained:  # the sender's Patient/... became the person's NHS number
            assert contained["subject"]["identifier"] == {"system": NHS_NUMBER_SYSTEM, "value": TEST_NUMBER}
    assert len(care_plan["activity"]) == len(plan["activity"])


@pytest.mark.parametrize("path", sorted(R4.glob("Patient-*.json")), ids=lambda p: p.name)
def test_r4_patients_without_an_nhs_number_are_quarantined(mapper: Mapper, path: Path) -> None:
    [record] = records(bundle(load(path)))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == "nhs-number-missing"
    mapped = map_one(mapper, bundle(with_number(load(path))))  # and with one, they map
    assert mapped.contribution["gender"] == load(path)["gender"]


def test_r4_care_plan_with_its_r4_patient_is_quarantined_not_crashed(mapper: Mapper) -> None:
    [record] = records(bundle(load(R4 / "CarePlan-example.json"), load(R4 / "Patient-example.json")))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == "nhs-number-missing"


def test_plans_naming_only_an_nhs_number(mapper: Mapper) -> None:
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    plan["subject"] = {"reference": f"Patient?identifier={NHS_NUMBER_SYSTEM}|999 000 0018"}
    mapped = map_one(mapper, bundle(plan))
    # no status was sent: no verification extension (an extension with only a url is invalid)
    assert mapped.contribution == {"identifier": [{"system": NHS_NUMBER_SYSTEM, "value": TEST_NUMBER}]}
    assert mapped.local_id == TEST_NUMBER
    assert [r["resourceType"] for r in mapped.resources] == ["CarePlan", "Provenance"]


def test_reposting_with_fresh_placeholders_lands_on_the_same_ids(mapper: Mapper) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    first = map_one(mapper, bundle(plan, patient))
    again = bundle(patient, plan)  # other order, other urn:uuids
    for n, e in enumerate(again["entry"]):
        e["fullUrl"] = f"urn:uuid:11111111-0000-4000-8000-{n:012d}"
    second = map_one(mapper, again)
    assert (second.patient_id, second.local_id, second.contribution) == (
        first.patient_id,
        first.local_id,
        first.contribution,
    )
    assert second.resources == first.resources


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": None}, "required-field-missing"),
        ({"intent": None}, "required-field-missing"),
    ],
)
def test_care_plan_mapping_errors(mapper: Mapper, change: dict[str, Any], reason: str) -> None:
    plan = {
        k: v for k, v in load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json").items() if k not in change
    }
    [record] = records(bundle(load(UKCORE / "UKCore-Patient-RichardSmith-Example.json"), plan))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == reason


def test_unknown_verification_status_is_quarantined(mapper: Mapper) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "99"
    [record] = records(bundle(patient))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == "unknown-code"


@pytest.mark.parametrize(
    ("gender", "valid"), [("female", True), ("unknown", True), ("F", False), ("woman", False)]
)
def test_gender_is_copied_and_checked_by_validation(mapper: Mapper, gender: str, valid: bool) -> None:
    patient = with_number({"resourceType": "Patient", "gender": gender})
    [record] = records(bundle(patient))
    mapped = mapper.map(record)
    assert mapped.contribution["gender"] == gender
    resource = {"resourceType": "Patient", "id": mapped.patient_id, **mapped.contribution}
    if valid:
        validate(resource)
        return
    with pytest.raises(ValidationFailure) as caught:
        validate(resource)
    assert caught.value.reason == "code-not-in-value-set"


def test_references_that_could_name_stored_resources_keep_identifier_and_display(mapper: Mapper) -> None:
    patient = with_number({"resourceType": "Patient", "id": "p1"})
    patient["generalPractitioner"] = [
        {
            "reference": "Organization/gp",
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"},
        },
        {"reference": "Practitioner/dr"},
    ]
    patient["link"] = [{"other": {"reference": "Patient/someone-else"}, "type": "seealso"}]
    patient["managingOrganization"] = {"reference": "Organization/gp", "display": "Barking Medical Group"}
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "basedOn": [{"reference": "CarePlan/other"}],
        "supportingInfo": [{"reference": "Patient/someone-else", "display": "a relative"}],
        "note": [{"authorReference": {"reference": "Practitioner/dr"}, "text": "reviewed"}],
    }
    mapped = map_one(mapper, bundle(patient, plan))
    body = mapped.contribution
    assert body["generalPractitioner"] == [
        {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}}
    ]
    assert "link" not in body
    assert body["managingOrganization"] == {"display": "Barking Medical Group"}
    [care_plan, _] = mapped.resources
    assert "basedOn" not in care_plan
    assert care_plan["supportingInfo"] == [{"display": "a relative"}]
    assert care_plan["note"] == [{"text": "reviewed"}]


# --- references inside the pushed Bundle, contained resources (dom-3), what else is carried ---------

WALES = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusWales"


def a_plan(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


def test_references_between_plans_of_one_push_name_the_ids_given_here(mapper: Mapper) -> None:
    """basedOn, partOf and replaces pointing at another CarePlan entry's urn:uuid (FHIR transaction rule)."""
    patient = with_number({"resourceType": "Patient", "id": "p1"})
    old = a_plan(identifier=[{"system": "https://ehr.example.nhs.uk/care-plan", "value": "CP-1"}])
    new = a_plan(
        id="cp-2",
        basedOn=[{"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}],
        replaces=[{"reference": "urn:uuid:00000000-0000-4000-8000-000000000001", "display": "the old plan"}],
        partOf=[{"reference": "CarePlan/elsewhere", "display": "held at the sender"}],
        supportingInfo=[{"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}],
    )
    mapped = map_one(mapper, bundle(patient, old, new))
    [old_plan, _, new_plan, _] = mapped.resources
    target = f"CarePlan/{old_plan['id']}"
    assert new_plan["basedOn"] == [{"reference": target}]
    assert new_plan["replaces"] == [{"reference": target, "display": "the old plan"}]
    assert new_plan["supportingInfo"] == [{"reference": target}]
    assert new_plan["partOf"] == [{"display": "held at the sender"}]  # a reference that resolves nowhere here


def test_a_reference_to_another_persons_plan_is_not_stored(mapper: Mapper) -> None:
    mine = with_number({"resourceType": "Patient", "id": "p1"})
    theirs = with_number({"resourceType": "Patient", "id": "p2"}, "9990000026")
    their_plan = {**a_plan(id="cp-theirs"), "subject": {"reference": "Patient/p2"}}
    my_plan = a_plan(basedOn=[{"reference": "CarePlan/cp-theirs", "display": "a relative's plan"}])
    found = records(bundle(mine, theirs, their_plan, my_plan))
    mapped = [mapper.map(r) for r in found]
    for m in mapped:
        check(m)
    [plan] = [
        r
        for m in mapped
        if m.nhs_number == TEST_NUMBER
        for r in m.resources
        if r["resourceType"] == "CarePlan"
    ]
    assert plan["basedOn"] == [{"display": "a relative's plan"}]


def test_references_to_contained_resources_are_kept_and_unreferenced_ones_dropped(mapper: Mapper) -> None:
    """The probe's plan: author, performer and supportingInfo named contained resources by #id."""
    practitioner = {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Ward"}]}
    report = {
        "resourceType": "DocumentReference",
        "id": "r4b",
        "status": "current",
        "content": [{"attachment": {"title": "assessment"}}],
    }
    orphan = contained_goal("unused")
    plan = a_plan(
        contained=[practitioner, report, orphan],
        author={"reference": "#pr1"},
        contributor=[{"reference": "#pr1"}],
        supportingInfo=[{"reference": "#r4b"}, {"reference": "#missing", "display": "not sent"}],
        activity=[{"detail": {"status": "scheduled", "performer": [{"reference": "#pr1"}]}}],
    )
    [care_plan, _] = map_one(
        mapper, bundle(with_number({"resourceType": "Patient", "id": "p1"}), plan)
    ).resources
    assert care_plan["author"] == {"reference": "#pr1"}
    assert care_plan["contributor"] == [{"reference": "#pr1"}]
    assert care_plan["supportingInfo"] == [{"reference": "#r4b"}, {"display": "not sent"}]
    assert care_plan["activity"][0]["detail"]["performer"] == [{"reference": "#pr1"}]
    assert [c["id"] for c in care_plan["contained"]] == ["pr1", "r4b"]  # dom-3: the orphan Goal is not kept


def test_a_contained_resource_named_only_by_another_dropped_one_goes_too(mapper: Mapper) -> None:
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"display": "the person"}}
    goal = contained_goal("g1", addresses=[{"reference": "#c1"}])
    kept = {**goal, "id": "g2"}
    plan = a_plan(contained=[condition, goal, kept], goal=[{"reference": "#g2"}])
    [care_plan, _] = map_one(
        mapper, bundle(with_number({"resourceType": "Patient", "id": "p1"}), plan)
    ).resources
    assert [c["id"] for c in care_plan["contained"]] == ["c1", "g2"]  # g2 names c1; nothing names g1
    plan["goal"] = []
    [care_plan, _] = map_one(
        mapper, bundle(with_number({"resourceType": "Patient", "id": "p1"}), plan)
    ).resources
    assert "contained" not in care_plan


def contained_goal(gid: str, **more: Any) -> dict[str, Any]:
    """A Goal to contain in a plan: valid R4, its subject named only by display unless ``more`` says."""
    goal = {"resourceType": "Goal", "id": gid, "lifecycleStatus": "active", "description": {"text": "x"}}
    return {**goal, "subject": {"display": "the person"}, **more}


def goal_about(patient_id: str, **subject: str) -> dict[str, Any]:
    """A contained Goal whose subject is the shared Patient ``patient_id`` (someone else's, here)."""
    return contained_goal(
        "g1",
        description={"text": "Walk to the shops"},
        subject={"reference": f"Patient/{patient_id}", **subject},
    )


def test_literal_references_to_someone_else_are_not_stored_in_contained_resources_or_extensions(
    mapper: Mapper,
) -> None:
    """A contained Goal's subject and a valueReference naming another person's shared Patient here."""
    other_id = mapper.ids.patient("9990000026")
    goal = goal_about(other_id, display="Walk with her husband")
    extension = [
        {
            "url": "https://ehr.example.nhs.uk/fhir/StructureDefinition/carer",
            "valueReference": {"reference": f"Patient/{other_id}"},
        },
        {
            "url": "https://ehr.example.nhs.uk/fhir/StructureDefinition/self",
            "valueReference": {"reference": "Patient/p1"},
        },
    ]
    plan = a_plan(contained=[goal], goal=[{"reference": "#g1"}], extension=extension)
    patient = with_number({"resourceType": "Patient", "id": "p1"})
    patient["extension"] = [extension[0]]
    mapped = map_one(mapper, bundle(patient, plan))
    [care_plan, _] = mapped.resources
    assert other_id not in json.dumps(mapped.contribution) and other_id not in json.dumps(care_plan)
    assert care_plan["contained"][0]["subject"] == {"display": "Walk with her husband"}
    # the person's own Patient entry: a reference by NHS number, which names the shared Patient
    assert care_plan["extension"] == [  # the first, its reference gone, says nothing (ext-1): dropped
        {
            "url": extension[1]["url"],
            "valueReference": {
                "type": "Patient",
                "identifier": {"system": NHS_NUMBER_SYSTEM, "value": TEST_NUMBER},
            },
        },
    ]


def test_a_contained_goal_whose_subject_was_someone_else_alone_is_quarantined_by_validation(
    mapper: Mapper,
) -> None:
    other_id = mapper.ids.patient("9990000026")
    goal = goal_about(other_id)
    [record] = records(
        bundle(
            with_number({"resourceType": "Patient", "id": "p1"}),
            a_plan(contained=[goal], goal=[{"reference": "#g1"}]),
        )
    )
    [care_plan, _] = mapper.map(record).resources
    with pytest.raises(ValidationFailure, match=r"contained\.0\.subject"):
        validate(
            care_plan
        )  # Goal.subject is required: the record is quarantined, never stored pointing elsewhere


def test_activity_and_detail_extensions_and_the_language_are_carried(mapper: Mapper) -> None:
    title = {
        "url": "http://hl7.org/fhir/StructureDefinition/careplan-activity-title",
        "valueString": "Home visit",
    }
    local = {
        "url": "https://ehr.example.nhs.uk/fhir/StructureDefinition/visit-length",
        "valueDuration": {"value": 30, "unit": "min"},
    }
    plan = a_plan(
        language="en-GB",
        activity=[{"extension": [title], "detail": {"status": "scheduled", "extension": [local]}}],
    )
    [care_plan, _] = map_one(
        mapper, bundle(with_number({"resourceType": "Patient", "id": "p1"}), plan)
    ).resources
    assert care_plan["language"] == "en-GB"
    assert care_plan["activity"] == [
        {"extension": [title], "detail": {"status": "scheduled", "extension": [local]}}
    ]


@pytest.mark.parametrize(
    ("system", "code", "display"),
    [
        (WALES, "nn", "Number present and traced using Welsh NHS AR"),
        (WALES, "02", "Number present but not traced"),
        (VERIFICATION_SYSTEM, "02", "Number present but not traced"),
    ],
)
def test_a_verification_status_is_kept_in_the_code_system_it_was_sent_in(
    mapper: Mapper, system: str, code: str, display: str
) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"] = {
        "coding": [{"system": system, "code": code}]
    }
    mapped = map_one(mapper, bundle(patient))
    [status] = mapped.contribution["identifier"][0]["extension"]
    assert status["valueCodeableConcept"]["coding"] == [{"system": system, "code": code, "display": display}]


def test_an_unknown_wales_status_is_quarantined(mapper: Mapper) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"] = {
        "coding": [{"system": WALES, "code": "NN"}]
    }
    [record] = records(bundle(patient))
    with pytest.raises(MappingError) as caught:
        mapper.map(record)
    assert caught.value.issue.reason == "unknown-code"
