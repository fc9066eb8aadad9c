"""UK Core conformance, offline: the checker against the official examples, broken copies, and GP output.

The fixtures are /work/shared/fixtures (``<repo>/../shared/fixtures``). The path is
computed here rather than imported from tests/conftest.py: ``from conftest import
FIXTURES`` works only while tests/conftest.py is the last ``conftest`` module pytest
imported, which stops being true as soon as any other test folder gets a conftest.py.
"""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.gp import COLUMNS, GpAdapter
from adapters.records import SourceRecord
from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population
from mappings.engine import Engine, MappingError
from mappings.ids import IdMaker
from mappings.mapper import MappedRecord, Mapper
from mappings.shared_view import Contribution, merge
from mappings.specs import load_specs
from mappings.terminology import load_tables
from mappings.ukcore import Conformance
from mappings.validate import NHS_NUMBER_SYSTEM, UKCORE_CAREPLAN, UKCORE_PATIENT

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures"
EXAMPLES = FIXTURES / "ukcore-examples" / "json"
GP_SAMPLE = REPO / "tests" / "golden" / "gp_sample.csv"
NHS_SLICE = "Patient.identifier:nhsNumber"
PROFILE = {"Patient": UKCORE_PATIENT, "CarePlan": UKCORE_CAREPLAN}


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance.load([FIXTURES / "ukcore-definitions", FIXTURES / "r4-definitions"])


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def richard_smith() -> dict[str, Any]:
    return example("UKCore-Patient-RichardSmith-Example")


def wellness_plan() -> dict[str, Any]:
    return example("UKCore-CarePlan-WellnessPlan-Example")


# The checker is sane on the official material ----------------------------------------------------


def test_all_twelve_examples_are_here() -> None:
    assert len(list(EXAMPLES.glob("*.json"))) == 12


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_official_ukcore_examples_pass(conformance: Conformance, path: Path) -> None:
    resource = json.loads(path.read_text(encoding="utf-8"))
    assert conformance.check(resource, PROFILE[resource["resourceType"]]) == []


@pytest.mark.parametrize("path", sorted((FIXTURES / "r4-examples").glob("*.json")), ids=lambda p: p.stem)
def test_official_r4_examples_pass_the_base_definitions(conformance: Conformance, path: Path) -> None:
    assert conformance.check(json.loads(path.read_text(encoding="utf-8"))) == []


def test_the_example_patient_carries_the_nhs_number_slice(conformance: Conformance) -> None:
    assert conformance.check(richard_smith(), UKCORE_PATIENT, require=[NHS_SLICE]) == []


def test_skipped_says_what_cannot_be_checked_offline(conformance: Conformance) -> None:
    skipped = "\n".join(conformance.skipped)
    assert (
        "Patient.communication.language: required binding to http://hl7.org/fhir/ValueSet/all-languages"
        in (skipped)
    )
    assert "extension-Patient.fetalStatus not loaded" in skipped
    for checked in ("administrative-gender", "request-status", "UKCore-NHSNumberVerificationStatus"):
        assert checked not in skipped


def test_the_value_sets_concord_relies_on_expand(conformance: Conformance) -> None:
    verification = conformance.expansions[
        "https://fhir.hl7.org.uk/ValueSet/UKCore-NHSNumberVerificationStatus"
    ]
    england = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
    assert {(england, f"0{n}") for n in range(1, 9)} <= verification
    assert ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "NI") in verification
    gender = conformance.expansions["http://hl7.org/fhir/ValueSet/administrative-gender"]
    assert {code for _, code in gender} == {"male", "female", "other", "unknown"}
    intent = conformance.expansions["http://hl7.org/fhir/ValueSet/care-plan-intent"]
    assert {code for _, code in intent} == {"proposal", "plan", "order", "option"}  # listed, not the system


# Broken copies fail it ----------------------------------------------------------------------------


def test_care_plan_without_status(conformance: Conformance) -> None:
    plan = wellness_plan()
    del plan["status"]
    assert conformance.check(plan, UKCORE_CAREPLAN) == [
        "CarePlan.status: minimum cardinality 1 not met (CarePlan.status)"
    ]


def test_care_plan_status_not_in_the_value_set(conformance: Conformance) -> None:
    plan = wellness_plan()
    plan["status"] = "finished"
    [problem] = conformance.check(plan, UKCORE_CAREPLAN)
    assert problem.startswith("CarePlan.status: code not in the required value set")
    assert "finished" not in problem


def test_care_plan_activity_without_detail_status(conformance: Conformance) -> None:
    plan = wellness_plan()
    del plan["activity"][0]["detail"]["status"]
    assert conformance.check(plan, UKCORE_CAREPLAN) == [
        "CarePlan.activity[0].detail.status: minimum cardinality 1 not met (CarePlan.activity.detail.status)"
    ]


