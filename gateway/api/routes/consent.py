"""The Consent API: record and withdraw opt-outs, and search a person's Consents.

``POST /fhir/Consent``          record an opt-out (``ConsentRegister.opt_out``): 201 with the stored
                                Consent; 200 with the one in force when the person already has one
``PUT /fhir/Consent/{id}``      withdraw it: the stored Consent sent back with status ``inactive``
``GET /fhir/Consent?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|N``
                                every Consent the register holds for the person, as they stand now

Who may (docs/api-write.md):

- record and withdraw: roles ``provider``, ``source``, ``admin`` with ``system/Consent.write``;
- search: roles ``ig-auditor``, ``admin`` with ``system/Consent.read``.

Reading the register is reading personal data, so every answer that shows a caller a
Consent it did not send is logged (``log_read``): one ``disclosure`` entry per search
(``consent-search``) and per repeated opt-out answered with the Consent already in force
(``consent-read``), naming the person, the caller and the Consents shown. Changes are
logged by the register itself (``consent-change``), in the change's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from consent.chain import Entry, Kind, detail, timestamp
from consent.model import Verdict
from gateway.api import openapi
from gateway.api.consent_resource import ConsentError, parse_opt_out, parse_withdrawal, patient_nhs_number
from gateway.api.deps import Caller, RequestId, ServicesDep
from gateway.api.outcome import (
    FHIR_JSON,
    ApiError,
    BadRequest,
    NotFound,
    ignored_parameters,
    insufficient_scope,
    role_refused,
)
from gateway.api.principal import Principal, Role
from gateway.api.routes.fhir_write import UnsupportedMediaType
from gateway.api.search import IDENTIFIER, Limits, parse, strict_handling
from gateway.bootstrap import Services
from gateway.disclosure import DisclosureUnavailable

router = APIRouter(
    prefix="/fhir",
    tags=["Consent"],
    responses={**openapi.ERRORS, 422: openapi.answer("The Consent breaks a rule (business-rule)")},
)

WRITE_SCOPE: Final = "system/Consent.write"
READ_SCOPE: Final = "system/Consent.read"
WRITERS: Final = frozenset({Role.PROVIDER, Role.SOURCE, Role.ADMIN})
READERS: Final = frozenset({Role.IG_AUDITOR, Role.ADMIN})
SEARCH: Final = {"patient.identifier": IDENTIFIER, "patient:identifier": IDENTIFIER}
#: Log actions of register reads (``disclosure`` entries).
SEARCH_ACTION: Final = "consent-search"
READ_ACTION: Final = "consent-read"
NOT_KNOWN: Final = "no such Consent"
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Unprocessable(ApiError):
    status = 422
    code = "business-rule"


def allowed(roles: frozenset[Role], scope: str, what: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a caller of one of ``roles`` holding ``scope``; 403 otherwise."""

    async def check(principal: Caller) -> Principal:  # async: FastAPI runs a plain def in a thread
        if principal.role not in roles:
            names = ", ".join(sorted(r.value for r in roles))
            raise role_refused(f"{what} is open to the roles {names} only")
        if not principal.allows(scope):
            raise insufficient_scope(scope)
        return principal

    return check


Writer = Annotated[Principal, Depends(allowed(WRITERS, WRITE_SCOPE, "recording consent"))]
Reader = Annotated[Principal, Depends(allowed(READERS, READ_SCOPE, "reading the consent register"))]


@router.post(
    "/Consent",
    responses={
        201: {"description": "Recorded; 200 answers with the opt-out already in force"},
        **openapi.BODY_ERRORS,
    },
    openapi_extra=openapi.body("An opt-out (FHIR Consent)", FHIR_JSON, openapi.JSON),
)
async def record_opt_out(
    request: Request, caller: Writer, services: ServicesDep, request_id: RequestId
) -> Response:
    """201 with the new Consent; 200 with the one already in force (the repeat is logged as a read)."""
    asked = _parsed(parse_opt_out, await _json(request))
    change = await services.register.opt_out(
        asked.nhs_number, asked.kind, asked.authority, caller.requester, request_id, source="api"
    )
    stored = await _stored(services, asked.nhs_number, change.opt_out.id)
    if not change.changed:
        await log_read(services, caller, request_id, READ_ACTION, asked.nhs_number, [stored])
        return _consent(stored, 200)
    location = f"{_base(services)}/Consent/{stored['id']}/_history/{stored['meta']['versionId']}"
    return _consent(stored, 201, {"Location": location})


