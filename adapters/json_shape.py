"""Checking a JSON object against the shape a source documents, field by field.

A shape maps field names to a kind: ``"str"``, ``"id"`` (string or whole number),
``"number"``, a nested shape (an object) or a one-element list of a kind (a list
of those). ``null`` is allowed anywhere: whether a field is required is the
mapping's business. The answer names the first bad field by its path
(``plan.goals[0]``) and what it should be, never its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Problem = tuple[str, str]


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
