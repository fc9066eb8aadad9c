"""The push endpoints: source systems send records in; they go through the ingest pipeline.

``POST /fhir``                 a FHIR transaction (or batch, collection) Bundle; answered with a
                               ``transaction-response`` Bundle, one entry per input entry
``POST /ingest/social-care``   a council's native social care export; answered with the run's report

Who may push (checked before the body is read):

- role ``source`` only; a provider, an IG auditor or an admin gets 403;
- a source client writes only its own source's records: ``POST /fhir`` needs
  ``source`` = ``fhir``, ``POST /ingest/social-care`` needs ``source`` = ``social-care``;
- scopes: ``POST /fhir`` needs the write scope of each resource type it sends
  (``system/Patient.write``, ``system/CarePlan.write``, or ``system/*.write``);
  the social care export writes both, so it needs both.

``Idempotency-Key`` (1-128 visible characters): the first complete answer is kept
for 24 hours, keyed by client and key with a hash of the request; a retry gets it
again (``Idempotent-Replayed: true``); the same key with another request is 409.
Without the header a repeat is still harmless: ids are deterministic, so the same
content creates nothing new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from gateway.api import openapi
from gateway.api.deps import Caller, RequestId, ServicesDep
from gateway.api.outcome import (
    FHIR_JSON,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    insufficient_scope,
    outcome_bytes,
)
from gateway.api.principal import Principal, Role
from gateway.api.push import Pushed, PushService
from gateway.api.routes.metadata import INTERACTIONS
from gateway.bootstrap import Services
from gateway.store import idempotency
from gateway.store.idempotency import Claimed, KeyInUse, KeyReused, Stored

router = APIRouter(tags=["FHIR write"], responses=openapi.ERRORS)

FHIR_SOURCE: Final = "fhir"
SOCIAL_CARE_SOURCE: Final = "social-care"
JSON: Final = "application/json"
#: Failures a retry of the same body always meets again: kept for the key like a success.
_KEPT_FAILURES: Final = frozenset({400, 415, 422})


class UnsupportedMediaType(ApiError):
    status = 415
    code = "not-supported"


def source_client(
    source: str, any_of: tuple[str, ...], all_of: tuple[str, ...] = ()
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a ``source`` client of ``source`` holding one of ``any_of`` and all of ``all_of``."""

    async def check(principal: Caller) -> Principal:  # async: FastAPI runs a plain def in a thread
        if principal.role is not Role.SOURCE:
            raise Forbidden("only a source system's client may push records")
        if principal.source != source:
            raise Forbidden(f"this client may not push {source} records: it writes its own source's only")
        if not any(principal.allows(scope) for scope in any_of):
            raise insufficient_scope(*any_of, diagnostics=f"scope {any_of[0]} is required")
        for scope in all_of:
            if not principal.allows(scope):
                raise insufficient_scope(scope)
        return principal

    return check


#: A Bundle needs the write scope of each type it holds: checked once the Bundle is parsed.
FhirPusher = Annotated[
    Principal, Depends(source_client(FHIR_SOURCE, ("system/Patient.write", "system/CarePlan.write")))
]
SocialCarePusher = Annotated[
    Principal,
    Depends(source_client(SOCIAL_CARE_SOURCE, ("system/Patient.write",), ("system/CarePlan.write",))),
]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post(
    "/fhir",
    openapi_extra={
        **openapi.body("A transaction or batch Bundle", FHIR_JSON, openapi.JSON),
        INTERACTIONS: ["transaction", "batch"],  # declared in the CapabilityStatement
    },
    responses=openapi.PUSH_ERRORS,
)
async def push_bundle(
    request: Request,
    caller: FhirPusher,
    services: ServicesDep,
    request_id: RequestId,
    key: IdempotencyKey = None,
) -> Response:
    """Ingest a pushed Bundle: 200 with a transaction-response (quarantined entries carry an outcome)."""
    _media_type(request, (FHIR_JSON, JSON))
    body = await request.body()

    async def run() -> Stored:
        pushed = await PushService(services).fhir_bundle(caller, body, request_id)
        return _stored(pushed, FHIR_JSON)

    return await _once(services, caller, key, request, body, run)


@router.post(
    "/ingest/social-care",
    openapi_extra=openapi.body("The social care system's native export", openapi.JSON),
    responses=openapi.PUSH_ERRORS,
)
async def push_social_care(
    request: Request,
    caller: SocialCarePusher,
    services: ServicesDep,
    request_id: RequestId,
    key: IdempotencyKey = None,
) -> Response:
    """Ingest a council's export: 200 with the run's report, every quarantined case named."""
    _media_type(request, (JSON,))
    body = await request.body()

    async def run() -> Stored:
        pushed = await PushService(services).social_care(caller, body, request_id)
        return _stored(pushed, JSON)

    return await _once(services, caller, key, request, body, run)


async def _once(
    services: Services,
    caller: Principal,
    key: str | None,
    request: Request,
    body: bytes,
    run: Callable[[], Awaitable[Stored]],
) -> Response:
    """Run the push, or give back the answer stored for its ``Idempotency-Key``."""
    if key is None:
        return _response(await _answer(run))
    held = await _claim(services, caller, _key(key), _request_hash(request, body))
    if isinstance(held, Stored):
        return _response(held, replayed=True)
    try:
        answer = await _answer(run)
    except BaseException:
        await idempotency.release(services.engine, held)
        raise
    if answer.status < 300 or answer.status in _KEPT_FAILURES:
        await idempotency.finish(services.engine, held, answer)
    else:
        await idempotency.release(services.engine, held)
    return _response(answer)


async def _answer(run: Callable[[], Awaitable[Stored]]) -> Stored:
    """The push's answer; a failure the body itself causes (400) is an answer too (it can be kept)."""
    try:
        return await run()
    except ApiError as exc:
        if exc.status not in _KEPT_FAILURES:
            raise
        return Stored(exc.status, FHIR_JSON, dict(exc.headers), outcome_bytes(exc.code, exc.diagnostics))


async def _claim(services: Services, caller: Principal, key: str, request_hash: str) -> Claimed | Stored:
    try:
        return await idempotency.claim(services.engine, caller.client_id, key, request_hash)
    except KeyReused:
        raise Conflict("this Idempotency-Key was used for a different request") from None
    except KeyInUse:
        raise Conflict(
            "a request with this Idempotency-Key is still being processed", headers={"Retry-After": "5"}
        ) from None


def _key(value: str) -> str:
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]  # the header is an RFC 8941 string: quotes are allowed
    if not 1 <= len(key) <= 128 or not all("\x21" <= c <= "\x7e" for c in key):
        raise BadRequest("Idempotency-Key must be 1 to 128 visible ASCII characters")
    return key


def _request_hash(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _media_type(request: Request, accepted: tuple[str, ...]) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(accepted)}")


def _stored(pushed: Pushed, media_type: str) -> Stored:
    headers = {"X-Ingest-Run": str(pushed.run_id)} if pushed.run_id is not None else {}
    return Stored(200, media_type, headers, orjson.dumps(pushed.body))


def _response(answer: Stored, replayed: bool = False) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(answer.body, answer.status, headers, media_type=answer.media_type)
