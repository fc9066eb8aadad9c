"""Synthetic council social care export: one JSON document of Care Act care and support plans.

People with ``in_social_care`` get one case: a care and support plan with
eligible needs, outcomes and a package of care (homecare hours, meals, day
centre ...), or a reablement plan (format: docs/sources/social-care.md). The
document is written case by case, never built whole in memory. Defects come
through the DefectPlan, one pick per person; ``missing-nhs-number`` is listed
twice because councils lack NHS numbers far more often than health providers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any, Final, TextIO

import orjson

from gateway.synth.defects import DefectPlan, break_check_digit
from gateway.synth.population import COUNCIL, FAMILY_NAMES, GIVEN_FEMALE, GIVEN_MALE, Person

SOURCE: Final = "social-care"
DEFECTS: Final = (
    "bad-check-digit",
    "missing-nhs-number",
    "missing-nhs-number",
    "truncated",
    "conflicting-birth-date",
    "unknown-code",
    "duplicate",
)
EXTRACT_DATE: Final = date(2026, 11, 1)
HEADER: Final = {
    "system": "Synthetic adult social care case management",
    "schema_version": "1.0",
    "council_ods": COUNCIL,
    "council_name": "Synthetic Borough Council",
    "generated_at": "2026-11-01T02:00:00Z",
}
#: A service type the council uses locally and the ConceptMap does not know.
UNKNOWN_SERVICE: Final = "EXTRA_CARE"

#: A provider: name and ODS-style code (None: many agencies have none).
_Provider = tuple[str, str | None]
#: A service to write: type, units per week, unit, provider.
_Service = tuple[str, float, str, _Provider]

_HOMECARE: Final[tuple[_Provider, ...]] = (
    ("Borough Homecare Ltd", "Y9H01"),
    ("Riverside Care at Home", "Y9H02"),
    ("Eastside Domiciliary Services", None),
)
_NEEDS: Final = {
    "NUTRITION": "Cannot prepare a hot meal safely",
    "HYGIENE": "Needs help to wash and bathe",
    "TOILET": "Needs help to use the toilet at night",
    "DRESSING": "Needs help to dress in the morning",
    "HOME_SAFETY": "At risk of falls moving around the home",
    "HOME_ENVIRONMENT": "Cannot keep the home clean and warm",
    "RELATIONSHIPS": "Isolated since partner died",
    "COMMUNITY": "Cannot get to the shops or the day centre alone",
}
_OUTCOMES: Final = (
    "Have a hot meal every day",
    "Stay living in my own home",
    "Be washed and dressed by 10am",
    "Go out at least twice a week",
    "Feel safe at night",
)
_WHAT_MATTERS: Final = (
    "Keep seeing my friends at the lunch club",
    "Look after my dog",
    "Stay in the house I have lived in for 40 years",
    "Choose what I eat",
)


def write_social_care(people: Iterable[Person], out: TextIO, rng: random.Random, defects: DefectPlan) -> int:
    """Write the export document for people the council supports; return the number of cases written."""
    out.write('{"export": ' + orjson.dumps(HEADER).decode() + ', "cases": [')
    written = 0
    for person in people:
        if not person.in_social_care:
            continue
        case = social_care_case(person, rng)
        for text in _with_defect(case, defects.pick(SOURCE, DEFECTS), rng):
            out.write(("\n" if written == 0 else ",\n") + text)
            written += 1
    out.write("\n]}\n")
    return written


def social_care_case(person: Person, rng: random.Random) -> dict[str, Any]:
    """One person's case, without defects."""
    return {
        "person_id": 7000000 + person.index,
        "person": _person(person, rng),
        "care_and_support_plans": [_plan(person, rng)],
    }


