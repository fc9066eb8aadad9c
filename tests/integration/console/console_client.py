"""A browser-like client for the console's tests, and the principals they sign in as.

``Console`` keeps cookies like a browser and reads each page's CSRF token, so a test reads as
what a person does: sign in, open a page, send a form. (A module of its own, not conftest.py,
so that tests import it by a name no other module shares.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store.schema import audit_log

IG = Principal(
    "ig-board",
    "Borough IG board",
    "15E",
    Role.IG_AUDITOR,
    frozenset({"system/AuditEvent.read", "system/Consent.read"}),
)
IG_LOG_ONLY = Principal("ig-log", "Log reader", "15E", Role.IG_AUDITOR, frozenset({"system/AuditEvent.read"}))
CLINICIAN = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
OTHER_CLINICIAN = Principal("epr-b", "Acute EPR", "RXX", Role.PROVIDER, frozenset({"system/*.read"}))
SOURCE = Principal("gp-feed", "GP feed", "Y90001", Role.SOURCE, frozenset({"system/*.write"}), "gp")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    app: FastAPI
    client: httpx.AsyncClient
    services: Services
    csrf: str = ""

    def token(self, who: Principal) -> str:
        return str(self.app.state.tokens.issue(who)[0])

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(path, **kwargs)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def post(self, path: str, data: dict[str, str], csrf: str | None = None) -> httpx.Response:
        fields = {"csrf_token": self.csrf if csrf is None else csrf, **data}
        response = await self.client.post(path, data=fields)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def sign_in(self, who: Principal) -> httpx.Response:
        self.client.cookies.clear()
        await self.get("/console/sign-in")
        response = await self.post("/console/sign-in", {"access_token": self.token(who)})
        assert response.status_code == 303, response.text
        await self.get("/console/")
        return response

    async def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 303, response.text
        return await self.get(response.headers["location"])

    async def log_size(self) -> int:
        async with self.services.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())

    async def entries_after(self, seq: int) -> list[dict[str, Any]]:
        async with self.services.engine.connect() as conn:
            rows = await conn.execute(
                select(audit_log).where(audit_log.c.seq > seq).order_by(audit_log.c.seq)
            )
            return [dict(r) for r in rows.mappings()]
