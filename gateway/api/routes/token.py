"""``POST /token`` (SMART Backend Services client credentials) and the SMART configuration document.

OAuth, not FHIR: errors are RFC 6749 §5.2 JSON ``{error, error_description}`` (``gateway.api.oauth``),
never an OperationOutcome. Status 400 for every refusal (SMART; ``invalid_client`` included, as
RFC 6749 permits when the client did not use the Authorization header), 401 for a client that
tried the Authorization header; 503 ``temporarily_unavailable`` with Retry-After when the store
(client registry or replay store) cannot be reached.

The request's own checks are ``token_request``'s, the assertion's ``assertion``'s, the keys
``client_keys``'s, the scopes ``scopes``'s; this module runs them in order and records the jti as
soon as the assertion has passed every check of its own, before scopes are looked at: an assertion
refused for its scopes is used up too. The client's row is read on every call (a disabled client
is refused at once; /token is called once per token, at most every few minutes per client). Logs
name the error code and, once the assertion's ``iss`` is known to be a registered client's id,
that id; never the assertion or the token.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.api import assertion, openapi, scopes
from gateway.api.client_keys import ClientKeys, jwks_url
from gateway.api.oauth import JSON, NO_STORE, TOKEN_PATH, Rejected, error_body
from gateway.api.replay import STORE_ERRORS, ReplayStore, ReplayUnavailable, build_replay_store
from gateway.api.token_request import TokenRequest, parse_form
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import Services
from gateway.settings import Settings
from gateway.store import clients as registry

log = logging.getLogger(__name__)

FORM: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 65_536
#: SMART capabilities: Backend Services' client authentication, and both scope syntaxes.
CAPABILITIES: Final = ("client-confidential-asymmetric", "permission-v1", "permission-v2")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's own lifespan (services are up): the replay store and the client keys
    (with their HTTP session) live as long as the app."""
    services: Services = app.state.services
    store = build_replay_store(_settings(app), services.engine)
    app.state.replay = store
    app.state.client_keys = keys = ClientKeys()
    try:
        yield
    finally:
        await keys.close()
        await store.close()


router = APIRouter(lifespan=lifespan)


def _settings(app: FastAPI) -> Settings:
    """The app's settings: those its access tokens were made with (issuer = public URL)."""
    settings: Settings = app.state.settings
    return settings


def token_url(settings: Settings) -> str:
    """The token endpoint's URL: the ``aud`` every client assertion must carry, exactly."""
    return settings.public_url.rstrip("/") + TOKEN_PATH


@dataclass(slots=True)
class _Attempt:
    """What the log may say about a request: the client, once ``iss`` is known to be registered."""

    client_id: str | None = None


@router.post(
    TOKEN_PATH,
    summary="Access token (SMART Backend Services)",
    responses=openapi.TOKEN_RESPONSES,
    openapi_extra=openapi.TOKEN_REQUEST,
)
async def token(request: Request) -> Response:
    attempt = _Attempt()
    try:
        form = parse_form(await _body(request))
        asked = TokenRequest.parse(form, request.headers.get("authorization"))
        body = await _issue(request, asked, attempt)
    except Rejected as exc:
        log.info("token refused: %s (%s), client %s", exc.error, exc.description, attempt.client_id or "-")
        return error_response(exc.status, exc.error, exc.description, exc.headers)
    except (ReplayUnavailable, *STORE_ERRORS) as exc:
        log.warning(
            "token refused: store unavailable (%s), client %s", type(exc).__name__, attempt.client_id or "-"
        )
        return error_response(
            503, "temporarily_unavailable", "try again shortly, with a new assertion", {"Retry-After": "5"}
        )
    return JSONResponse(body, headers=NO_STORE)


async def _issue(request: Request, asked: TokenRequest, attempt: _Attempt) -> dict[str, Any]:
    """Check the assertion (``assertion`` module docstring), record the jti, grant scopes, issue."""
    unverified = assertion.read(asked.assertion)
    client_id = assertion.claimed_client(unverified)
    services: Services = request.app.state.services
    async with services.engine.connect() as conn:
        client = await registry.get(conn, client_id)
    if client is None:
        raise Rejected("invalid_client", "the client is not registered or is disabled")
    attempt.client_id = client_id
    if asked.client_id is not None and asked.client_id != client_id:
        # SMART: the client_id sent SHALL match the JWT's iss (RFC 7521 §4.2).
        raise Rejected("invalid_client", "client_id does not match the assertion's iss")
    if client.disabled:
        raise Rejected("invalid_client", "the client is not registered or is disabled")
    assertion.check_jku(unverified, jwks_url(client.jwks))
    client_keys: ClientKeys = request.app.state.client_keys
    keys = await client_keys.keys(client_id, client.jwks, unverified.header.get("kid"))
    claims = assertion.verify(asked.assertion, unverified, keys)
    now = time.time()
    checked = assertion.check_claims(
        claims, client_id=client_id, audience=token_url(_settings(request.app)), now=now
    )
    replay: ReplayStore = request.app.state.replay
    if not await replay.claim(client_id, checked.jti, checked.expires_at, now):
        raise Rejected("invalid_client", "this assertion's jti has been used already")
    granted = scopes.grant(asked.scope, client.scopes)
    tokens: AccessTokens = request.app.state.tokens
    principal = client.principal(granted)
    request.state.principal = principal  # authenticated now: the access log names the client
    access_token, lifetime = tokens.issue(principal, frozenset(granted))
    log.info("token issued: client %s, scopes %s", client_id, " ".join(granted))
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": " ".join(granted),
    }


async def _body(request: Request) -> bytes:
    """The form-encoded body, at most ``MAX_FORM_BYTES``."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM:
        raise Rejected("invalid_request", f"the request body must be {FORM}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise Rejected("invalid_request", "the request body is too large")
    return bytes(raw)


def error_response(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    """An OAuth error answer, never cached (also the app's answer to a 405 at /token)."""
    return Response(error_body(error, description), status, {**NO_STORE, **(headers or {})}, media_type=JSON)


def smart_configuration(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "token_endpoint": token_url(_settings(request.app)),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(assertion.ALGORITHMS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": list(scopes.SUPPORTED),
            "capabilities": list(CAPABILITIES),
        }
    )


for _path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
    router.add_api_route(_path, smart_configuration, methods=["GET"], summary="SMART configuration")