def test_gender_not_in_the_value_set(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["gender"] = "M"
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.gender: code not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender"
    ]


def test_wrong_nhs_number_system(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["identifier"][0]["system"] = "http://fhir.nhs.net/Id/nhs-number"  # the retired DSTU2 system
    # UK Core slices identifiers openly: an identifier with another system is simply not the NHS number,
    # so the profile alone allows it; concord's rule that a Patient carries its NHS number does not.
    assert conformance.check(patient, UKCORE_PATIENT) == []
    assert conformance.check(patient, UKCORE_PATIENT, require=[NHS_SLICE]) == [
        "Patient.identifier:nhsNumber: minimum cardinality 1 not met (Patient.identifier:nhsNumber)"
    ]


def test_nhs_number_slice_without_a_value(conformance: Conformance) -> None:
    patient = richard_smith()
    del patient["identifier"][0]["value"]
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.identifier[0].value: minimum cardinality 1 not met (Patient.identifier:nhsNumber.value)"
    ]


def test_two_nhs_numbers(conformance: Conformance) -> None:
    patient = richard_smith()
    second = copy.deepcopy(patient["identifier"][0])
    second["value"] = "9990000018"
    patient["identifier"].append(second)
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.identifier:nhsNumber: maximum cardinality 1 exceeded (Patient.identifier:nhsNumber)"
    ]


def test_verification_status_not_in_the_value_set(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "09"
    [problem] = conformance.check(patient, UKCORE_PATIENT)
    assert problem == (
        "Patient.identifier[0].extension[0].valueCodeableConcept: code not in the required value set "
        "https://fhir.hl7.org.uk/ValueSet/UKCore-NHSNumberVerificationStatus"
    )


def test_a_required_binding_is_not_met_by_text_alone(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"] = {"text": "traced on PDS"}
    [problem] = conformance.check(patient, UKCORE_PATIENT)
    assert problem.startswith("Patient.identifier[0].extension[0].valueCodeableConcept: code not in")


def test_an_extension_with_only_a_url(conformance: Conformance) -> None:
    patient = richard_smith()
    del patient["identifier"][0]["extension"][0]["valueCodeableConcept"]
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.identifier[0].extension[0]: needs a value or nested extensions, not both (ext-1)",
        "Patient.identifier[0].extension[0].value[x]: minimum cardinality 1 not met (Extension.value[x])",
    ]


def test_an_extension_value_of_a_type_its_definition_does_not_allow(conformance: Conformance) -> None:
    patient = richard_smith()
    status = patient["identifier"][0]["extension"][0]
    status["valueCoding"] = status.pop("valueCodeableConcept")["coding"][0]
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.identifier[0].extension[0].valueCoding: type Coding is not allowed for value[x]"
    ]


def test_a_datatype_binding_is_checked_inside_the_resource(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["name"][0]["use"] = "legal"
    patient["contact"][0]["telecom"][0]["system"] = "fax machine"
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.name[0].use: code not in the required value set http://hl7.org/fhir/ValueSet/name-use",
        "Patient.contact[0].telecom[0].system: code not in the required value set "
        "http://hl7.org/fhir/ValueSet/contact-point-system",
    ]


def test_a_complex_extension_missing_a_required_part(conformance: Conformance) -> None:
    patient = richard_smith()
    death = next(e for e in patient["extension"] if e["url"].endswith("DeathNotificationStatus"))
    death["extension"] = [e for e in death["extension"] if e["url"] != "deathNotificationStatus"]
    assert conformance.check(patient, UKCORE_PATIENT) == [
        "Patient.extension[2].extension:deathNotificationStatus: minimum cardinality 1 not met "
        "(Extension.extension:deathNotificationStatus)"
    ]


def test_problems_never_carry_values(conformance: Conformance) -> None:
    patient = richard_smith()
    patient["gender"] = "SECRET-GENDER"
    patient["identifier"].append(copy.deepcopy(patient["identifier"][0]))
    patient["identifier"][1]["value"] = "9990000018"
    patient["name"][0]["use"] = "SECRET-USE"
    problems = conformance.check(patient, UKCORE_PATIENT)
    assert len(problems) == 3
    text = "\n".join(problems)
    for value in ("SECRET", "9912003888", "9990000018", "SMITH", "1970"):
        assert value not in text


def test_check_does_not_change_the_resource(conformance: Conformance) -> None:
    patient = richard_smith()
    before = copy.deepcopy(patient)
    conformance.check(patient, UKCORE_PATIENT, require=[NHS_SLICE])
    assert patient == before


def test_declared_profiles_are_used_by_default(conformance: Conformance) -> None:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"profile": [UKCORE_PATIENT]},
        "identifier": [{"system": NHS_NUMBER_SYSTEM}],
    }
    assert conformance.check(patient) == [
        "Patient.identifier[0].value: minimum cardinality 1 not met (Patient.identifier:nhsNumber.value)"
    ]
    patient["meta"] = {}  # the base R4 Patient has no NHS number slice
    assert conformance.check(patient) == []


