"""Council social care cases through the mapping specs: valid UK Core out, or the right quarantine reason."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from support import tally, validate_mapped

from adapters.records import RecordError, SourceRecord
from adapters.social_care import SocialCareAdapter
from gateway.synth.defects import DefectPlan
from gateway.synth.population import Person, nhs_numbers, population
from gateway.synth.social_care import write_social_care
from mappings.engine import MappingError
from mappings.mapper import MappedRecord, Mapper

HEADER = {"system": "Test system", "council_ods": "Z9A01"}
UCUM = "http://unitsofmeasure.org"
_ids = itertools.count(8000001)
_numbers = nhs_numbers(9000)


def a_case(**person: Any) -> dict[str, Any]:
    n = next(_ids)
    case: dict[str, Any] = {
        "person_id": n,
        "person": {
            "nhs_number": next(_numbers),
            "nhs_number_status": "02",
            "title": "Mr",
            "forenames": "Piotr",
            "surname": "Nowak",
            "date_of_birth": "1939-09-03",
            "gender": "Male",
            "address": {"line_1": "9 Station Road", "town": "Romford", "postcode": "RM1 1AA"},
            "gp_practice_ods": "Y90004",
        },
        "care_and_support_plans": [
            {
                "plan_id": f"CSP-{n}",
                "plan_type": "CSP",
                "title": "Care and support plan",
                "status": "ACTIVE",
                "start_date": "2026-03-01",
                "agreed_date": "2026-02-26",
                "allocated_worker": {"name": "Aisha Khan", "team": "Older adults"},
                "what_matters_to_me": "Look after my dog",
                "needs": [
                    {"need_id": "N1", "code": "NUTRITION", "description": "Cannot prepare a hot meal safely"},
                    {"need_id": "N2", "code": "HYGIENE"},
                ],
                "outcomes": [
                    {
                        "outcome_id": "O1",
                        "description": "Have a hot meal every day",
                        "status": "ACTIVE",
                        "achievement": "PARTLY_ACHIEVED",
                        "target_date": "2026-09-01",
                    },
                ],
                "services": [
                    {
                        "service_id": "S1",
                        "service_type": "HOMECARE",
                        "status": "ACTIVE",
                        "start_date": "2026-03-02",
                        "units_per_week": 10.5,
                        "unit": "HOUR",
                        "provider": {"name": "Borough Homecare Ltd", "ods_code": "Y9H01"},
                    },
                    {
                        "service_id": "S2",
                        "service_type": "MEALS",
                        "status": "SCHEDULED",
                        "start_date": "2026-03-09",
                        "units_per_week": 7,
                        "unit": "MEAL",
                        "provider": {"name": "Borough Community Meals"},
                    },
                    {
                        "service_id": "S3",
                        "service_type": "EQUIPMENT",
                        "status": "COMPLETED",
                        "description": "Perching stool and grab rails",
                    },
                ],
            }
        ],
    }
    case["person"].update(person)
    return case


def record(case: dict[str, Any]) -> SourceRecord:
    doc = json.dumps({"export": HEADER, "cases": [case]})
    (item,) = SocialCareAdapter().read(io.StringIO(doc))
    assert isinstance(item, SourceRecord)
    return item


def care_plan(mapped: MappedRecord) -> dict[str, Any]:
    (plan,) = [r for r in mapped.resources if r["resourceType"] == "CarePlan"]
    return plan


def contained(plan: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [c for c in plan.get("contained", ()) if c["resourceType"] == resource_type]


def test_a_good_case_maps_to_valid_uk_core(mapper: Mapper) -> None:
    case = a_case()
    mapped = mapper.map(record(case))
    validate_mapped(mapped)
    assert mapped.warnings == []
    assert (mapped.nhs_number, mapped.local_id) == (
        case["person"]["nhs_number"],
        f"{case['person_id']}@Z9A01",
    )
    assert mapped.source_ods == "Z9A01"
    provenance = mapped.resources[1]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "Z9A01"


def test_two_councils_with_the_same_ids_for_one_person_keep_a_plan_each(mapper: Mapper) -> None:
    case = a_case()
    ours = mapper.map(record(case))
    doc = json.dumps({"export": {**HEADER, "council_ods": "Z9B02"}, "cases": [case]})
    (item,) = SocialCareAdapter().read(io.StringIO(doc))
    assert isinstance(item, SourceRecord)
    theirs = mapper.map(item)
    assert ours.local_id != theirs.local_id
    assert care_plan(ours)["id"] != care_plan(theirs)["id"]
    # what each council calls the plan is unchanged, under its own identifier system
    assert care_plan(ours)["identifier"][0]["value"] == care_plan(theirs)["identifier"][0]["value"]
    assert care_plan(ours)["identifier"][0]["system"] != care_plan(theirs)["identifier"][0]["system"]


def test_demographics(mapper: Mapper) -> None:
    body = mapper.map(record(a_case())).contribution
    assert body["name"][0] == {"use": "official", "family": "Nowak", "given": ["Piotr"], "prefix": ["Mr"]}
    assert (body["gender"], body["birthDate"]) == ("male", "1939-09-03")
    assert body["generalPractitioner"][0]["identifier"]["value"] == "Y90004"


@pytest.mark.parametrize("status", ["02", "01"])
def test_the_verification_status_sent_becomes_the_extension(mapper: Mapper, status: str) -> None:
    (ident,) = mapper.map(record(a_case(nhs_number_status=status))).contribution["identifier"]
    assert [e["valueCodeableConcept"]["coding"][0]["code"] for e in ident["extension"]] == [status]


def test_no_status_sent_means_no_extension(mapper: Mapper) -> None:
    case = a_case()
    del case["person"]["nhs_number_status"]
    mapped = mapper.map(record(case))
    validate_mapped(mapped)
    assert "extension" not in mapped.contribution["identifier"][0]


@pytest.mark.parametrize("number", [None, "", "   "])
def test_a_case_without_nhs_number_is_quarantined_never_guessed(mapper: Mapper, number: str | None) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.map(record(a_case(nhs_number=number)))
    assert caught.value.issue.reason == "nhs-number-missing"


def test_a_case_with_no_nhs_number_field_at_all_is_quarantined(mapper: Mapper) -> None:
    case = a_case()
    del case["person"]["nhs_number"], case["person"]["nhs_number_status"]
    with pytest.raises(MappingError) as caught:
        mapper.map(record(case))
    assert caught.value.issue.reason == "nhs-number-missing"


def test_plan_header(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_case())))
    assert (plan["status"], plan["intent"], plan["created"]) == ("active", "plan", "2026-02-26")
    assert plan["category"][0]["coding"][0]["code"] == "734163000"
    assert plan["identifier"][0]["system"].endswith("/social-care-care-plan/Z9A01")
    assert plan["contributor"] == [{"display": "Aisha Khan"}]
    assert plan["note"] == [{"text": "Look after my dog"}]


def test_needs_are_contained_conditions_the_plan_addresses(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_case())))
    nutrition, hygiene = contained(plan, "Condition")
    assert plan["addresses"] == [{"reference": "#need-1"}, {"reference": "#need-2"}]
    assert nutrition["code"]["text"] == "Managing and maintaining nutrition"
    assert nutrition["note"] == [{"text": "Cannot prepare a hot meal safely"}]
    assert hygiene["code"]["coding"][0]["code"] == "personal-hygiene"
    assert nutrition["subject"] == hygiene["subject"] == plan["subject"]


def test_outcomes_are_contained_goals(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_case())))
    (goal,) = contained(plan, "Goal")
    assert plan["goal"] == [{"reference": "#outcome-1"}]
    assert goal["lifecycleStatus"] == "active"
    assert goal["achievementStatus"]["coding"][0]["code"] == "improving"
    assert goal["target"] == [{"dueDate": "2026-09-01"}]
    assert goal["subject"] == plan["subject"]


def test_packages_of_care_are_activities_with_weekly_amount_and_provider(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_case())))
    homecare, meals, equipment = (a["detail"] for a in plan["activity"])
    assert homecare["code"]["coding"][0]["code"] == "HS"
    assert homecare["quantity"] == {"system": UCUM, "code": "h/wk", "value": 10.5}
    assert homecare["performer"] == [
        {
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y9H01"},
            "display": "Borough Homecare Ltd",
        }
    ]
    assert homecare["scheduledPeriod"] == {"start": "2026-03-02"}
    assert (homecare["status"], meals["status"], equipment["status"]) == (
        "in-progress",
        "scheduled",
        "completed",
    )
    assert meals["quantity"] == {"system": UCUM, "code": "{meal}/wk", "value": 7}
    assert meals["performer"] == [{"display": "Borough Community Meals"}]
    assert "quantity" not in equipment and "performer" not in equipment
    assert equipment["description"] == "Perching stool and grab rails"


def test_unknown_local_codes_are_kept_and_reported(mapper: Mapper) -> None:
    case = a_case()
    plan = case["care_and_support_plans"][0]
    plan["needs"][0]["code"] = "LONELINESS"
    plan["services"][0]["service_type"] = "EXTRA_CARE"
    plan["services"][0]["unit"] = "FORTNIGHT"
    mapped = mapper.map(record(case))
    validate_mapped(mapped)
    assert [w.reason for w in mapped.warnings] == ["unknown-code"] * 3
    detail = care_plan(mapped)["activity"][0]["detail"]
    assert detail["code"]["coding"][0]["code"] == "EXTRA_CARE"
    assert detail["quantity"]["code"] == "FORTNIGHT" and detail["quantity"]["system"] != UCUM


def test_a_person_with_no_plans_gives_their_details_only(mapper: Mapper) -> None:
    case = a_case()
    case["care_and_support_plans"] = []
    mapped = mapper.map(record(case))
    assert mapped.resources == [] and mapped.contribution["name"][0]["family"] == "Nowak"


class FixedDefect(DefectPlan):
    """A defect plan that gives every record the same defect (and tallies it)."""

    def __init__(self, kind: str) -> None:
        super().__init__(rate=1.0, seed=0)
        self.kind = kind

    def pick(self, source: str, kinds: Sequence[str]) -> str | None:
        assert self.kind in kinds
        self.tally[(source, self.kind)] += 1
        return self.kind


@pytest.fixture(scope="module")
def council_people() -> list[Person]:
    return [p for p in population(600, seed=4) if p.in_social_care][:8]


def outcomes(mapper: Mapper, people: list[Person], kind: str | None) -> list[Any]:
    out = io.StringIO()
    write_social_care(people, out, random.Random(4), FixedDefect(kind) if kind else DefectPlan(0.0, 4))
    results: list[Any] = []
    for item in SocialCareAdapter().read(io.StringIO(out.getvalue())):
        if isinstance(item, RecordError):
            results.append(item.reason)
            continue
        try:
            mapped = mapper.map(item)
        except MappingError as exc:
            results.append(exc.issue.reason)
            continue
        validate_mapped(mapped)
        results.append(mapped)
    return results


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bad-check-digit", "nhs-number-check-digit"),
        ("missing-nhs-number", "nhs-number-missing"),
        ("truncated", "field-missing"),
    ],
)
def test_each_quarantining_defect_gives_its_reason(
    mapper: Mapper, council_people: list[Person], kind: str, reason: str
) -> None:
    assert len(council_people) >= 4
    assert outcomes(mapper, council_people, kind) == [reason] * len(council_people)


def test_clean_synthetic_cases_all_map(mapper: Mapper, council_people: list[Person]) -> None:
    assert all(isinstance(r, MappedRecord) and not r.warnings for r in outcomes(mapper, council_people, None))


def test_unknown_code_defect_is_accepted_with_a_warning(mapper: Mapper, council_people: list[Person]) -> None:
    results = outcomes(mapper, council_people, "unknown-code")
    assert all([w.reason for w in r.warnings] == ["unknown-code"] for r in results)


def test_conflicting_birth_date_defect_is_accepted_with_another_birth_date(
    mapper: Mapper, council_people: list[Person]
) -> None:
    results = outcomes(mapper, council_people, "conflicting-birth-date")
    births = [r.contribution["birthDate"] for r in results]
    assert all(b != p.birth_date.isoformat() for b, p in zip(births, council_people, strict=True))


def test_duplicate_defect_maps_twice_to_the_same_resources(
    mapper: Mapper, council_people: list[Person]
) -> None:
    results = outcomes(mapper, council_people, "duplicate")
    assert len(results) == 2 * len(council_people)
    for first, second in zip(results[::2], results[1::2], strict=True):
        assert first.resources == second.resources


def test_a_whole_synthetic_export_matches_its_defect_tally(mapper: Mapper) -> None:
    out = io.StringIO()
    plan = DefectPlan(rate=0.3, seed=8)
    write_social_care(population(4000, seed=8), out, random.Random(8), plan)
    seen = tally(mapper, SocialCareAdapter().read(io.StringIO(out.getvalue())))
    injected = plan.report()["social-care"]
    assert seen["field-missing"] == injected["truncated"]
    assert seen["nhs-number-check-digit"] == injected["bad-check-digit"]
    assert seen["nhs-number-missing"] == injected["missing-nhs-number"]
    assert seen["unknown-code"] == injected["unknown-code"]
    assert injected["missing-nhs-number"] > injected["bad-check-digit"]
