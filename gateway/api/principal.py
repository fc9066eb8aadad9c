"""Who is calling: the client organisation behind an access token, its role and its scopes. Pure.

Scopes follow SMART v1 system scopes (``system/Patient.read``, ``system/*.write``,
``system/Consent.*``); a granted wildcard covers the specific scope asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from consent.model import Requester, RequesterKind


class Role(StrEnum):
    PROVIDER = "provider"
    SOURCE = "source"
    IG_AUDITOR = "ig-auditor"
    ADMIN = "admin"


REQUESTER_KIND = {
    Role.PROVIDER: RequesterKind.PROVIDER,
    Role.SOURCE: RequesterKind.SOURCE,
    Role.IG_AUDITOR: RequesterKind.IG_AUDITOR,
    Role.ADMIN: RequesterKind.OPERATOR,
}


def scope_covers(granted: str, wanted: str) -> bool:
    """Whether one granted scope covers a wanted one: ``system/*.read`` covers ``system/Patient.read``."""
    if granted == wanted:
        return True
    g_ctx, _, g_rest = granted.partition("/")
    w_ctx, _, w_rest = wanted.partition("/")
    g_type, _, g_access = g_rest.partition(".")
    w_type, _, w_access = w_rest.partition(".")
    return (
        g_ctx == w_ctx
        and g_type in ("*", w_type)
        and (g_access in ("*", w_access) or (g_access == "write" and w_access == "write"))
    )


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    name: str
    ods_code: str
    role: Role
    scopes: frozenset[str]
    #: For a source system: the one source whose records it may write (e.g. ``social-care``).
    source: str | None = None

    def allows(self, scope: str) -> bool:
        return any(scope_covers(g, scope) for g in self.scopes)

    @property
    def requester(self) -> Requester:
        return Requester(REQUESTER_KIND[self.role], self.ods_code, self.client_id)
