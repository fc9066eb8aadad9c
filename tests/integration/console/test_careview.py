"""The shared care view's model, from stored JSON alone (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.console.careview import is_active_plan, plan, shared_view

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p",
    "meta": {"lastUpdated": "2026-05-01T12:00:00Z"},
    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
    "name": [{"use": "official", "prefix": ["Mrs"], "given": ["Amelia"], "family": "Davies"}],
    "gender": "female",
    "birthDate": "1944-07-30",
    "generalPractitioner": [{"identifier": {"value": "Y90001"}}],
}


def care_plan(pid: str, source: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": pid,
        "status": status,
        "identifier": [{"system": f"https://fhir.concord.health/Id/{source}-care-plan/ODS1", "value": pid}],
        "meta": {"lastUpdated": f"2026-05-0{len(pid)}T00:00:00Z"},
        **extra,
    }


def stored(*resources: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    return [(r["resourceType"], r["id"], orjson.dumps(r)) for r in resources]


def test_plans_are_grouped_by_source_in_a_fixed_order_active_only() -> None:
    view = shared_view(
        stored(
            PATIENT,
            care_plan("s1", "social-care", contributor=[{"display": "Joan Ali"}]),
            care_plan("g1", "gp"),
            care_plan("g22", "gp", title="Later"),
            care_plan("g3", "gp", status="completed"),
        )
    )
    assert view is not None
    assert view.person.name == "Mrs Amelia Davies" and view.person.gp_practice == "ODS Y90001"
    assert [(label, [p.id for p in plans]) for label, plans in view.by_source] == [
        ("GP practice", ["g22", "g1"]),
        ("Adult social care", ["s1"]),
    ]
    assert view.plans == 3 and view.by_source[1][1][0].allocated_worker == "Joan Ali"


def test_nothing_to_show_without_a_patient() -> None:
    assert shared_view(stored(care_plan("g1", "gp"))) is None
    assert shared_view([]) is None


def test_team_roles_goals_needs_and_activities_come_from_contained_resources() -> None:
    role = "https://fhir.concord.health/CodeSystem/care-team-role"
    body = care_plan(
        "c1",
        "community",
        contained=[
            {
                "resourceType": "CareTeam",
                "id": "team",
                "participant": [
                    {
                        "role": [
                            {
                                "coding": [
                                    {"system": role, "code": "care-navigator", "display": "Care navigator"}
                                ]
                            }
                        ],
                        "member": {"display": "Dorothy Harris"},
                    },
                    {
                        "role": [
                            {
                                "coding": [{"system": role, "code": "lead-professional"}],
                                "text": "Lead professional",
                            },
                            {"text": "Community matron"},
                        ],
                        "member": {"display": "Isla Khan"},
                        "onBehalfOf": {"identifier": {"value": "R9Z02"}},
                    },
                ],
            },
            {
                "resourceType": "Goal",
                "id": "g",
                "description": {"text": "Stay at home"},
                "lifecycleStatus": "active",
                "target": [{"dueDate": "2027-01-01"}],
            },
            {"resourceType": "Condition", "id": "n", "code": {"coding": [{"display": "Managing nutrition"}]}},
        ],
        careTeam=[{"reference": "#team"}],
        goal=[{"reference": "#g"}, {"reference": "#missing"}],
        addresses=[{"reference": "#n"}],
        activity=[
            {
                "detail": {
                    "code": {"text": "Home visit"},
                    "status": "scheduled",
                    "scheduledPeriod": {"start": "2026-06-01"},
                    "performer": [{"display": "DN team"}],
                }
            },
            {"reference": {"reference": "ServiceRequest/x"}},
        ],
    )
    shown = plan(body)
    assert (shown.lead_professional, shown.care_navigator) == ("Isla Khan", "Dorothy Harris")
    assert [(m.name, m.roles, m.organisation) for m in shown.team] == [
        ("Dorothy Harris", "Care navigator", ""),
        ("Isla Khan", "Lead professional, Community matron", "ODS R9Z02"),
    ]
    assert [(g.description, g.status, g.due) for g in shown.goals] == [
        ("Stay at home", "active", "2027-01-01")
    ]
    assert shown.needs == ["Managing nutrition"]
    assert [(a.what, a.status, a.start, a.performer) for a in shown.activities] == [
        ("Home visit", "scheduled", "2026-06-01", "DN team")
    ]
    assert shown.source == "community" and shown.title == "Care plan"


def test_active_plans_are_recognised_from_stored_bytes() -> None:
    assert is_active_plan("CarePlan", orjson.dumps(care_plan("a", "gp")))
    assert not is_active_plan("CarePlan", orjson.dumps(care_plan("a", "gp", status="on-hold")))
    assert not is_active_plan("Patient", orjson.dumps(PATIENT))
