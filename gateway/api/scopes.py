"""SMART system scopes: their grammar, when one covers another, and what ``POST /token`` grants. Pure.

A scope is ``system/<Type or *>.<access>``, the access in either syntax:

- SMART v1: ``read``, ``write`` or ``*``;
- SMART v2: permission letters out of ``cruds``, in that order (c create, r read, u update,
  d delete, s search), e.g. ``rs``, ``cud``, ``cruds``. No v2 query parameters (``?category=``).

Both compare as sets of permissions, v1 ``read`` being ``rs``, ``write`` ``cud`` and ``*``
``cruds`` (SMART App Launch 2.0, "Scopes for requesting FHIR resources"): ``system/Patient.rs``
is ``system/Patient.read``, and a route that needs ``system/Patient.read`` opens to a token
holding either (or ``system/*.cruds``), never to one holding only ``system/Patient.r``.

Every route needs a whole v1 set (``rs`` to read, ``cud`` to write), so ``/token`` grants a v2
scope only if its permissions hold one of them (``ROUTE_SETS``): ``system/Patient.r``, ``.s``,
``.cu`` would open nothing, and are dropped like a scope for a type not served.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.api.oauth import Rejected

#: The resource types concord serves: a scope for any other type is never granted.
SERVED_TYPES: Final = ("Patient", "CarePlan", "Consent", "AuditEvent")
MAX_SCOPES: Final = 64
MAX_SCOPE_CHARS: Final = 128
_GRAMMAR: Final = re.compile(r"system/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)")
_V1: Final = {"read": "rs", "write": "cud", "*": "cruds"}
#: The permission sets routes need (v1 ``read`` and ``write``): a scope holding neither opens nothing.
ROUTE_SETS: Final = (frozenset("rs"), frozenset("cud"))
#: What ``/.well-known/smart-configuration`` lists: the v1 scopes, and the v2 wildcards.
SUPPORTED: Final = (
    "system/*.read",
    "system/*.write",
    *(f"system/{t}.{a}" for t in ("Patient", "CarePlan", "Consent") for a in ("read", "write")),
    "system/AuditEvent.read",
    "system/*.rs",
    "system/*.cud",
    "system/*.cruds",
)


@dataclass(frozen=True, slots=True)
class Scope:
    #: A resource type, or ``*``.
    type: str
    #: Letters of ``cruds``.
    permissions: frozenset[str]


@functools.lru_cache(maxsize=1024)  # a wildcard is parsed on every request it is checked against
def parse(text: str) -> Scope | None:
    """The scope ``text`` spells, or None when it is not a SMART system scope (v1 or v2)."""
    match = _GRAMMAR.fullmatch(text)
    if match is None or not match[2]:
        return None
    return Scope(match[1], frozenset(_V1.get(match[2], match[2])))


def covers(granted: str, wanted: str) -> bool:
    """Whether one granted scope covers a wanted one: ``system/*.read`` covers ``system/Patient.rs``."""
    if granted == wanted:
        return True
    g, w = parse(granted), parse(wanted)
    return g is not None and w is not None and g.type in ("*", w.type) and w.permissions <= g.permissions


def opens_a_route(scope: Scope) -> bool:
    """Whether a token holding ``scope`` could open any route: its permissions hold ``rs`` or ``cud``."""
    return any(needed <= scope.permissions for needed in ROUTE_SETS)


def grant(requested: str | None, registered: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes the registered ones cover, as requested, in order; ``invalid_scope`` if none.

    A request holding anything that is not a system scope is refused whole (``invalid_scope``). A
    requested scope for a type concord does not serve, whose permissions open no route (v2
    ``system/Patient.r``: ``opens_a_route``), or that no registered one covers, is dropped (the
    response's ``scope`` says what was granted); a registered wildcard (``system/*.read``) grants
    the specific scope asked for.
    """
    wanted = list(dict.fromkeys((requested or "").split()))
    if not wanted:
        raise Rejected("invalid_scope", "scope is required (space-separated SMART system scopes)")
    if len(wanted) > MAX_SCOPES or any(len(s) > MAX_SCOPE_CHARS for s in wanted):
        raise Rejected("invalid_scope", "too many or too long scopes")
    parsed = [parse(s) for s in wanted]
    if any(p is None for p in parsed):
        raise Rejected(
            "invalid_scope",
            "every scope must be a SMART system scope: system/<Type or *>.<read, write or *> "
            "(or SMART v2 permissions, e.g. .rs, .cud)",
        )
    held = tuple(registered)
    granted = tuple(
        s
        for s, p in zip(wanted, parsed, strict=True)
        if p is not None
        and p.type in ("*", *SERVED_TYPES)
        and opens_a_route(p)
        and any(covers(g, s) for g in held)
    )
    if not granted:
        raise Rejected(
            "invalid_scope",
            "none of the requested scopes is registered for this client and served here (SMART v2 "
            "permissions must include rs to read or cud to write)",
        )
    return granted
