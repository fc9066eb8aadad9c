"""Checking a JSON object against the shape a source documents, field by field.

A shape maps field names to a kind: ``"str"``, ``"id"`` (string or whole number),
``"number"``, a nested shape (an object) or a one-element list of a kind (a list
of those). ``null`` is allowed anywhere: whether a field is required is the
mapping's business. The answer names the first bad field by its path
(``plan.goals[0]``) and what it should be, never its value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

Problem = tuple[str, str]

#: A member name shown in a report: shaped like a field name (never a value sent by mistake).
_NAME_SHAPE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


class _Repeated(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unrepeated(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Repeated(name)
            seen.add(name)
    return members


def repeated_name(text: str | bytes) -> str | None:
    """How to name the first member name that one object of the JSON document ``text`` holds twice
    (``'plan'``, or ``a name`` for one not shaped like a field name); None if no object repeats one.

    JSON parsers differ on a repeated name (most keep the last, silently; FHIR's JSON format and
    RFC 8259's interoperable subset allow none), so a record that has one is not read at all.
    ``text`` is a document that already parsed.
    """
    try:
        json.loads(text, object_pairs_hook=_unrepeated)
    except _Repeated as repeated:
        return shown_name(repeated.name)
    except (ValueError, RecursionError):
        return None  # what the caller's parser accepted and this one does not is not a repeat
    return None


def shown_name(name: str) -> str:
    return repr(name) if _NAME_SHAPE.fullmatch(name) else "a name"


def shape_problem(value: Mapping[str, Any], shape: Mapping[str, Any], path: str = "") -> Problem | None:
    """The first field of ``value`` whose JSON type differs from ``shape``: (path, what it must be)."""
    for name, kind in shape.items():
        found = _kind_problem(value.get(name), kind, f"{path}{name}")
        if found is not None:
            return found
    return None


def _kind_problem(value: Any, kind: Any, where: str) -> Problem | None:
    if value is None:
        return None
    if isinstance(kind, Mapping):
        if not isinstance(value, dict):
            return where, "an object"
        return shape_problem(value, kind, f"{where}.")
    if isinstance(kind, list):
        if not isinstance(value, list):
            return where, "a list"
        for i, item in enumerate(value):
            if item is None:
                return f"{where}[{i}]", "an object"
            found = _kind_problem(item, kind[0], f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if kind == "str" and not isinstance(value, str):
        return where, "a string"
    if kind == "id" and (isinstance(value, bool) or not isinstance(value, str | int)):
        return where, "a string or a whole number"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return where, "a number"
    return None
