"""Community EPR lines through the mapping specs: valid UK Core out, or the right quarantine reason."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from support import tally, validate_mapped

from adapters.community import CommunityAdapter
from adapters.records import RecordError, SourceRecord
from gateway.synth.community import write_community
from gateway.synth.defects import DefectPlan
from gateway.synth.population import Person, nhs_numbers, population
from mappings.engine import MappingError
from mappings.mapper import MappedRecord, Mapper
from mappings.validate import VERIFICATION_URL

_ids = itertools.count(1)
_numbers = nhs_numbers(2000)


def a_line(**overrides: Any) -> dict[str, Any]:
    n = next(_ids)
    line: dict[str, Any] = {
        "provider_ods": "R9Z02",
        "patient_id": f"CM{n:07d}",
        "nhs_number": next(_numbers),
        "nhs_number_status": "01",
        "title": "Mrs",
        "family_name": "Begum",
        "given_names": "Fatima Aisha",
        "date_of_birth": "1940-01-31",
        "sex": "F",
        "address": {"line_1": "4 Church Lane", "town": "Ilford", "postcode": "ig1 2ab"},
        "phone": "0208 555 0101",
        "registered_gp_ods": "Y90003",
        "plan": {
            "plan_id": f"CP{n:08d}",
            "plan_type": "FRAILTY",
            "title": "Proactive care plan",
            "status": "ACTIVE",
            "start_date": "2026-04-01",
            "recorded_at": "2026-04-01T11:00:00Z",
            "what_matters_to_me": "Staying in my own home",
            "care_team": [
                {
                    "role": "LEAD_PROFESSIONAL",
                    "name": "Joan Ward",
                    "job_title": "Community matron",
                    "organisation_ods": "R9Z02",
                },
                {"role": "CARE_NAVIGATOR", "name": "Leo Hall", "organisation_ods": "R9Z02"},
            ],
            "goals": [
                {
                    "goal_id": "G1",
                    "description": "Walk to the shops",
                    "status": "ACTIVE",
                    "achievement": "IMPROVING",
                    "target_date": "2026-12-01",
                },
                {"goal_id": "G2", "description": "Understand my medicines", "status": "AGREED"},
            ],
            "activities": [
                {
                    "activity_id": "A1",
                    "code": "FALLS",
                    "status": "SCHEDULED",
                    "start_date": "2026-04-10",
                    "team": "Falls prevention",
                },
                {"activity_id": "A2", "code": "MEDREV", "status": "IN_PROGRESS"},
            ],
        },
    }
    line.update(overrides)
    return line


def record(line: dict[str, Any] | str) -> SourceRecord:
    (item,) = CommunityAdapter().read(io.StringIO(line if isinstance(line, str) else json.dumps(line)))
    assert isinstance(item, SourceRecord)
    return item


def care_plan(mapped: MappedRecord) -> dict[str, Any]:
    (plan,) = [r for r in mapped.resources if r["resourceType"] == "CarePlan"]
    return plan


def contained(plan: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [c for c in plan.get("contained", ()) if c["resourceType"] == resource_type]


def test_a_good_line_maps_to_valid_uk_core(mapper: Mapper) -> None:
    line = a_line()
    mapped = mapper.map(record(line))
    validate_mapped(mapped)
    assert mapped.warnings == []
    assert mapped.nhs_number == line["nhs_number"]
    assert mapped.source_ods == "R9Z02"
    assert [r["resourceType"] for r in mapped.resources] == ["CarePlan", "Provenance"]


def test_demographics(mapper: Mapper) -> None:
    body = mapper.map(record(a_line())).contribution
    assert body["name"] == [
        {"use": "official", "family": "Begum", "given": ["Fatima", "Aisha"], "prefix": ["Mrs"]}
    ]
    assert (body["gender"], body["birthDate"]) == ("female", "1940-01-31")
    assert body["address"][0]["postalCode"] == "IG1 2AB"
    assert body["generalPractitioner"][0]["identifier"]["value"] == "Y90003"


def test_the_verification_status_sent_becomes_the_extension(mapper: Mapper) -> None:
    (ident,) = mapper.map(record(a_line())).contribution["identifier"]
    (ext,) = ident["extension"]
    assert ext["url"] == VERIFICATION_URL
    assert ext["valueCodeableConcept"]["coding"][0]["code"] == "01"


def test_no_status_sent_means_no_extension(mapper: Mapper) -> None:
    (ident,) = mapper.map(record(a_line(nhs_number_status=None))).contribution["identifier"]
    assert "extension" not in ident


def test_plan_header(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_line())))
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert plan["category"][0]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "734163000",
        "display": "Care plan",
    }
    assert plan["identifier"][0]["system"].endswith("/community-care-plan/R9Z02")
    assert plan["period"] == {"start": "2026-04-01"}
    assert plan["note"] == [{"text": "Staying in my own home"}]
    assert plan["author"]["identifier"]["value"] == "R9Z02"


def test_the_care_team_is_a_contained_care_team(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_line())))
    (team,) = contained(plan, "CareTeam")
    assert plan["careTeam"] == [{"reference": f"#{team['id']}"}]
    assert team["subject"] == plan["subject"]
    lead, navigator = team["participant"]
    assert lead["role"][0]["coding"][0]["code"] == "lead-professional"
    assert lead["role"][1] == {"text": "Community matron"}
    assert lead["member"] == {"type": "Practitioner", "display": "Joan Ward"}
    assert navigator["role"][0]["coding"][0]["code"] == "care-navigator"
    assert navigator["onBehalfOf"]["identifier"]["value"] == "R9Z02"


def test_a_plan_without_a_care_team_has_none(mapper: Mapper) -> None:
    line = a_line()
    line["plan"]["care_team"] = []
    mapped = mapper.map(record(line))
    validate_mapped(mapped)
    plan = care_plan(mapped)
    assert "careTeam" not in plan and contained(plan, "CareTeam") == []


def test_goals_are_contained_goals_about_the_same_person(mapper: Mapper) -> None:
    mapped = mapper.map(record(a_line()))
    plan = care_plan(mapped)
    goals = contained(plan, "Goal")
    assert plan["goal"] == [{"reference": f"#{g['id']}"} for g in goals]
    first, second = goals
    assert (first["lifecycleStatus"], second["lifecycleStatus"]) == ("active", "accepted")
    assert first["achievementStatus"]["coding"][0]["code"] == "improving"
    assert first["description"] == {"text": "Walk to the shops"}
    assert first["target"] == [{"dueDate": "2026-12-01"}]
    assert (
        first["subject"]
        == second["subject"]
        == plan["subject"]
        == {"reference": f"Patient/{mapped.patient_id}"}
    )


def test_activities(mapper: Mapper) -> None:
    plan = care_plan(mapper.map(record(a_line())))
    falls, review = (a["detail"] for a in plan["activity"])
    assert falls["code"]["coding"][0]["code"] == "414191008"
    assert (falls["status"], review["status"]) == ("scheduled", "in-progress")
    assert falls["kind"] == "ServiceRequest"
    assert falls["scheduledPeriod"] == {"start": "2026-04-10"}
    assert falls["performer"][0]["display"] == "Falls prevention"
    assert falls["performer"][0]["identifier"]["value"] == "R9Z02"


def test_an_unknown_activity_code_is_kept_and_reported(mapper: Mapper) -> None:
    line = a_line()
    line["plan"]["activities"][0]["code"] = "LOCAL_ONLY"
    mapped = mapper.map(record(line))
    validate_mapped(mapped)
    assert [w.reason for w in mapped.warnings] == ["unknown-code"]
    assert care_plan(mapped)["activity"][0]["detail"]["code"]["coding"][0]["code"] == "LOCAL_ONLY"


@pytest.mark.parametrize(
    ("where", "value"),
    [("plan", {"status": "MAYBE"}), ("goal", {"status": "WISHFUL"}), ("activity", {"status": "SOMETIME"})],
)
def test_a_status_fhir_requires_but_cannot_be_mapped_is_quarantined(
    mapper: Mapper, where: str, value: dict[str, str]
) -> None:
    line = a_line()
    target = {
        "plan": line["plan"],
        "goal": line["plan"]["goals"][0],
        "activity": line["plan"]["activities"][0],
    }
    target[where].update(value)
    with pytest.raises(MappingError) as caught:
        mapper.map(record(line))
    assert caught.value.issue.reason == "unknown-code"


@pytest.mark.parametrize(
    ("number", "reason"),
    [(None, "nhs-number-missing"), ("", "nhs-number-missing"), ("999 000 0019", "nhs-number-check-digit")],
)
def test_a_line_without_a_valid_nhs_number_is_quarantined(
    mapper: Mapper, number: str | None, reason: str
) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.map(record(a_line(nhs_number=number)))
    assert caught.value.issue.reason == reason


def test_ids_are_deterministic(mapper: Mapper) -> None:
    text = json.dumps(a_line())
    assert mapper.map(record(text)).resources == mapper.map(record(text)).resources


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
def community_people() -> list[Person]:
    return [p for p in population(400, seed=3) if p.in_community][:8]


def outcomes(mapper: Mapper, people: list[Person], kind: str | None) -> list[Any]:
    out = io.StringIO()
    write_community(people, out, random.Random(3), FixedDefect(kind) if kind else DefectPlan(0.0, 3))
    results: list[Any] = []
    for item in CommunityAdapter().read(io.StringIO(out.getvalue())):
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
        ("truncated", "json-truncated"),
    ],
)
def test_each_quarantining_defect_gives_its_reason(
    mapper: Mapper, community_people: list[Person], kind: str, reason: str
) -> None:
    assert outcomes(mapper, community_people, kind) == [reason] * len(community_people)


def test_clean_synthetic_lines_all_map(mapper: Mapper, community_people: list[Person]) -> None:
    results = outcomes(mapper, community_people, None)
    assert all(isinstance(r, MappedRecord) and not r.warnings for r in results)


def test_unknown_code_defect_is_accepted_with_a_warning(
    mapper: Mapper, community_people: list[Person]
) -> None:
    results = outcomes(mapper, community_people, "unknown-code")
    assert all([w.reason for w in r.warnings] == ["unknown-code"] for r in results)


def test_conflicting_birth_date_defect_is_accepted_with_another_birth_date(
    mapper: Mapper, community_people: list[Person]
) -> None:
    results = outcomes(mapper, community_people, "conflicting-birth-date")
    births = [r.contribution["birthDate"] for r in results]
    assert all(b != p.birth_date.isoformat() for b, p in zip(births, community_people, strict=True))


def test_duplicate_defect_maps_twice_to_the_same_resources(
    mapper: Mapper, community_people: list[Person]
) -> None:
    results = outcomes(mapper, community_people, "duplicate")
    assert len(results) == 2 * len(community_people)
    for first, second in zip(results[::2], results[1::2], strict=True):
        assert first.resources == second.resources


def test_a_whole_synthetic_extract_matches_its_defect_tally(mapper: Mapper) -> None:
    out = io.StringIO()
    plan = DefectPlan(rate=0.25, seed=21)
    write_community(population(2000, seed=21), out, random.Random(21), plan)
    seen = tally(mapper, CommunityAdapter().read(io.StringIO(out.getvalue())))
    injected = plan.report()["community"]
    assert seen["json-truncated"] == injected["truncated"]
    assert seen["nhs-number-check-digit"] == injected["bad-check-digit"]
    assert seen["nhs-number-missing"] == injected["missing-nhs-number"]
    assert seen["unknown-code"] == injected["unknown-code"]
