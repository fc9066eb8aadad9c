"""Synthetic community EPR export: JSON Lines, one integrated care and support plan per line.

People with ``in_community`` get one plan shaped by their long-term conditions
and frailty (format: docs/sources/community.md). Defects are mixed in through
the DefectPlan, one pick per person, so its tally matches what was written.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any, Final, TextIO

import orjson

from gateway.synth.defects import DefectPlan, break_check_digit
from gateway.synth.population import COMMUNITY_PROVIDER, FAMILY_NAMES, GIVEN_FEMALE, GIVEN_MALE, Person
from mappings.nhs_number import formatted

SOURCE: Final = "community"
DEFECTS: Final = (
    "bad-check-digit",
    "missing-nhs-number",
    "truncated",
    "conflicting-birth-date",
    "unknown-code",
    "duplicate",
)
EXTRACT_DATE: Final = date(2026, 11, 1)
#: An activity code the EPR uses locally and the ConceptMap does not know.
UNKNOWN_ACTIVITY: Final = "HOLISTIC_REVIEW"

_TITLES: Final = {
    "ICSP": "Integrated care and support plan",
    "LTC": "Long-term condition management plan",
    "FRAILTY": "Proactive care plan (moderate frailty)",
    "NURSING": "District nursing care plan",
    "REHAB": "Community rehabilitation plan",
    "EOL": "End of life care plan",
    "DEM": "Dementia care plan",
}
_LEAD_JOB: Final = {
    "ICSP": "Community matron",
    "LTC": "Community matron",
    "FRAILTY": "Community matron",
    "NURSING": "District nurse",
    "REHAB": "Physiotherapist",
    "EOL": "District nurse",
    "DEM": "Admiral nurse",
}
_ACTIVITIES: Final = {
    "ICSP": ("MEDREV", "DN_VISIT", "SOCIAL_PRESCRIBING", "FALLS"),
    "LTC": ("MEDREV", "DN_VISIT"),
    "FRAILTY": ("FALLS", "MEDREV", "OT", "SOCIAL_PRESCRIBING"),
    "NURSING": ("DN_VISIT", "WOUND"),
    "REHAB": ("PHYSIO", "OT"),
    "EOL": ("DN_VISIT", "MEDREV"),
    "DEM": ("SOCIAL_PRESCRIBING", "MEDREV", "FALLS"),
}
_ACTIVITY_TEXT: Final = {
    "MEDREV": ("Medication review with community pharmacist", "Community pharmacy"),
    "DN_VISIT": ("District nursing visit at home", "District nursing"),
    "SOCIAL_PRESCRIBING": ("Referral to social prescribing link worker", "Care navigation"),
    "FALLS": ("Falls risk assessment at home", "Falls prevention"),
    "OT": ("Occupational therapy home assessment", "Community therapy"),
    "PHYSIO": ("Physiotherapy for strength and balance", "Community therapy"),
    "WOUND": ("Leg ulcer dressing", "District nursing"),
    UNKNOWN_ACTIVITY: ("Holistic review", "Integrated care team"),
}
_GOALS: Final = (
    "Walk to the local shops with a stick",
    "Manage my breathlessness at home",
    "Stay out of hospital this winter",
    "Understand my medicines",
    "Get back to the lunch club",
    "Have my leg ulcer healed",
    "Stay at home safely",
)
_WHAT_MATTERS: Final = (
    "Staying in my own home",
    "Seeing my grandchildren",
    "Getting out to church on Sundays",
    "Keeping my garden going",
    "Not going back into hospital",
)


def write_community(people: Iterable[Person], out: TextIO, rng: random.Random, defects: DefectPlan) -> int:
    """Write one line per person known to the community provider; return the number of lines written."""
    written = 0
    for person in people:
        if not person.in_community:
            continue
        line = community_line(person, rng)
        for text in _with_defect(line, defects.pick(SOURCE, DEFECTS), rng):
            out.write(text + "\n")
            written += 1
    return written


def community_line(person: Person, rng: random.Random) -> dict[str, Any]:
    """One person's export line, without defects."""
    number = formatted(person.nhs_number) if rng.random() < 0.2 else person.nhs_number
    return {
        "provider_ods": COMMUNITY_PROVIDER,
        "patient_id": f"CM{person.index + 500000:07d}",
        "nhs_number": number,
        "nhs_number_status": "01" if rng.random() < 0.95 else "02",
        "title": person.title or None,
        "family_name": person.family_name,
        "given_names": person.given_names,
        "date_of_birth": person.birth_date.isoformat(),
        "sex": person.sex,
        "address": {"line_1": person.address_line_1, "town": person.town, "postcode": person.postcode},
        "phone": person.phone,
        "registered_gp_ods": person.practice_ods,
        "plan": _plan(person, rng),
    }


