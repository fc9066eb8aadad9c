"""What routes depend on, as ``Annotated`` aliases: the services, the caller, the request id.

Routes parse, call one service, serialise; scope checks happen here, before a
route body runs and so before any data is touched.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a
worker thread, a handoff per dependency per request for what is a few attribute
reads and an HMAC check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Final

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.outcome import BadRequest, Unauthorized, insufficient_scope
from gateway.api.principal import Principal
from gateway.api.ratelimit import RateLimiter
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_tokens(request: Request) -> AccessTokens:
    tokens: AccessTokens = request.app.state.tokens
    return tokens


async def get_request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


#: Reads ``Authorization: Bearer ...`` and puts the scheme in the OpenAPI document; refusing is ours.
bearer = HTTPBearer(auto_error=False, description="An access token from POST /token")


#: The query parameter RFC 6750 §2.3 allows a token in. concord does not read it there.
QUERY_TOKEN: Final = "access_token"  # noqa: S105 - a parameter name, not a secret


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    token = credentials.credentials if credentials is not None else ""
    token = one_token(token, request.query_params.keys())
    principal = await authenticate(token, get_tokens(request), getattr(request.app.state, "limiter", None))
    request.state.principal = principal
    return principal


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header ("" for none or another scheme)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def one_token(header_token: str, query_names: Iterable[str]) -> str:
    """``header_token``, unless the query names an ``access_token`` too: 400 ``invalid_request``
    (RFC 6750 §3.1: a request may carry its token one way only). A token in the query alone is
    not read (the caller then has none: 401)."""
    if header_token.strip() and QUERY_TOKEN in query_names:
        description = "send the access token in the Authorization header only, not also as access_token"
        raise BadRequest(
            description,
            headers={
                "WWW-Authenticate": f'Bearer error="invalid_request", error_description="{description}"'
            },
        )
    return header_token


async def authenticate(token: str, tokens: AccessTokens, limiter: RateLimiter | None) -> Principal:
    """The caller behind ``token``, admitted by its rate limit; 401 without a valid token, 429 when
    the client's budget is spent (with Retry-After)."""
    token = token.strip()
    if not token:
        raise Unauthorized("a bearer access token is required", headers={"WWW-Authenticate": "Bearer"})
    principal = tokens.verify(token)
    if limiter is not None:
        await limiter.admit(principal)
    return principal


def check_scopes(principal: Principal, scopes: tuple[str, ...]) -> None:
    """403 unless the caller holds every one of ``scopes``."""
    missing = [s for s in scopes if not principal.allows(s)]
    if missing:
        raise insufficient_scope(*scopes, diagnostics=f"scope {missing[0]} is required")


ServicesDep = Annotated[Services, Depends(get_services)]
RequestId = Annotated[str, Depends(get_request_id)]
Caller = Annotated[Principal, Depends(get_principal)]


def require(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets the caller through only with every one of ``scopes``."""

    async def check(principal: Caller) -> Principal:
        check_scopes(principal, scopes)
        return principal

    return check
