"""The IG pages' filter forms: read, check and carry between requests (sealed). Pure.

Each filter reads a POSTed form (``read_*``: the filter and the problems found, each tied to
the field's id for the error summary) and goes into and out of a sealed URL reference as a
dict. Messages never repeat what was typed (it may be an NHS number).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import Any, Final, TypeVar

from consent.model import OptOutKind, Purpose
from mappings import nhs_number as nhs

SOURCES: Final = ("cli", "import", "gp-extract", "api")
STATUSES: Final = ("active", "withdrawn")
KINDS: Final = tuple(k.value for k in OptOutKind)
PURPOSES: Final = tuple(p.value for p in Purpose)
DECISIONS: Final = ("permit", "deny")
HIE_STATES: Final = ("published", "retracted", "none")
_ODS: Final = re.compile(r"[A-Z0-9]{1,20}")

Problems = dict[str, str]


@dataclass(frozen=True, slots=True)
class ConsentFilter:
    since: str = ""
    until: str = ""
    source: str = ""
    nhs_number: str = ""
    status: str = ""
    kind: str = ""


@dataclass(frozen=True, slots=True)
class AccessFilter:
    org_ods: str = ""
    nhs_number: str = ""
    purpose: str = ""
    decision: str = ""
    since: str = ""
    until: str = ""


@dataclass(frozen=True, slots=True)
class PublicationFilter:
    state: str = ""
    nhs_number: str = ""


F = TypeVar("F", ConsentFilter, AccessFilter, PublicationFilter)


def as_dict(value: ConsentFilter | AccessFilter | PublicationFilter) -> dict[str, Any]:
    return asdict(value)


def from_dict(cls: type[F], data: dict[str, Any] | None) -> F:
    """A filter from a sealed dict (unknown keys dropped); the empty filter for None."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: str(v) for k, v in (data or {}).items() if k in names})


def is_empty(value: ConsentFilter | AccessFilter | PublicationFilter) -> bool:
    return not any(as_dict(value).values())


def read_nhs_number(text: str, field_id: str, problems: Problems) -> str:
    if not text.strip():
        return ""
    try:
        return nhs.normalise(text)
    except nhs.NhsNumberError:
        problems[field_id] = "Enter a valid 10-digit NHS number"
        return ""


def _choice(text: str, allowed: tuple[str, ...], field_id: str, label: str, problems: Problems) -> str:
    value = text.strip()
    if value and value not in allowed:
        problems[field_id] = f"Choose a {label} in the list"
        return ""
    return value


def _day(text: str, field_id: str, label: str, problems: Problems) -> str:
    value = text.strip()
    if not value:
        return ""
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        problems[field_id] = f"{label} must be a real date, like 2026-03-31"
        return ""


def _window(since: str, until: str, problems: Problems) -> None:
    if since and until and since > until:
        problems["until"] = "The end date must be the same as or after the start date"


def read_consent(form: dict[str, str]) -> tuple[ConsentFilter, Problems]:
    problems: Problems = {}
    found = ConsentFilter(
        since=_day(form.get("since", ""), "since", "The start date", problems),
        until=_day(form.get("until", ""), "until", "The end date", problems),
        source=_choice(form.get("source", ""), SOURCES, "source", "source", problems),
        nhs_number=read_nhs_number(form.get("nhs_number", ""), "nhs-number", problems),
        status=_choice(form.get("status", ""), STATUSES, "status", "status", problems),
        kind=_choice(form.get("kind", ""), KINDS, "kind", "kind of opt-out", problems),
    )
    _window(found.since, found.until, problems)
    return found, problems


def read_access(form: dict[str, str]) -> tuple[AccessFilter, Problems]:
    problems: Problems = {}
    ods = form.get("org_ods", "").strip().upper()
    if ods and not _ODS.fullmatch(ods):
        problems["org-ods"] = "Enter an ODS code: letters and numbers only"
        ods = ""
    found = AccessFilter(
        org_ods=ods,
        nhs_number=read_nhs_number(form.get("nhs_number", ""), "nhs-number", problems),
        purpose=_choice(form.get("purpose", ""), PURPOSES, "purpose", "purpose", problems),
        decision=_choice(form.get("decision", ""), DECISIONS, "decision", "decision", problems),
        since=_day(form.get("since", ""), "since", "The start date", problems),
        until=_day(form.get("until", ""), "until", "The end date", problems),
    )
    _window(found.since, found.until, problems)
    return found, problems


def read_publication(form: dict[str, str]) -> tuple[PublicationFilter, Problems]:
    problems: Problems = {}
    found = PublicationFilter(
        state=_choice(form.get("state", ""), HIE_STATES, "state", "state", problems),
        nhs_number=read_nhs_number(form.get("nhs_number", ""), "nhs-number", problems),
    )
    return found, problems


def error_list(problems: Problems) -> list[dict[str, str]]:
    """The error summary's items: each links to its field."""
    return [{"text": message, "href": f"#{field_id}"} for field_id, message in problems.items()]
