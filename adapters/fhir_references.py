"""References inside a pushed Bundle: which entry a reference names, and how a record's are rewritten.

FHIR R4 (bundle.html#references): entries name each other by ``fullUrl`` (often a
``urn:uuid`` the sender mints for the one Bundle), or by ``Type/id`` (the entry's
resource id, or the end of a RESTful ``fullUrl``), ``/_history/n`` ignored. A
Patient is also named by NHS number (a conditional reference or a logical
identifier reference). On the server the sender's ids mean nothing, so a record's
references are rewritten before mapping (``rebased``):

- to the person's own Patient entry: a reference by NHS number, which names the
  shared Patient wherever the plan is read;
- to another CarePlan entry of the same record: ``PLAN_REFERENCE`` and that plan's
  local id, which the mapper turns into the id it gives that plan;
- anything else is left as sent: the mapper stores no literal reference that names
  neither the person, nor a plan of the record, nor a contained resource.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from adapters.records import PLAN_REFERENCE

NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
_HISTORY = re.compile(r"/_history/[^/]*$")
_SEPARATORS = re.compile(r"[\s\-]")


class EntryIndex:
    """Finds the entries of one resource type a reference names: by fullUrl or ``Type/id``.

    For Patient entries each NHS number is a name too (``nhs:NNN``).
    """

    def __init__(self, rtype: str, entries: list[Any], members: Iterable[int]) -> None:
        self.rtype = rtype
        self.by_key: dict[str, set[int]] = {}
        #: Every key that names each entry (its aliases in this Bundle).
        self.keys_of: dict[int, set[str]] = {}
        marker = f"/{rtype}/"
        for n in members:
            resource = entries[n]["resource"]
            full_url = stripped(entries[n].get("fullUrl"))
            keys = {full_url} if full_url else set()
            if full_url and marker in full_url and not full_url.startswith("urn:"):
                keys.add(f"{rtype}/" + _HISTORY.sub("", full_url).rsplit(marker, 1)[1])
            if stripped(resource.get("id")):
                keys.add(f"{rtype}/{resource['id']}")
            if rtype == "Patient":
                keys.update(f"nhs:{number}" for number in nhs_numbers(resource))
            self.keys_of[n] = keys
            for key in keys:
                self.by_key.setdefault(key, set()).add(n)

    def resolve(self, subject: Any) -> tuple[str | None, str | None]:
        """The group key of a Patient ``subject`` (``entry N`` or ``nhs:NNN``), or None and why."""
        key = subject_key(subject)
        if key is None:
            return None, "subject is not a Patient reference this gateway can resolve"
        found = self.by_key.get(key, set())
        if len(found) > 1:
            return None, "subject matches more than one Patient entry"
        if found:
            return f"entry {next(iter(found))}", None
        if key.startswith("nhs:"):
            return key, None
        return None, None

    def only(self, reference: str) -> int | None:
        """The one entry a literal reference names, else None (none, or more than one: never guessed)."""
        key = literal_key(reference, self.rtype)
        found = self.by_key.get(key, set()) if key else set()
        return next(iter(found)) if len(found) == 1 else None


def subject_key(subject: Any) -> str | None:
    """How a reference names a Patient: ``nhs:NNN``, a fullUrl or ``Patient/id``; None if it does not."""
    if not isinstance(subject, Mapping):
        return None
    reference = stripped(subject.get("reference"))
    if reference is None:
        ident = subject.get("identifier")
        if (
            isinstance(ident, Mapping)
            and ident.get("system") == NHS_NUMBER_SYSTEM
            and stripped(ident.get("value"))
        ):
            return "nhs:" + normal(str(ident["value"]))
        return None
    if reference.startswith("Patient?"):
        for name, value in parse_qsl(reference.partition("?")[2]):
            system, bar, number = value.rpartition("|")
            if name == "identifier" and bar and system == NHS_NUMBER_SYSTEM and number.strip():
                return "nhs:" + normal(number)
        return None
    return literal_key(reference, "Patient")


def literal_key(reference: str, rtype: str) -> str | None:
    """A literal reference as an index key: a fullUrl (absolute or ``urn:``) or ``Type/id``."""
    if reference.startswith("#") or "?" in reference:
        return None
    reference = _HISTORY.sub("", reference)
    if ":" in reference.split("/", 1)[0]:  # absolute URL or urn:uuid: matches a fullUrl
        return reference
    return reference if reference.startswith(f"{rtype}/") else None


def rebased(value: Any, person: set[str], nhs_number: str, plans: Mapping[str, str]) -> Any:
    """``value`` with the references to this record's entries rewritten.

    ``person``: the keys naming the person's Patient entry (``subject_key``); such a reference
    becomes one by NHS number. ``plans``: the keys naming the record's CarePlan entries, each with
    the plan's local id; such a reference becomes ``PLAN_REFERENCE`` + local id.
    """
    if isinstance(value, list):
        return [rebased(v, person, nhs_number, plans) for v in value]
    if not isinstance(value, Mapping):
        return value
    reference = value.get("reference")
    if isinstance(reference, str):
        if subject_key(value) in person:
            kept = {k: v for k, v in value.items() if k not in ("reference", "identifier", "type")}
            by_number = {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}
            return {"type": "Patient", "identifier": by_number, **kept}
        plan = plans.get(literal_key(reference.strip(), "CarePlan") or "")
        if plan is not None:
            return {**value, "reference": PLAN_REFERENCE + plan}
    return {k: rebased(v, person, nhs_number, plans) for k, v in value.items()}


def nhs_numbers(patient: Mapping[str, Any]) -> list[str]:
    """The distinct NHS numbers of a Patient (spaces and dashes removed; not checked here)."""
    out: list[str] = []
    for ident in nhs_identifiers(patient):
        number = normal(str(ident["value"]))
        if number not in out:
            out.append(number)
    return out


def nhs_identifiers(patient: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    idents = patient.get("identifier")
    if not isinstance(idents, list):
        return []
    return [
        i
        for i in idents
        if isinstance(i, Mapping) and i.get("system") == NHS_NUMBER_SYSTEM and stripped(i.get("value"))
    ]


def normal(number: str) -> str:
    return _SEPARATORS.sub("", number)


def stripped(value: Any) -> str | None:
    """A JSON string without surrounding space; None for anything else or for nothing left."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None
