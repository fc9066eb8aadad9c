"""The stub HIE's search parameters: parsing a query and matching one resource against it.

Supported (on every type, comma = OR, repeated parameter = AND):

    _id          the logical id
    identifier   token: ``system|value``, ``|value`` (no system), ``system|`` (any value), ``value``
    subject      reference: ``Type/id`` or a URL ending in it; matches ``subject.reference``
    patient      a Patient id or ``Patient/id``; matches ``subject``, ``patient`` or any ``target``
    target       reference; matches any ``target[].reference`` (Provenance)
    _count       at most this many results (not a match criterion)
    _format      ignored (JSON is the only format)

Anything else raises ``SearchError`` (a 400): a stub that silently ignored a misspelt parameter
would let a wrong query look right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

CRITERIA: Final = frozenset({"_id", "identifier", "subject", "patient", "target"})
IGNORED: Final = frozenset({"_format"})


class SearchError(ValueError):
    """A query the stub does not support; the message names the parameter, never its value."""


@dataclass(frozen=True)
class Query:
    """Parsed search: ``criteria`` are (name, alternatives) pairs, all of which must match."""

    criteria: tuple[tuple[str, tuple[str, ...]], ...] = ()
    count: int | None = None


def parse_query(pairs: Iterable[tuple[str, str]]) -> Query:
    criteria: list[tuple[str, tuple[str, ...]]] = []
    count: int | None = None
    for name, value in pairs:
        if name in IGNORED:
            continue
        if name == "_count":
            if not value.isdigit():
                raise SearchError("_count must be a whole number")
            count = int(value)
        elif name in CRITERIA:
            criteria.append((name, tuple(value.split(","))))
        else:
            raise SearchError(f"search parameter not supported by the stub: {name}")
    return Query(tuple(criteria), count)


def exact_identifier(query: Query) -> tuple[str, str] | None:
    """(system, value) when the query is exactly one ``identifier=system|value``: the indexed case."""
    if len(query.criteria) != 1:
        return None
    name, alternatives = query.criteria[0]
    if name != "identifier" or len(alternatives) != 1 or "|" not in alternatives[0]:
        return None
    system, value = alternatives[0].split("|", 1)
    return (system, value) if system and value else None


def matches(resource: Mapping[str, Any], query: Query) -> bool:
    return all(any(_match(resource, name, alt) for alt in alts) for name, alts in query.criteria)


def _match(resource: Mapping[str, Any], name: str, value: str) -> bool:
    if name == "_id":
        return resource.get("id") == value
    if name == "identifier":
        return any(_token(ident, value) for ident in _list(resource.get("identifier")))
    if name == "subject":
        return _reference(resource.get("subject"), value)
    if name == "target":
        return any(_reference(t, value) for t in _list(resource.get("target")))
    wanted = value if "/" in value else f"Patient/{value}"
    refs = [resource.get("subject"), resource.get("patient"), *_list(resource.get("target"))]
    return any(_reference(r, wanted) and _points_to_patient(r) for r in refs)


def _token(identifier: Any, value: str) -> bool:
    if not isinstance(identifier, Mapping):
        return False
    if "|" not in value:
        return bool(identifier.get("value") == value)
    system, code = value.split("|", 1)
    if system and identifier.get("system") != system:
        return False
    if not system and identifier.get("system"):
        return False
    return not code or identifier.get("value") == code


def _reference(ref: Any, wanted: str) -> bool:
    if not isinstance(ref, Mapping):
        return False
    actual = ref.get("reference")
    if not isinstance(actual, str):
        return False
    return actual == wanted or actual.endswith("/" + wanted)


def _points_to_patient(ref: Any) -> bool:
    actual = ref.get("reference", "") if isinstance(ref, Mapping) else ""
    return isinstance(actual, str) and (actual.startswith("Patient/") or "/Patient/" in actual)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
