"""SMART Backend Services clients for the tests: registered with a key, signing assertions, and the
app they call (in process, lifespan running) with a probe route that only opens to a token with
``system/Patient.read`` (``gateway.api.deps.require``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import jwt
import orjson
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI

from gateway.api.app import create_app
from gateway.api.assertion import ASSERTION_TYPE, public_jwk
from gateway.api.deps import require
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.cli import cli
from gateway.settings import Settings
from gateway.store import clients as registry

AUD = "http://127.0.0.1:8080/token"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Registered:
    client_id: str
    name: str
    key: PrivateKey
    kid: str
    alg: str

    def assertion(
        self, *, alg: str | None = None, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A signed assertion; ``claims`` override the defaults (a value of None drops the claim)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": AUD,
            "exp": now + 240,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, self.key, algorithm=alg or self.alg, headers={"kid": self.kid, **(headers or {})}
        )


async def register(
    services: Services,
    key: PrivateKey,
    alg: str,
    *,
    name: str | None = None,
    scopes: tuple[str, ...] = ("system/*.read", "system/Consent.write"),
    jwks: str | None = None,
) -> Registered:
    """Register a provider client whose keys are ``key``'s public JWK (or ``jwks``, as given)."""
    jwk = public_jwk(key.public_key(), alg)
    name = name or f"client-{uuid.uuid4().hex[:8]}"
    async with services.engine.begin() as conn:
        client = await registry.add(
            conn,
            name=name,
            ods_code="RX1",
            role=Role.PROVIDER,
            scopes=scopes,
            source=None,
            jwks=jwks if jwks is not None else orjson.dumps({"keys": [jwk]}).decode(),
            when=datetime.now(UTC),
        )
    return Registered(client.client_id, name, key, jwk["kid"], alg)


def probe_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    app = create_app(settings, services)

    @app.get("/_probe")
    def probe(principal: Annotated[Principal, Depends(require("system/Patient.read"))]) -> dict[str, str]:
        return {"client": principal.client_id, "ods": principal.ods_code}

    return app


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app``, its lifespan running; the app is the client's ``app`` attribute."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


def form(assertion: str | None, **changes: str | None) -> dict[str, str]:
    data: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": "system/Patient.read system/CarePlan.read",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def check_oauth_error(response: httpx.Response, error: str, status: int = 400) -> str:
    """Assert ``response`` is the OAuth error ``error`` (RFC 6749 §5.2, never cached); its description."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error, body
    description: str = body["error_description"]
    return description


async def refused(client: httpx.AsyncClient, data: dict[str, str], error: str, status: int = 400) -> str:
    return check_oauth_error(await client.post("/token", data=data), error, status)


def invoke(*args: str) -> Any:
    """``concord`` with ``args``, in process."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)
