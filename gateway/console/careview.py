"""The shared care view as a person reads it: demographics and active care plans by source. Pure.

Built only from what the disclosure function released (the stored Patient and CarePlans, as
JSON); nothing here reads the store. Care team roles come from the contained CareTeam's
participant roles (``https://fhir.concord.health/CodeSystem/care-team-role``: lead professional,
care navigator ...), and the social care plans' allocated worker from ``CarePlan.contributor``;
a plan that carries neither shows neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

CARE_TEAM_ROLE: Final = "https://fhir.concord.health/CodeSystem/care-team-role"
NHS_NUMBER: Final = "https://fhir.nhs.uk/Id/nhs-number"
SOURCES: Final = {
    "gp": "GP practice",
    "acute": "Hospital",
    "community": "Community health services",
    "social-care": "Adult social care",
    "fhir": "Other FHIR source",
}
_PLAN_SOURCE: Final = re.compile(r"/Id/([a-z-]+)-care-plan/")

Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Person:
    nhs_number: str
    name: str
    birth_date: str
    gender: str
    address: str
    phone: str
    gp_practice: str
    last_updated: str


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    roles: str
    organisation: str


@dataclass(frozen=True, slots=True)
class Goal:
    description: str
    status: str
    due: str


@dataclass(frozen=True, slots=True)
class Activity:
    what: str
    description: str
    status: str
    start: str
    end: str
    performer: str


@dataclass(slots=True)
class Plan:
    id: str
    source: str
    title: str
    category: str
    status: str
    start: str
    end: str
    author: str
    last_updated: str
    lead_professional: str = ""
    care_navigator: str = ""
    allocated_worker: str = ""
    team: list[Member] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SharedView:
    person: Person
    #: (source label, plans), in the order of ``SOURCES``.
    by_source: list[tuple[str, list[Plan]]]

    @property
    def plans(self) -> int:
        return sum(len(plans) for _, plans in self.by_source)


def is_active_plan(resource_type: str, content: bytes) -> bool:
    return resource_type == "CarePlan" and orjson.loads(content).get("status") == "active"


def shared_view(resources: Iterable[tuple[str, str, bytes]]) -> SharedView | None:
    """The view of what was released: None when it holds no Patient (nothing to show)."""
    patient: Json | None = None
    plans: list[Plan] = []
    for rtype, _rid, content in resources:
        if rtype == "Patient":
            patient = orjson.loads(content)
        elif rtype == "CarePlan":
            body = orjson.loads(content)
            if body.get("status") == "active":
                plans.append(plan(body))
    if patient is None:
        return None
    grouped: dict[str, list[Plan]] = {}
    for p in sorted(plans, key=lambda p: (p.last_updated, p.id), reverse=True):
        grouped.setdefault(p.source, []).append(p)
    order = [*SOURCES, *sorted(set(grouped) - set(SOURCES))]
    return SharedView(person(patient), [(SOURCES.get(s, s), grouped[s]) for s in order if s in grouped])


def person(patient: Json) -> Person:
    number = next(
        (str(i.get("value", "")) for i in _list(patient, "identifier") if i.get("system") == NHS_NUMBER), ""
    )
    names = _list(patient, "name")
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    full = " ".join([*_strs(name.get("prefix")), *_strs(name.get("given")), str(name.get("family", ""))])
    addresses = _list(patient, "address")
    address = addresses[0] if addresses else {}
    lines = [*_strs(address.get("line")), str(address.get("city", "")), str(address.get("postalCode", ""))]
    phone = next(
        (str(t.get("value", "")) for t in _list(patient, "telecom") if t.get("system") == "phone"), ""
    )
    gp = next((_org(g) for g in _list(patient, "generalPractitioner")), "")
    return Person(
        nhs_number=number,
        name=full.strip() or "Name not recorded",
        birth_date=str(patient.get("birthDate", "")),
        gender=str(patient.get("gender", "")).capitalize(),
        address=", ".join(part for part in lines if part),
        phone=phone,
        gp_practice=gp,
        last_updated=str(_map(patient, "meta").get("lastUpdated", "")),
    )


def plan(body: Json) -> Plan:
    contained = {str(c.get("id")): c for c in _list(body, "contained")}
    period = _map(body, "period")
    result = Plan(
        id=str(body.get("id", "")),
        source=_source(body),
        title=str(body.get("title", "")) or _concept(next(iter(_list(body, "category")), {})) or "Care plan",
        category=_concept(next(iter(_list(body, "category")), {})),
        status=str(body.get("status", "")),
        start=str(period.get("start", "")),
        end=str(period.get("end", "")),
        author=_org(_map(body, "author")),
        last_updated=str(_map(body, "meta").get("lastUpdated", "")),
        allocated_worker=", ".join(str(c.get("display", "")) for c in _list(body, "contributor")),
    )
    for team in _resolve(body, "careTeam", contained):
        for participant in _list(team, "participant"):
            _add_member(result, participant)
    result.goals = [_goal(g) for g in _resolve(body, "goal", contained)]
    result.needs = [_concept(_map(c, "code")) for c in _resolve(body, "addresses", contained)]
    result.activities = [_activity(_map(a, "detail")) for a in _list(body, "activity") if a.get("detail")]
    return result


def _add_member(result: Plan, participant: Json) -> None:
    roles = _list(participant, "role")
    codes = {
        str(c.get("code")) for r in roles for c in _list(r, "coding") if c.get("system") == CARE_TEAM_ROLE
    }
    labels = [_concept(r) for r in roles]
    member = Member(
        name=str(_map(participant, "member").get("display", "")),
        roles=", ".join(dict.fromkeys(label for label in labels if label)),
        organisation=_org(_map(participant, "onBehalfOf")),
    )
    result.team.append(member)
    if "lead-professional" in codes and not result.lead_professional:
        result.lead_professional = member.name
    if "care-navigator" in codes and not result.care_navigator:
        result.care_navigator = member.name


def _goal(goal: Json) -> Goal:
    due = next((str(t.get("dueDate", "")) for t in _list(goal, "target") if t.get("dueDate")), "")
    status = _concept(_map(goal, "achievementStatus")) or str(goal.get("lifecycleStatus", ""))
    return Goal(_concept(_map(goal, "description")) or "Goal", status, due)


def _activity(detail: Json) -> Activity:
    scheduled = _map(detail, "scheduledPeriod")
    performer = ", ".join(
        str(p.get("display", "")) or _org(p) for p in _list(detail, "performer") if isinstance(p, Mapping)
    )
    return Activity(
        what=_concept(_map(detail, "code")) or "Activity",
        description=str(detail.get("description", "")),
        status=str(detail.get("status", "")),
        start=str(scheduled.get("start", "")),
        end=str(scheduled.get("end", "")),
        performer=performer,
    )


def _source(body: Json) -> str:
    for identifier in _list(body, "identifier"):
        found = _PLAN_SOURCE.search(str(identifier.get("system", "")))
        if found:
            return found.group(1)
    return "fhir"


def _resolve(body: Json, element: str, contained: Mapping[str, Json]) -> list[Json]:
    refs = [str(r.get("reference", "")) for r in _list(body, element)]
    return [contained[r[1:]] for r in refs if r.startswith("#") and r[1:] in contained]


def _concept(concept: Json) -> str:
    if concept.get("text"):
        return str(concept["text"])
    return next((str(c["display"]) for c in _list(concept, "coding") if c.get("display")), "")


def _org(reference: Json) -> str:
    if reference.get("display"):
        return str(reference["display"])
    identifier = _map(reference, "identifier")
    return f"ODS {identifier['value']}" if identifier.get("value") else ""


def _list(node: Json, key: str) -> Sequence[Json]:
    value = node.get(key)
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _map(node: Json, key: str) -> Json:
    value = node.get(key)
    return value if isinstance(value, Mapping) else {}


def _strs(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
