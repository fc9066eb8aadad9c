"""What the served OpenAPI says beyond what FastAPI infers from the handlers' signatures.

Routes read search parameters and bodies by hand (the FHIR rules for them are not FastAPI's), so
FastAPI cannot see them; each route declares them here through ``openapi_extra``:

- ``search(...)``: the query parameters a search accepts, plus the result parameters every search
  takes (``_count``, ``_page``, ``_format``);
- ``body(...)``: a request body of the given media types;
- ``ERRORS``: the statuses a FHIR route answers with an OperationOutcome, for ``responses=``
  (``PUSH_ERRORS`` adds a push's, ``FHIR_PUSH_ERRORS`` those of ``POST /fhir``).

``install`` fixes up the generated document once: FastAPI documents a 422 for every route with
parameters, while concord answers an invalid request 400 with an OperationOutcome. The bearer
scheme comes from ``HTTPBearer`` in ``gateway.api.deps``, FastAPI's own mechanism.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from adapters.fhir import MAX_DEPTH
from gateway.api.outcome import FHIR_JSON

JSON = "application/json"
_RESOURCE = {
    "type": "object",
    "properties": {"resourceType": {"type": "string"}},
    "required": ["resourceType"],
}
_OUTCOME = {"content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "FHIR R4 OperationOutcome",
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                },
            },
        },
    },
    "required": ["resourceType", "issue"],
}


def answer(description: str) -> dict[str, Any]:
    """A documented answer whose body is an OperationOutcome."""
    return {"description": description, **_OUTCOME}


#: Error answers of a FHIR route (for ``responses=``): every one is an OperationOutcome.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: answer(description)
    for status, description in {
        400: "Invalid request (unknown parameter under Prefer: handling=strict, bad value; an access "
        "token both in the Authorization header and the query)",
        401: "No valid bearer access token (WWW-Authenticate: Bearer; error=invalid_token for one sent)",
        403: "The token lacks the scope or the role (WWW-Authenticate: Bearer error=insufficient_scope)",
        404: "Not found, or not disclosed to this caller (the same answer)",
        406: "Only JSON is served",
        429: "The client's rate limit is spent (Retry-After)",
        503: "The audit log cannot be written: nothing is released (Retry-After)",
    }.items()
}


#: Further error answers of a route that takes a body (opt-outs), and of a push (Idempotency-Key).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    413: answer("The body is over the configured limit (CONCORD_MAX_BODY_BYTES; also once inflated)"),
    415: answer("The Content-Type (or Content-Encoding) is not one this route reads"),
}
PUSH_ERRORS: dict[int | str, dict[str, Any]] = {
    409: answer("The Idempotency-Key was used before with another body"),
    **BODY_ERRORS,
}
#: ``POST /fhir``'s own: the Bundle refused whole, and content negotiation as the read API's.
FHIR_PUSH_ERRORS: dict[int | str, dict[str, Any]] = {
    **PUSH_ERRORS,
    400: answer(
        "The Bundle is refused whole and nothing is stored: not JSON, not a Bundle, Bundle.type other "
        "than transaction or batch, two entries with one fullUrl (bdl-7), a name given twice in an "
        f"object, implicitRules, nesting deeper than {MAX_DEPTH} levels. (An entry refused alone is answered "
        "in the 200 response's entry.)"
    ),
    406: answer("Accept or _format asks for anything but FHIR R4 JSON (_format overrides Accept)"),
}

_OAUTH_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
            }
        }
    }
}
#: The token endpoint's answers (RFC 6749 section 5): JSON, not OperationOutcome.
TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An access token (Cache-Control: no-store)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_in", "scope"],
                    "properties": {
                        "access_token": {"type": "string"},
                        "token_type": {"type": "string", "enum": ["bearer"]},
                        "expires_in": {"type": "integer", "maximum": 300},
                        "scope": {"type": "string"},
                    },
                }
            }
        },
    },
    400: {
        "description": "Refused: invalid_request, invalid_client, invalid_scope, unsupported_grant_type "
        "(RFC 6749 section 5.2)",
        **_OAUTH_ERROR,
    },
    401: {
        "description": "invalid_client: the client tried the Authorization header (HTTP Basic, ...), "
        "which this endpoint does not accept (WWW-Authenticate names the scheme)",
        **_OAUTH_ERROR,
    },
    413: {"description": "invalid_request: the body is over the configured limit", **_OAUTH_ERROR},
    415: {"description": "invalid_request: a Content-Encoding other than gzip", **_OAUTH_ERROR},
    503: {"description": "temporarily_unavailable: the replay store cannot be reached", **_OAUTH_ERROR},
}
TOKEN_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type", "client_assertion_type", "client_assertion"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_assertion_type": {
                            "type": "string",
                            "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
                        },
                        "client_assertion": {
                            "type": "string",
                            "description": "A signed JWT (RS384, ES384, RS512)",
                        },
                        "scope": {"type": "string"},
                        "client_id": {
                            "type": "string",
                            "description": "Optional; if sent, the assertion's iss",
                        },
                    },
                }
            }
        },
    }
}


def param(name: str, description: str, where: str = "query") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


RESULT_PARAMETERS = (
    param("_count", "Entries per page (0 or more; capped at the configured maximum)"),
    param("_page", "The paging token from a Bundle's next/previous link (bound to the client)"),
    param("_format", "json or application/fhir+json (only JSON is served)"),
    param("Prefer", "handling=strict: unknown search parameters are refused (400)", "header"),
)
NHS_IDENTIFIER = "https://fhir.nhs.uk/Id/nhs-number|{NHS number}"


def search(*parameters: tuple[str, str]) -> dict[str, Any]:
    """``openapi_extra`` for a search: ``(name, description)`` pairs and the result parameters."""
    return {"parameters": [*(param(n, d) for n, d in parameters), *RESULT_PARAMETERS]}


def body(description: str, *media_types: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body (a JSON object of ``media_types``)."""
    content = {
        media: {"schema": _RESOURCE if media == FHIR_JSON else {"type": "object"}} for media in media_types
    }
    return {"requestBody": {"required": True, "description": description, "content": content}}


def install(app: FastAPI) -> None:
    """Serve the generated document with concord's error answers (400, not FastAPI's 422)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {})["OperationOutcome"] = (
                OUTCOME_SCHEMA
            )
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    answers = operation.get("responses", {})
                    if "HTTPValidationError" in str(answers.get("422", "")):  # FastAPI's, not a route's own
                        del answers["422"]
                        answers.setdefault("400", ERRORS[400])
            for unused in ("HTTPValidationError", "ValidationError"):
                document["components"]["schemas"].pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
