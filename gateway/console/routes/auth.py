"""Signing in and out, and the console's front door.

``GET  /console/``          to the first page the signed-in role may see; else to sign-in
``GET  /console/sign-in``   the form (an anonymous session carries its CSRF token)
``POST /console/sign-in``   an access token in, verified with the gateway's token key; a session out
``POST /console/sign-out``  the session cookie cleared
"""

from __future__ import annotations

import logging
from typing import Final

import jwt
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.outcome import Unauthorized
from gateway.api.tokens import AccessTokens
from gateway.console.session import Session
from gateway.console.web import (
    AUDITORS,
    PROVIDERS,
    SIGN_IN,
    ConsoleRoute,
    check_csrf,
    form,
    navigation,
    redirect,
    render,
    sessions_of,
)

router = APIRouter(prefix="/console", route_class=ConsoleRoute)
log = logging.getLogger(__name__)

CONSOLE_ROLES: Final = AUDITORS | PROVIDERS
MAX_TOKEN_CHARS: Final = 8192


@router.get("/")
async def home(request: Request) -> Response:
    session = sessions_of(request).read(request)
    if session is None or session.principal is None:
        return redirect(SIGN_IN)
    items = navigation(session.principal, request.url.path)
    return redirect(items[0]["href"] if items else SIGN_IN)


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    sessions = sessions_of(request)
    session = sessions.read(request)
    if session is not None and session.principal is not None:
        return redirect("/console/")
    if session is None:
        session = sessions.anonymous()
    notice = ""
    if request.query_params.get("ended"):
        notice = "Your session has ended. Sign in again with a new access token."
    elif request.query_params.get("signed_out"):
        notice = "You have signed out."
    return _sign_in(request, session, notice=notice)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    sessions = sessions_of(request)
    session = sessions.read(request)
    fields = await form(request)
    if session is None:
        return _sign_in(
            request,
            sessions.anonymous(),
            400,
            notice="The sign-in form expired. Enter your access token again.",
        )
    check_csrf(session, fields)
    token = fields.get("access_token", "").strip()
    if not token:
        return _sign_in(request, session, 400, error="Enter an access token")
    tokens: AccessTokens = request.app.state.tokens
    try:
        principal = tokens.verify(token[:MAX_TOKEN_CHARS])
        expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    except Unauthorized as exc:
        expired = exc.code == "expired"
        message = (
            "The access token has expired: get a new one" if expired else "The access token is not valid"
        )
        return _sign_in(request, session, 401, error=message)
    if principal.role not in CONSOLE_ROLES:
        return _sign_in(request, session, 403, error="Your organisation's role has no pages in the console")
    log.info("console sign-in: client %s, role %s", principal.client_id, principal.role.value)
    response = redirect("/console/")
    sessions.set_cookie(response, sessions.signed_in(principal, expires))
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    sessions = sessions_of(request)
    session = sessions.read(request)
    if session is not None:
        check_csrf(session, await form(request))
    response = redirect(SIGN_IN + "?signed_out=1")
    sessions.clear_cookie(response)
    return response


def _sign_in(
    request: Request, session: Session, status: int = 200, *, notice: str = "", error: str = ""
) -> Response:
    response = render(
        request,
        "sign_in.jinja",
        status,
        title="Sign in",
        principal=None,
        nav=[],
        csrf_token=session.csrf,
        notice=notice,
        error=error,
        lifetime=request.app.state.tokens.lifetime,
    )
    sessions_of(request).set_cookie(response, session)
    return response
