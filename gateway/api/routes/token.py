"""``POST /token`` (SMART Backend Services client credentials) and the SMART configuration document.

OAuth, not FHIR: errors are RFC 6749 §5.2 JSON ``{error, error_description}``, never an
OperationOutcome. Status 400 for every refusal (SMART; ``invalid_client`` included, as RFC 6749
permits when the client did not use the Authorization header); 503 ``temporarily_unavailable``
with Retry-After when the store (client registry or replay store) cannot be reached.

The client's row is read on every call (a disabled client is refused at once; /token is called
once per token, at most every few minutes per client); its JWK Set's parsing is cached per process
on the set's text (``assertion.parse_jwks``). Logs name the client id and the error code, never
the assertion.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.api import assertion, openapi
from gateway.api.assertion import Rejected
from gateway.api.replay import STORE_ERRORS, ReplayStore, ReplayUnavailable, build_replay_store
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import Services
from gateway.settings import Settings
from gateway.store import clients as registry

log = logging.getLogger(__name__)

FORM: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 65_536
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SCOPES_SUPPORTED: Final = (
    "system/*.read",
    "system/*.write",
    "system/Patient.read",
    "system/Patient.write",
    "system/CarePlan.read",
    "system/CarePlan.write",
    "system/Consent.read",
    "system/Consent.write",
    "system/AuditEvent.read",
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's own lifespan (services are up): the replay store lives as long as the app."""
    services: Services = app.state.services
    store = build_replay_store(_settings(app), services.engine)
    app.state.replay = store
    try:
        yield
    finally:
        await store.close()


router = APIRouter(lifespan=lifespan)


def _settings(app: FastAPI) -> Settings:
    """The app's settings: those its access tokens were made with (issuer = public URL)."""
    settings: Settings = app.state.settings
    return settings


def token_url(settings: Settings) -> str:
    """The token endpoint's URL: the ``aud`` every client assertion must carry, exactly."""
    return settings.public_url.rstrip("/") + "/token"


@router.post(
    "/token",
    summary="Access token (SMART Backend Services)",
    responses=openapi.TOKEN_RESPONSES,
    openapi_extra=openapi.TOKEN_REQUEST,
)
async def token(request: Request) -> JSONResponse:
    try:
        form = await _form(request)
        body = await _issue(request, form)
    except Rejected as exc:
        log.info("token refused: %s (%s)", exc.error, exc.description)
        return _error(400, exc.error, exc.description)
    except (ReplayUnavailable, *STORE_ERRORS) as exc:
        log.warning("token refused: store unavailable (%s)", type(exc).__name__)
        return _error(503, "temporarily_unavailable", "try again shortly, with a new assertion", True)
    return JSONResponse(body, headers=NO_STORE)


async def _issue(request: Request, form: Mapping[str, str]) -> dict[str, Any]:
    """Check the request and the assertion (``assertion`` module docstring), record the jti, issue."""
    if form.get("grant_type") != "client_credentials":
        if "grant_type" not in form:
            raise Rejected("invalid_request", "grant_type is required")
        raise Rejected("unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != assertion.ASSERTION_TYPE:
        raise Rejected("invalid_request", f"client_assertion_type must be {assertion.ASSERTION_TYPE}")
    token = form.get("client_assertion")
    if not token:
        raise Rejected("invalid_request", "client_assertion is required")
    unverified = assertion.read(token)
    client_id = assertion.claimed_client(unverified)
    services: Services = request.app.state.services
    async with services.engine.connect() as conn:
        client = await registry.get(conn, client_id)
    if client is None or client.disabled:
        raise Rejected("invalid_client", "the client is not registered or is disabled")
    try:
        keys = assertion.parse_jwks(client.jwks)
    except assertion.JwksError:
        log.error("client %s: its registered JWK Set no longer parses", client_id)
        raise Rejected("invalid_client", "the client's registered keys are unusable") from None
    claims = assertion.verify(token, unverified, keys)
    now = time.time()
    checked = assertion.check_claims(
        claims, client_id=client_id, audience=token_url(_settings(request.app)), now=now
    )
    granted = assertion.grant_scopes(form.get("scope"), client.scopes)
    replay: ReplayStore = request.app.state.replay
    if not await replay.claim(client_id, checked.jti, checked.expires_at, now):
        raise Rejected("invalid_client", "this assertion's jti has been used already")
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


async def _form(request: Request) -> dict[str, str]:
    """The form parameters; each at most once (RFC 6749 §3.2)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM:
        raise Rejected("invalid_request", f"the request body must be {FORM}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise Rejected("invalid_request", "the request body is too large")
    try:
        fields = parse_qs(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20
        )
    except (UnicodeDecodeError, ValueError):
        raise Rejected("invalid_request", "the request body is not a well-formed form") from None
    if any(len(values) > 1 for values in fields.values()):
        raise Rejected("invalid_request", "a parameter is repeated")
    return {name: values[0] for name, values in fields.items()}


def _error(status: int, error: str, description: str, retry: bool = False) -> JSONResponse:
    headers = {**NO_STORE, **({"Retry-After": "5"} if retry else {})}
    return JSONResponse({"error": error, "error_description": description}, status, headers)


def smart_configuration(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "token_endpoint": token_url(_settings(request.app)),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(assertion.ALGORITHMS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": list(SCOPES_SUPPORTED),
            "capabilities": ["client-confidential-asymmetric"],
        }
    )


for _path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
    router.add_api_route(_path, smart_configuration, methods=["GET"], summary="SMART configuration")