def test_a_profile_for_another_type_or_an_unknown_one(conformance: Conformance) -> None:
    assert conformance.check(wellness_plan(), UKCORE_PATIENT) == [
        "CarePlan: profile https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient constrains Patient"
    ]
    with pytest.raises(ValueError, match="not loaded"):
        conformance.check(richard_smith(), "https://example.org/StructureDefinition/nope")
    assert conformance.check({"resourceType": "Basic"}) == ["Basic: no StructureDefinition loaded for it"]


def test_without_the_base_definitions_nothing_is_claimed() -> None:
    ukcore_only = Conformance.load([FIXTURES / "ukcore-definitions"])
    assert any(
        "UKCore-Patient: base http://hl7.org/fhir/StructureDefinition/Patient" in s
        for s in ukcore_only.skipped
    )
    assert UKCORE_PATIENT not in ukcore_only.definitions
    with pytest.raises(ValueError, match="not loaded"):
        ukcore_only.check(richard_smith(), UKCORE_PATIENT)


# Value set expansion, on hand-made definitions ----------------------------------------------------


def test_expansion_rules() -> None:
    system = "https://example.org/cs"
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "CodeSystem",
            "url": system,
            "content": "complete",
            "concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}],
        },
        {"resourceType": "CodeSystem", "url": "https://example.org/fragment", "content": "fragment"},
        {"resourceType": "ValueSet", "url": "urn:all", "compose": {"include": [{"system": system}]}},
        {
            "resourceType": "ValueSet",
            "url": "urn:some",
            "compose": {
                "include": [{"valueSet": ["urn:all"]}],
                "exclude": [{"system": system, "concept": [{"code": "b"}]}],
            },
        },
        {
            "resourceType": "ValueSet",
            "url": "urn:filtered",
            "compose": {"include": [{"system": system, "filter": [{}]}]},
        },
        {
            "resourceType": "ValueSet",
            "url": "urn:fragment",
            "compose": {"include": [{"system": "https://example.org/fragment"}]},
        },
        {
            "resourceType": "ValueSet",
            "url": "urn:missing",
            "compose": {"include": [{"valueSet": ["urn:nowhere"]}]},
        },
    ]
    expansions = Conformance.from_resources(resources).expansions
    assert expansions["urn:all"] == {(system, "a"), (system, "a1"), (system, "b")}
    assert expansions["urn:some"] == {(system, "a"), (system, "a1")}
    for unexpandable in ("urn:filtered", "urn:fragment", "urn:missing"):
        assert unexpandable not in expansions


# The GP mapping output passes it ------------------------------------------------------------------


def gp_output(extract: str) -> Iterator[MappedRecord]:
    mapper = Mapper(load_specs(), Engine(load_tables()), IdMaker(b"0" * 32))
    for item in GpAdapter().read(io.StringIO(extract, newline="")):
        if isinstance(item, SourceRecord):
            try:
                yield mapper.map(item)
            except MappingError:
                continue


def synthetic_extract() -> str:
    out = io.StringIO()
    write_gp(population(80, 5), out, random.Random(5), DefectPlan(0.1, 5))
    return out.getvalue()


def shared_patient(record: MappedRecord) -> dict[str, Any]:
    contribution = Contribution(record.source, record.local_id, record.contribution, record.recorded)
    return merge(record.patient_id, [contribution])[0]


@pytest.mark.parametrize("extract", ["golden sample", "synthetic"])
def test_gp_mapping_output_conforms(conformance: Conformance, extract: str) -> None:
    text = GP_SAMPLE.read_text(encoding="utf-8") if extract == "golden sample" else synthetic_extract()
    records = list(gp_output(text))
    assert len(records) >= 5
    checked = 0
    for record in records:
        assert conformance.check(shared_patient(record), require=[NHS_SLICE]) == []
        for resource in record.resources:
            if resource["resourceType"] == "CarePlan":
                assert conformance.check(resource) == []
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("filled", [(), ("family_name",), ("phone",), ("nhs_number_status",), ("town",)])
def test_a_sparse_gp_row_conforms(conformance: Conformance, filled: tuple[str, ...]) -> None:
    values = {"practice_ods": "Y90001", "gp_patient_id": "GP1", "nhs_number": "9990000018"}
    values |= {column: "01" if column == "nhs_number_status" else "Smith" for column in filled}
    extract = ",".join(COLUMNS) + "\n" + ",".join(values.get(c, "") for c in COLUMNS) + "\n"
    [record] = gp_output(extract)
    assert conformance.check(shared_patient(record), require=[NHS_SLICE]) == []