@router.put(
    "/Consent/{consent_id}",
    openapi_extra=openapi.body("The Consent with status inactive (a withdrawal)", FHIR_JSON, openapi.JSON),
    responses=openapi.BODY_ERRORS,
)
async def withdraw_opt_out(
    consent_id: str, request: Request, caller: Writer, services: ServicesDep, request_id: RequestId
) -> Response:
    """Withdraw: only ``status`` may change, active → inactive. 200 with the Consent as it now stands.

    The person's opt-outs of that kind in force are all withdrawn (the person's choice is per kind).
    """
    body = await _json(request)
    number = _parsed(patient_nhs_number, body)
    if not _ID.fullmatch(consent_id):
        raise NotFound(NOT_KNOWN)
    facts = await services.register.facts(number)
    opt_out = next((o for o in facts.opt_outs if o.id == consent_id), None)
    if opt_out is None:
        # The same answer whether the id is unknown or belongs to someone else.
        raise NotFound(NOT_KNOWN)
    stored = await _stored(services, number, consent_id)
    asked = _parsed(lambda b: parse_withdrawal(b, stored), body)
    if asked.withdraw:
        await services.register.withdraw(number, opt_out.kind, asked.authority, caller.requester, request_id)
        stored = await _stored(services, number, consent_id)
    return _consent(stored, 200)


@router.get(
    "/Consent",
    openapi_extra={
        "parameters": [
            openapi.param("patient.identifier", openapi.NHS_IDENTIFIER + " (or patient:identifier; required)")
        ]
    },
)
async def search_consents(
    request: Request, caller: Reader, services: ServicesDep, request_id: RequestId
) -> Response:
    """The person's Consents (all, oldest first, one page); the search is logged before it is answered."""
    settings = services.settings
    query = parse(
        SEARCH,
        list(request.query_params.multi_items()),
        strict_handling(request.headers.get("prefer")),
        Limits(settings.default_page_size, settings.max_page_size),
    )
    number = query.person.nhs_number if query.person else None
    if number is None:
        raise BadRequest(
            "a Consent search names one person: patient.identifier=https://fhir.nhs.uk/Id/nhs-number|N"
        )
    found = await services.register.resources(number)
    await log_read(services, caller, request_id, SEARCH_ACTION, number, found)
    base = _base(services)
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/Consent/{c['id']}", "resource": c, "search": {"mode": "match"}} for c in found
    ]
    if query.ignored:
        entries.append({"resource": ignored_parameters(list(query.ignored)), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
    bundle["link"] = [{"relation": "self", "url": f"{base}/Consent?{request.url.query}"}]
    if entries:
        bundle["entry"] = entries
    return Response(orjson.dumps(bundle), 200, media_type=FHIR_JSON)


async def log_read(
    services: Services,
    caller: Principal,
    request_id: str,
    action: str,
    nhs_number: str | None,
    shown: Sequence[dict[str, Any]] = (),
    what: dict[str, Any] | None = None,
) -> None:
    """Log that ``caller`` was shown register or log data about ``nhs_number``; before it is shown.

    One ``disclosure`` entry, decision ``permit`` (the role rules let the caller read it), no
    purpose (this is oversight, not one of the data-sharing purposes), no ``consent_id`` (no
    decision rested on a Consent), ``detail.returned`` the references shown (or ``what``: counts
    by type). If it cannot be written nothing is shown (503).
    """
    refs = [f"{c['resourceType']}/{c['id']}" for c in shown]
    requester = caller.requester
    entry = Entry(
        at=timestamp(services.disclosure.clock()),
        kind=Kind.DISCLOSURE,
        action=action,
        request_id=request_id,
        requester_kind=requester.kind.value,
        org_ods=requester.ods_code,
        client_id=requester.client_id,
        nhs_number=nhs_number,
        decision=Verdict.PERMIT.value,
        detail=detail(returned=what if what is not None else refs),
    )
    try:
        await services.disclosure.log.append([entry])
    except Exception as exc:
        raise DisclosureUnavailable("the audit log could not be written") from exc


async def _json(request: Request) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (FHIR_JSON, "application/json"):
        raise UnsupportedMediaType("Content-Type must be application/fhir+json or application/json")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON", code="structure") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a Consent resource (a JSON object)", code="structure")
    return body


def _parsed(parse_fn: Callable[[Any], Any], body: Any) -> Any:
    try:
        return parse_fn(body)
    except ConsentError as exc:
        if exc.status == 422:
            raise Unprocessable(exc.diagnostics, code=exc.code) from None
        raise BadRequest(exc.diagnostics, code=exc.code) from None


async def _stored(services: Services, nhs_number: str, consent_id: str) -> dict[str, Any]:
    for consent in await services.register.resources(nhs_number):
        if consent.get("id") == consent_id:
            return consent
    raise NotFound(NOT_KNOWN)


def _consent(stored: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    version = str(stored.get("meta", {}).get("versionId", "1"))
    return Response(
        orjson.dumps(stored), status, {"ETag": f'W/"{version}"', **(headers or {})}, media_type=FHIR_JSON
    )


def _base(services: Services) -> str:
    return services.settings.public_url.rstrip("/") + "/fhir"