def _person(person: Person, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {"nhs_number": person.nhs_number}
    status = rng.choices(("02", "01", None), weights=(50, 20, 30))[0]
    if status:
        out["nhs_number_status"] = status
    out.update(
        {
            "title": person.title or None,
            "forenames": person.given_names,
            "surname": person.family_name,
            "date_of_birth": person.birth_date.isoformat(),
            "gender": "Male" if person.sex == "M" else "Female",
            "address": {"line_1": person.address_line_1, "town": person.town, "postcode": person.postcode},
            "phone": person.phone if rng.random() < 0.7 else None,
            "gp_practice_ods": person.practice_ods if rng.random() < 0.8 else None,
        }
    )
    return out


def _plan(person: Person, rng: random.Random) -> dict[str, Any]:
    reablement = rng.random() < 0.15
    status = rng.choices(("ACTIVE", "DRAFT", "CLOSED"), weights=(85, 5, 10))[0]
    start = EXTRACT_DATE - timedelta(days=rng.randint(7, 900))
    end = start + timedelta(days=42) if reablement else None
    if status == "CLOSED" and end is None:
        end = start + timedelta(days=rng.randint(60, 400))
    needs = rng.sample(sorted(_NEEDS), k=rng.randint(1, 4))
    return {
        "plan_id": f"CSP-{person.index + 1:07d}",
        "plan_type": "REABLEMENT" if reablement else "CSP",
        "title": "Reablement plan" if reablement else "Care and support plan",
        "status": status,
        "start_date": start.isoformat(),
        "end_date": end.isoformat() if end else None,
        "review_date": (start + timedelta(days=42 if reablement else 365)).isoformat(),
        "agreed_date": (start - timedelta(days=rng.randint(1, 14))).isoformat(),
        "allocated_worker": {"name": _worker(rng), "team": "Older adults"},
        "what_matters_to_me": rng.choice(_WHAT_MATTERS),
        "needs": [
            {"need_id": f"N{n}", "code": code, "description": _NEEDS[code]} for n, code in enumerate(needs, 1)
        ],
        "outcomes": [
            _outcome(n, text, status) for n, text in enumerate(rng.sample(_OUTCOMES, k=rng.randint(1, 3)), 1)
        ],
        "services": _services(reablement, needs, start, end, status, rng),
    }


def _worker(rng: random.Random) -> str:
    return f"{rng.choice(GIVEN_FEMALE + GIVEN_MALE)} {rng.choice(FAMILY_NAMES)}"


def _outcome(n: int, description: str, plan_status: str) -> dict[str, Any]:
    closed = plan_status == "CLOSED"
    return {
        "outcome_id": f"O{n}",
        "description": description,
        "status": "COMPLETED" if closed else "ACTIVE",
        "achievement": "ACHIEVED" if closed else "IN_PROGRESS",
    }


def _services(
    reablement: bool, needs: list[str], start: date, end: date | None, plan_status: str, rng: random.Random
) -> list[dict[str, Any]]:
    status = {"CLOSED": "COMPLETED", "DRAFT": "SCHEDULED"}.get(plan_status, "ACTIVE")
    kinds: list[_Service]
    if reablement:
        hours = rng.choice((7, 10.5, 14))
        kinds = [("REABLEMENT", hours, "HOUR", ("Borough Reablement Team", COUNCIL))]
    else:
        hours = rng.choice((3.5, 5, 7, 7.5, 10, 10.5, 14, 17.5, 21))
        kinds = [("HOMECARE", hours, "HOUR", rng.choice(_HOMECARE))]
        if "NUTRITION" in needs:
            kinds.append(("MEALS", 7, "MEAL", ("Borough Community Meals", None)))
        if "COMMUNITY" in needs or "RELATIONSHIPS" in needs:
            kinds.append(("DAY_CENTRE", rng.randint(1, 3), "SESSION", ("Oak Lodge Day Centre", COUNCIL)))
    return [_service(n, *kind, start, end, status) for n, kind in enumerate(kinds, 1)]


def _service(
    n: int,
    kind: str,
    units: float,
    unit: str,
    provider: _Provider,
    start: date,
    end: date | None,
    status: str,
) -> dict[str, Any]:
    return {
        "service_id": f"S{n}",
        "service_type": kind,
        "description": None,
        "status": status,
        "start_date": (start + timedelta(days=n)).isoformat(),
        "end_date": end.isoformat() if end else None,
        "units_per_week": units,
        "unit": unit,
        "provider": {"name": provider[0], "ods_code": provider[1]},
    }


def _with_defect(case: dict[str, Any], defect: str | None, rng: random.Random) -> list[str]:
    """The case texts to write for one person (the document stays valid JSON whatever the defect)."""
    person = case["person"]
    if defect == "bad-check-digit":
        person["nhs_number"] = break_check_digit(person["nhs_number"])
    elif defect == "missing-nhs-number":
        person.pop("nhs_number")
        person.pop("nhs_number_status", None)
    elif defect == "conflicting-birth-date":
        shift = timedelta(days=rng.choice((-1, 1)) * rng.randint(1, 400))
        person["date_of_birth"] = (date.fromisoformat(person["date_of_birth"]) + shift).isoformat()
    elif defect == "unknown-code":
        case["care_and_support_plans"][0]["services"][0]["service_type"] = UNKNOWN_SERVICE
    elif defect == "truncated":
        case = _truncated(case, rng)
    text = orjson.dumps(case).decode()
    return [text, text] if defect == "duplicate" else [text]


def _truncated(case: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The case as a cut-off writer leaves it: the person's first fields only, no plans."""
    person_keys = list(case["person"])[: rng.randint(0, len(case["person"]) - 1)]
    return {"person_id": case["person_id"], "person": {k: case["person"][k] for k in person_keys}}
