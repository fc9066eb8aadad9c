"""Who is calling: the client organisation behind an access token, its role and its scopes. Pure.

Scopes are SMART system scopes (``system/Patient.read``, ``system/*.write``, ``system/Consent.*``,
or in v2 syntax ``system/Patient.rs``): a granted wildcard covers the specific scope asked for
(``gateway.api.scopes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from consent.model import Requester, RequesterKind
from gateway.api.scopes import covers


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
        return any(covers(g, scope) for g in self.scopes)

    @property
    def requester(self) -> Requester:
        return Requester(REQUESTER_KIND[self.role], self.ods_code, self.client_id)
