"""``GET /fhir/metadata``: a CapabilityStatement that declares only what this app actually serves.

Interactions are read from the routes mounted on the app, through its OpenAPI description
(built once, at the first request): a route that is not mounted (or is hidden from the
OpenAPI description) is not declared, whichever router adds it.
Search parameters come from one table per source of truth:

- Patient and CarePlan: the read API's own parser tables (``gateway.api.search``),
  with what each parameter accepts (``PARAM_DOCS``);
- other types (Consent, AuditEvent, ...): the list a search route carries in its OpenAPI
  extension ``x-fhir-search`` (``EXTRA``); failing that, the query parameters it declares
  to FastAPI whose names are standard (``STANDARD_TYPES``). A route that reads its
  parameters by hand and carries no list declares the search interaction with no parameters.

System interactions: ``POST /fhir`` is ``transaction``, unless the route names what it serves in its
OpenAPI extension ``x-fhir-interactions`` (the push route: ``transaction`` and ``batch``).
No type declares ``conditionalUpdate``: a push takes ``PUT Type?identifier=system|value`` only as a
check of the criteria against the body, then updates the record the body identifies, with no search
(docs/api-write.md), which is not what the flag promises. Conditional creates and deletes are refused.
Conditional reads: ``not-match`` for the read API's types (``If-None-Match``, answered 304 by
``fhir_responses.resource_response``; ``If-Modified-Since`` is not honoured).
Operations are declared only when their definition is known (``OPERATIONS``).
Security: SMART on FHIR Backend Services, the token URL in the ``oauth-uris`` extension.
The statement is public (no token), as SMART requires.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from gateway.api.fhir_responses import check_format, fhir
from gateway.api.search import CAREPLAN_INCLUDES, CAREPLAN_SEARCH, PATIENT_SEARCH
from mappings.validate import UKCORE_CAREPLAN, UKCORE_PATIENT

router = APIRouter(prefix="/fhir", tags=["FHIR metadata"])

FHIR_VERSION = "4.0.1"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
SP = "http://hl7.org/fhir/SearchParameter/"

#: Search parameters the read API implements: (type, name) → (FHIR type, definition, what it accepts).
PARAM_DOCS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("Patient", "identifier"): (
        "token",
        SP + "Patient-identifier",
        "NHS number only: https://fhir.nhs.uk/Id/nhs-number|{number} or the bare number",
    ),
    ("CarePlan", "patient"): (
        "reference",
        SP + "clinical-patient",
        "Patient/{id}; :identifier or .identifier with an NHS number",
    ),
    ("CarePlan", "subject"): (
        "reference",
        SP + "CarePlan-subject",
        "Patient/{id} (also :Patient); :identifier or .identifier with an NHS number",
    ),
    ("CarePlan", "status"): (
        "token",
        SP + "CarePlan-status",
        "request-status codes (code or http://hl7.org/fhir/request-status|code): comma-separated "
        "means any of them, repeated means all of them",
    ),
}
IMPLEMENTED = {"Patient": PATIENT_SEARCH, "CarePlan": CAREPLAN_SEARCH}
PROFILES = {"Patient": [UKCORE_PATIENT], "CarePlan": [UKCORE_CAREPLAN]}
#: Standard search parameter types, for parameters other routers declare.
STANDARD_TYPES = {
    "_id": "token",
    "_lastUpdated": "date",
    "identifier": "token",
    "patient": "reference",
    "subject": "reference",
    "status": "token",
    "date": "date",
    "agent": "reference",
    "entity": "reference",
    "action": "token",
    "type": "token",
    "subtype": "token",
    "outcome": "token",
    "category": "token",
    "purpose": "token",
    "altid": "token",
}
#: The OpenAPI extension a search route may carry to declare its parameters here:
#: ``openapi_extra={"x-fhir-search": [{"name": "patient", "type": "reference", "documentation": "..."}]}``.
EXTRA = "x-fhir-search"
#: The OpenAPI extension a system-level route may carry to name the interactions it serves:
#: ``openapi_extra={"x-fhir-interactions": ["transaction", "batch"]}``.
INTERACTIONS = "x-fhir-interactions"
#: The read API's conditional reads (``fhir_responses.resource_response``): If-None-Match only.
CONDITIONAL_READ = "not-match"
OPERATIONS = {"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
ORDER = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
INSTANCE = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _type_of(segment: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Za-z]+", segment))


def classify(method: str, path: str) -> tuple[str | None, str] | None:
    """What one mounted route serves: (resource type or None for system, interaction or ``$op``)."""
    parts = [
        ("{}" if p.startswith("{") else p) for p in path.removeprefix("/fhir").strip("/").split("/") if p
    ]
    if not parts:
        return (None, "transaction") if method == "POST" else None
    rtype, rest = parts[0], parts[1:]
    if not _type_of(rtype):
        return None
    found: str | None = None
    match rest:
        case []:
            found = {"GET": "search-type", "POST": "create"}.get(method)
        case ["_search"] if method == "POST":
            found = "search-type"
        case ["_history"] if method == "GET":
            found = "history-type"
        case ["{}"]:
            found = INSTANCE.get(method)
        case ["{}", "_history"] if method == "GET":
            found = "history-instance"
        case ["{}", "_history", "{}"] if method == "GET":
            found = "vread"
        case ["{}", op] | [op] if op.startswith("$"):
            found = op
    return None if found is None else (rtype, found)


def capability_statement(app: FastAPI, public_url: str) -> dict[str, Any]:
    base = public_url.rstrip("/")
    kinds: dict[str, set[str]] = {}
    declared: dict[str, dict[str, dict[str, str]]] = {}
    system: set[str] = set()
    for path, operations in app.openapi().get("paths", {}).items():
        for method, operation in operations.items():
            found = classify(method.upper(), path)
            if found is None:
                continue
            rtype, what = found
            if rtype is None:
                named = operation.get(INTERACTIONS)
                system.update(named if isinstance(named, list) else [what])
                continue
            kinds.setdefault(rtype, set()).add(what)
            if what == "search-type" and rtype not in IMPLEMENTED:
                declared.setdefault(rtype, {}).update(_declared_params(operation))
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "One person per search (by NHS number or the shared Patient); "
        "a person the caller may not see is indistinguishable from one concord does not hold.",
        "security": _security(base),
        "resource": [_resource(t, kinds[t], declared.get(t, {})) for t in sorted(kinds)],
    }
    if system:
        rest["interaction"] = [{"code": code} for code in sorted(system)]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "concord",
        "kind": "instance",
        "software": {"name": app.title, "version": app.version},
        "implementation": {"description": app.summary or app.title, "url": f"{base}/fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }


def _security(base: str) -> dict[str, Any]:
    return {
        "cors": False,
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                "text": "SMART Backend Services: client credentials with a signed JWT assertion",
            }
        ],
        "description": "Bearer access tokens from the token endpoint; SMART v1 system scopes "
        "(system/Patient.read, system/CarePlan.read, ...).",
        "extension": [{"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": f"{base}/token"}]}],
    }


def _declared_params(operation: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A search route's parameters: its ``x-fhir-search`` list, else its standard query parameters."""
    listed = operation.get(EXTRA)
    if isinstance(listed, list):
        return {p["name"]: {k: str(v) for k, v in p.items()} for p in listed if "name" in p and "type" in p}
    declared: dict[str, dict[str, str]] = {}
    for param in operation.get("parameters", ()):
        name = param.get("name") if param.get("in") == "query" else None
        # patient.identifier (chained) and patient:identifier (a modifier) are forms of patient
        base = re.split(r"[:.]", name)[0] if isinstance(name, str) else None
        if base in STANDARD_TYPES and base not in declared:
            declared[base] = {"name": base, "type": STANDARD_TYPES[base]}
            if param.get("description"):
                declared[base]["documentation"] = str(param["description"])
    return declared


