"""Errors as FHIR OperationOutcome, with stable codes. The one place domain errors become HTTP.

ApiError
 ├── NotFound            404 not-found      (also: exists but consent denies; indistinguishable)
 ├── BadRequest          400 invalid / not-supported / too-costly
 ├── Unauthorized        401 login           (no, bad or expired token)
 ├── Forbidden           403 forbidden       (scope or role; never about a person)
 ├── Conflict            409 conflict
 ├── TooLarge            413 too-long
 ├── Throttled           429 throttled       (the client's rate limit is spent; Retry-After)
 └── Unavailable         503 transient       (the log cannot be written, the store is down)
"""

from __future__ import annotations

from typing import Any

import orjson

FHIR_JSON = "application/fhir+json"


class ApiError(Exception):
    status = 500
    code = "exception"

    def __init__(
        self, diagnostics: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if code is not None:
            self.code = code
        self.headers = headers or {}


class NotFound(ApiError):
    status = 404
    code = "not-found"


class BadRequest(ApiError):
    status = 400
    code = "invalid"


class Unauthorized(ApiError):
    status = 401
    code = "login"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


def insufficient_scope(*scopes: str, diagnostics: str | None = None) -> Forbidden:
    """403 for a token without a scope the request needs, with RFC 6750's challenge naming them."""
    challenge = f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
    return Forbidden(diagnostics or f"scope {scopes[0]} is required", headers={"WWW-Authenticate": challenge})


def role_refused(diagnostics: str) -> Forbidden:
    """403 for a caller whose role (or source) may not use the route: RFC 6750's insufficient_scope
    challenge, naming no scope, since none would open the route to this client."""
    return Forbidden(diagnostics, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


class Conflict(ApiError):
    status = 409
    code = "conflict"


class TooLarge(ApiError):
    status = 413
    code = "too-long"


class Throttled(ApiError):
    status = 429
    code = "throttled"


class Unavailable(ApiError):
    status = 503
    code = "transient"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_bytes(code: str, diagnostics: str, severity: str = "error") -> bytes:
    return orjson.dumps(operation_outcome(code, diagnostics, severity))


def ignored_parameters(names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The OperationOutcome reporting search parameters ignored under lenient handling."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": f"search parameter {name} is not supported and was ignored",
            }
            for name in dict.fromkeys(names)
        ],
    }