def _plan_type(person: Person, rng: random.Random) -> str:
    ltcs = person.long_term_conditions
    if person.frail and person.age >= 85 and rng.random() < 0.1:
        return "EOL"
    if "DEM" in ltcs and rng.random() < 0.5:
        return "DEM"
    if person.frail:
        return rng.choice(("FRAILTY", "ICSP"))
    if ltcs:
        return rng.choice(("LTC", "ICSP"))
    return rng.choice(("NURSING", "REHAB"))


def _plan(person: Person, rng: random.Random) -> dict[str, Any]:
    kind = _plan_type(person, rng)
    status = rng.choices(("ACTIVE", "DRAFT", "CLOSED", "ON_HOLD"), weights=(80, 5, 10, 5))[0]
    start = EXTRACT_DATE - timedelta(days=rng.randint(14, 700))
    end = start + timedelta(days=rng.randint(30, 180)) if status == "CLOSED" else None
    closed = status == "CLOSED"
    return {
        "plan_id": f"CP{person.index + 1:08d}",
        "plan_type": kind,
        "title": _TITLES[kind],
        "status": status,
        "start_date": start.isoformat(),
        "end_date": end.isoformat() if end else None,
        "review_date": (start + timedelta(days=182)).isoformat(),
        "recorded_at": f"{start.isoformat()}T{rng.randint(8, 17):02d}:{rng.randint(0, 59):02d}:00Z",
        "what_matters_to_me": rng.choice(_WHAT_MATTERS),
        "care_team": _care_team(kind, rng),
        "goals": [_goal(n, description, closed, rng) for n, description in _sample(_GOALS, 1, 3, rng)],
        "activities": [
            _activity(n, code, start, closed, rng) for n, code in _sample(_ACTIVITIES[kind], 1, 3, rng)
        ],
    }


def _sample(pool: tuple[str, ...], least: int, most: int, rng: random.Random) -> list[tuple[int, str]]:
    picked = rng.sample(pool, k=min(len(pool), rng.randint(least, most)))
    return list(enumerate(picked, start=1))


def _staff_name(rng: random.Random) -> str:
    return f"{rng.choice(GIVEN_FEMALE + GIVEN_MALE)} {rng.choice(FAMILY_NAMES)}"


def _care_team(kind: str, rng: random.Random) -> list[dict[str, Any]]:
    team = [
        {
            "role": "LEAD_PROFESSIONAL",
            "name": _staff_name(rng),
            "job_title": _LEAD_JOB[kind],
            "organisation_ods": COMMUNITY_PROVIDER,
        }
    ]
    if rng.random() < 0.6:
        team.append(
            {"role": "CARE_NAVIGATOR", "name": _staff_name(rng), "organisation_ods": COMMUNITY_PROVIDER}
        )
    return team


def _goal(n: int, description: str, closed: bool, rng: random.Random) -> dict[str, Any]:
    achievement: str | None
    if closed:
        status, achievement = "COMPLETED", rng.choice(("ACHIEVED", "NOT_ACHIEVED", "PARTLY_ACHIEVED"))
    else:
        status = rng.choice(("ACTIVE", "ACTIVE", "AGREED"))
        achievement = rng.choice(("IN_PROGRESS", "IMPROVING", "NO_CHANGE", None))
    return {
        "goal_id": f"G{n}",
        "description": description,
        "status": status,
        "achievement": achievement,
        "target_date": (EXTRACT_DATE + timedelta(days=rng.randint(30, 180))).isoformat(),
    }


def _activity(n: int, code: str, start: date, closed: bool, rng: random.Random) -> dict[str, Any]:
    description, team = _ACTIVITY_TEXT[code]
    status = "COMPLETED" if closed else rng.choice(("SCHEDULED", "IN_PROGRESS", "IN_PROGRESS", "NOT_STARTED"))
    return {
        "activity_id": f"A{n}",
        "code": code,
        "description": description,
        "status": status,
        "start_date": (start + timedelta(days=rng.randint(0, 28))).isoformat(),
        "team": team,
    }


def _with_defect(line: dict[str, Any], defect: str | None, rng: random.Random) -> list[str]:
    """The text lines to write for one person, with ``defect`` applied."""
    if defect == "bad-check-digit":
        line["nhs_number"] = break_check_digit(line["nhs_number"].replace(" ", ""))
    elif defect == "missing-nhs-number":
        line["nhs_number"] = None
        line["nhs_number_status"] = None
    elif defect == "conflicting-birth-date":
        shift = timedelta(days=rng.choice((-1, 1)) * rng.randint(1, 400))
        line["date_of_birth"] = (date.fromisoformat(line["date_of_birth"]) + shift).isoformat()
    elif defect == "unknown-code":
        line["plan"]["activities"][0]["code"] = UNKNOWN_ACTIVITY
    text = orjson.dumps(line).decode()
    if defect == "truncated":
        return [text[: rng.randint(10, len(text) - 2)]]
    if defect == "duplicate":
        return [text, text]
    return [text]
