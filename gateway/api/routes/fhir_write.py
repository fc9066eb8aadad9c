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

``POST /fhir`` answers FHIR R4 JSON only: an ``Accept`` or ``_format`` asking for anything else is 406, as
on the read API; a ``Content-Type`` naming another ``fhirVersion`` than 4.0 is 415. ``Prefer:
return=OperationOutcome`` puts an outcome on every entry's response; ``return=minimal`` is the default;
``return=representation`` is not honoured (no resource is returned: a Patient entry's would be the
shared Patient, other sources' data included), so no ``Preference-Applied`` is sent for it.

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
from gateway.api.fhir_responses import check_format, this_version
from gateway.api.outcome import (
    FHIR_JSON,
    ApiError,
    BadRequest,
    Conflict,
    insufficient_scope,
    outcome_bytes,
    role_refused,
)
from gateway.api.principal import Principal, Role
from gateway.api.push import Pushed, PushService
from gateway.api.routes.metadata import INTERACTIONS
from gateway.api.search import preferences
from gateway.bootstrap import Services
from gateway.store import idempotency
from gateway.store.idempotency import Claimed, KeyInUse, KeyReused, Stored

router = APIRouter(tags=["FHIR write"], responses=openapi.ERRORS)

FHIR_SOURCE: Final = "fhir"
SOCIAL_CARE_SOURCE: Final = "social-care"
JSON: Final = "application/json"
#: Failures a retry of the same body always meets again: kept for the key like a success. (A 415
#: or 413 is answered before the key is looked at: the retry with the right body is processed.)
_KEPT_FAILURES: Final = frozenset({400, 422})


class UnsupportedMediaType(ApiError):
    status = 415
    code = "not-supported"


def source_client(
    source: str, any_of: tuple[str, ...], all_of: tuple[str, ...] = ()
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a ``source`` client of ``source`` holding one of ``any_of`` and all of ``all_of``."""

    async def check(principal: Caller) -> Principal:  # async: FastAPI runs a plain def in a thread
        if principal.role is not Role.SOURCE:
            raise role_refused("only a source system's client may push records")
        if principal.source != source:
            raise role_refused(f"this client may not push {source} records: it writes its own source's only")
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
    responses=openapi.FHIR_PUSH_ERRORS,
)
async def push_bundle(
    request: Request,
    caller: FhirPusher,
    services: ServicesDep,
    request_id: RequestId,
    key: IdempotencyKey = None,
) -> Response:
    """Ingest a pushed Bundle: 200 with a transaction-response (quarantined entries carry an outcome)."""
    check_format(request)
    _media_type(request, (FHIR_JSON, JSON), fhir=True)
    outcomes, applied = _return_preference(request.headers.get("prefer"))
    body = await request.body()

    async def run() -> Stored:
        pushed = await PushService(services).fhir_bundle(caller, body, request_id, outcomes)
        return _stored(pushed, FHIR_JSON, {"Preference-Applied": applied} if applied else {})

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


def _media_type(request: Request, accepted: tuple[str, ...], fhir: bool = False) -> None:
    """415 unless the body is one of ``accepted``; for FHIR, also unless its ``fhirVersion`` is R4's."""
    media, _, params = request.headers.get("content-type", "").partition(";")
    if media.strip().lower() not in accepted:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(accepted)}")
    if fhir and not this_version(params):
        raise UnsupportedMediaType("Content-Type names another fhirVersion: only FHIR R4 (4.0) is read")


def _return_preference(prefer: str | None) -> tuple[bool, str | None]:
    """``Prefer: return=…`` (FHIR R4 http.html): whether every entry gets an OperationOutcome, and the
    ``Preference-Applied`` to answer (none for ``representation``, which is answered minimal)."""
    asked = preferences(prefer, "return")
    if not asked:
        return False, None
    value = asked[0]
    if value == "operationoutcome":
        return True, "return=OperationOutcome"
    return False, "return=minimal" if value == "minimal" else None


def _stored(pushed: Pushed, media_type: str, extra: dict[str, str] | None = None) -> Stored:
    headers = {"X-Ingest-Run": str(pushed.run_id)} if pushed.run_id is not None else {}
    return Stored(200, media_type, {**headers, **(extra or {})}, orjson.dumps(pushed.body))


def _response(answer: Stored, replayed: bool = False) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(answer.body, answer.status, headers, media_type=answer.media_type)