def _resource(rtype: str, kinds: set[str], declared: dict[str, dict[str, str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": rtype}
    if rtype in PROFILES:
        entry["supportedProfile"] = PROFILES[rtype]
    interactions = [k for k in ORDER if k in kinds]
    if interactions:
        entry["interaction"] = [{"code": k} for k in interactions]
    if "vread" in kinds:
        entry["versioning"] = "versioned"
        entry["readHistory"] = True
    if "read" in kinds and rtype in IMPLEMENTED:
        entry["conditionalRead"] = CONDITIONAL_READ
    if "search-type" in kinds:
        params = _search_params(rtype, declared)
        if params:
            entry["searchParam"] = params
        if rtype == "CarePlan":
            entry["searchInclude"] = sorted(CAREPLAN_INCLUDES)
    operations = [
        {"name": op[1:], "definition": OPERATIONS[op[1:]]}
        for op in sorted(k for k in kinds if k.startswith("$"))
        if op[1:] in OPERATIONS
    ]
    if operations:
        entry["operation"] = operations
    return entry


def _search_params(rtype: str, declared: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    if rtype in IMPLEMENTED:
        names: Iterable[str] = dict.fromkeys(
            re.split(r"[:.]", n)[0] for n in IMPLEMENTED[rtype] if not n.startswith("_")
        )
        out = []
        for name in names:
            ptype, definition, docs = PARAM_DOCS[(rtype, name)]
            out.append({"name": name, "definition": definition, "type": ptype, "documentation": docs})
        return out
    return [declared[n] for n in sorted(declared)]


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement (no token needed)."""
    check_format(request)
    state = request.app.state
    if getattr(state, "capability_statement", None) is None:
        statement = capability_statement(request.app, state.settings.public_url)
        state.capability_statement = orjson.dumps(statement)
    body: bytes = state.capability_statement
    return fhir(body)
