"""The shared Patient: one per NHS number, merged from every source's contribution.

Precedence (docs/mapping.md): for each top-level element, the first source in
``PRECEDENCE`` that has it wins: the GP holds the registered demographics,
then the acute trust, community, social care, then pushed FHIR. Within one
source the most recently recorded contribution wins. A choice element
(``deceased[x]``, ``multipleBirth[x]``) is one element whatever its form: the
winner's form is kept and any other dropped, since FHIR allows one.
Disagreements on the elements that identify a person (date of birth, gender)
are never resolved silently: they come back as Conflicts for the data-quality
report, and so does a choice element that sources hold in different forms (the
shared Patient can show only one of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from mappings.engine import parse_datetime
from mappings.validate import NHS_NUMBER_SYSTEM, UKCORE_PATIENT

PRECEDENCE: Final = ("gp", "acute", "community", "social-care", "fhir")
CHECKED_ELEMENTS: Final = ("birthDate", "gender")
_SKIP: Final = frozenset({"resourceType", "id", "meta", "text"})
#: Patient's choice elements (FHIR R4, all top-level) by the JSON names of their forms.
CHOICE_ELEMENTS: Final = {
    "deceasedBoolean": "deceased[x]",
    "deceasedDateTime": "deceased[x]",
    "multipleBirthBoolean": "multipleBirth[x]",
    "multipleBirthInteger": "multipleBirth[x]",
}


@dataclass(frozen=True, slots=True)
class Contribution:
    source: str
    local_id: str
    body: dict[str, Any]
    recorded: str = ""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two or more sources disagree on ``element`` for one person. No values: they are patient data."""

    element: str
    sources: tuple[str, ...]
    distinct_values: int


def recorded_instant(recorded: str) -> float | None:
    """A contribution's recorded time as a UTC timestamp (ISO 8601 or HL7 TS); None if absent or bad."""
    parsed = parse_datetime(recorded) if recorded else None
    return parsed.timestamp() if parsed is not None else None


def _rank(c: Contribution) -> tuple[int, float, str]:
    order = PRECEDENCE.index(c.source) if c.source in PRECEDENCE else len(PRECEDENCE)
    instant = recorded_instant(c.recorded)
    # Newest first within a source; a contribution with no readable time ranks as the oldest.
    return (order, -instant if instant is not None else float("inf"), c.local_id)


def merge(patient_id: str, contributions: Sequence[Contribution]) -> tuple[dict[str, Any], list[Conflict]]:
    """Build the shared Patient from all contributions (at least one)."""
    if not contributions:
        raise ValueError("a shared Patient needs at least one contribution")
    ranked = sorted(contributions, key=_rank)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [UKCORE_PATIENT]},
    }
    taken: set[str] = set()
    for contribution in ranked:
        for key, value in contribution.body.items():
            element = CHOICE_ELEMENTS.get(key, key)
            if key not in _SKIP and element not in taken:
                patient[key] = value
                taken.add(element)
    return patient, conflicts(ranked)


def retired(patient_id: str, nhs_number: str) -> dict[str, Any]:
    """The shared Patient of a person no source holds any more (an HL7 merge retired the last
    record): inactive and identified by the NHS number alone.

    No ``link`` to the survivor: served or published, it would tell its reader that concord holds
    that person, who may have opted out.
    """
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [UKCORE_PATIENT]},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs_number}],
        "active": False,
    }


def conflicts(contributions: Sequence[Contribution]) -> list[Conflict]:
    """The checked elements the contributions disagree on, then the choice elements they hold in
    more than one form."""
    found = []
    for element in CHECKED_ELEMENTS:
        values: dict[str, set[str]] = {}
        for c in contributions:
            v = c.body.get(element)
            if v is not None and v != "unknown":
                values.setdefault(str(v), set()).add(c.source)
        if len(values) > 1:
            found.append(_conflict(element, values))
    for element in dict.fromkeys(CHOICE_ELEMENTS.values()):
        held: dict[str, set[str]] = {}
        forms: set[str] = set()
        for c in contributions:
            for key, v in c.body.items():
                if CHOICE_ELEMENTS.get(key) == element:
                    held.setdefault(f"{key}={v!r}", set()).add(c.source)
                    forms.add(key)
        if len(forms) > 1:
            found.append(_conflict(element, held))
    return found


def _conflict(element: str, values: dict[str, set[str]]) -> Conflict:
    sources = sorted({s for group in values.values() for s in group})
    return Conflict(element, tuple(sources), len(values))
