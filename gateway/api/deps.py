"""What routes depend on, as ``Annotated`` aliases: the services, the caller, the request id.

Routes parse, call one service, serialise; scope checks happen here, before a
route body runs and so before any data is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from gateway.api.outcome import Forbidden, Unauthorized
from gateway.api.principal import Principal
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_tokens(request: Request) -> AccessTokens:
    tokens: AccessTokens = request.app.state.tokens
    return tokens


def get_request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer access token is required", headers={"WWW-Authenticate": "Bearer"})
    principal = get_tokens(request).verify(token.strip())
    request.state.principal = principal
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
RequestId = Annotated[str, Depends(get_request_id)]
Caller = Annotated[Principal, Depends(get_principal)]


def require(*scopes: str) -> Callable[[Principal], Principal]:
    """A dependency that lets the caller through only with every one of ``scopes``."""

    def check(principal: Caller) -> Principal:
        missing = [s for s in scopes if not principal.allows(s)]
        if missing:
            raise Forbidden(f"scope {missing[0]} is required", code="forbidden")
        return principal

    return check
