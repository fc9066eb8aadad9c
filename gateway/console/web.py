"""What every console page shares: the route class, who is signed in, forms, CSRF, rendering.

Pages are plain handlers ``async def page(request) -> Response`` on routes of ``ConsoleRoute``,
which turns the console's own exceptions into pages (not the API's OperationOutcomes) and sets
the security headers on every answer:

- ``SignInNeeded``: 303 to the sign-in page (no session, or it has run out);
- ``PageError``: an error page with its status (403 wrong role or scope, 400 a failed CSRF check);
- ``DisclosureUnavailable``: 503, nothing shown, as the API does when the log cannot be written;
- ``Throttled``: 429 with Retry-After, a signed-in session's client having spent its rate limit
  (the same budget as its API calls: ``gateway.api.ratelimit``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.outcome import Throttled
from gateway.api.principal import Principal, Role
from gateway.api.ratelimit import admit
from gateway.bootstrap import Services
from gateway.console.seal import Sealer
from gateway.console.session import Session, Sessions
from gateway.console.templating import environment
from gateway.disclosure import DisclosureUnavailable

MAX_FORM_BYTES: Final = 64 * 1024
SIGN_IN: Final = "/console/sign-in"
#: Roles that see the IG board's pages (as the API's AuditEvent and Consent search).
AUDITORS: Final = frozenset({Role.IG_AUDITOR, Role.ADMIN})
PROVIDERS: Final = frozenset({Role.PROVIDER})
AUDIT_READ: Final = "system/AuditEvent.read"
CONSENT_READ: Final = "system/Consent.read"
VIEW_SCOPES: Final = ("system/Patient.read", "system/CarePlan.read")

_IG_NAV: Final = (
    ("/console/consent", "Consent register"),
    ("/console/access", "Access log"),
    ("/console/access/person", "Subject access"),
    ("/console/integrity", "Log integrity"),
    ("/console/publication", "Publication"),
    ("/console/quality", "Data quality"),
)
_PROVIDER_NAV: Final = (("/console/record", "Shared care record"),)


class SignInNeeded(Exception):
    def __init__(self, ended: bool = False) -> None:
        super().__init__("sign in needed")
        self.location = SIGN_IN + ("?ended=1" if ended else "")


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(title)
        self.status, self.title, self.message = status, title, message


def csp(nonce: str) -> str:
    return (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )


def harden(response: Response, nonce: str) -> None:
    """Headers on every console answer: no caching of patient data, no framing, a strict CSP."""
    response.headers["Content-Security-Policy"] = csp(nonce)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            request.state.csp_nonce = secrets.token_urlsafe(16)
            try:
                await admit_session(request)
                response = await handler(request)
            except SignInNeeded as exc:
                response = RedirectResponse(exc.location, 303)
            except PageError as exc:
                response = error_page(request, exc)
            except DisclosureUnavailable:
                response = error_page(
                    request,
                    PageError(
                        503,
                        "Nothing can be shown just now",
                        "The audit log cannot be written, so no record is shown. Try again in a minute.",
                    ),
                )
                response.headers["Retry-After"] = "5"
            except Throttled as exc:
                response = error_page(
                    request,
                    PageError(
                        429,
                        "Too many requests",
                        "Your organisation has sent too many requests. Try again shortly.",
                    ),
                )
                response.headers.update(exc.headers)
            harden(response, request.state.csp_nonce)
            return response

        return run


async def admit_session(request: Request) -> None:
    """A signed-in session's request takes a token from its client's rate limit, as an API call does."""
    session = sessions_of(request).read(request)
    if session is not None and session.principal is not None:
        await admit(request, session.principal)


def sessions_of(request: Request) -> Sessions:
    state = request.app.state
    if getattr(state, "console_sessions", None) is None:
        settings = services_of(request).settings
        state.console_sessions = Sessions(
            settings.resolved_token_secret(), settings.public_url.lower().startswith("https://")
        )
    sessions: Sessions = state.console_sessions
    return sessions


def sealer_of(request: Request) -> Sealer:
    state = request.app.state
    if getattr(state, "console_sealer", None) is None:
        state.console_sealer = Sealer(services_of(request).settings.resolved_token_secret())
    sealer: Sealer = state.console_sealer
    return sealer


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@dataclass(frozen=True, slots=True)
class Staff:
    """A signed-in member of staff on one request."""

    request: Request
    session: Session
    principal: Principal

    @property
    def services(self) -> Services:
        return services_of(self.request)

    @property
    def request_id(self) -> str:
        rid: str = self.request.state.request_id
        return rid

    def seal(self, purpose: str, data: dict[str, Any]) -> str:
        return sealer_of(self.request).seal(purpose, self.principal.client_id, data)

    def unseal(self, purpose: str, token: str | None) -> dict[str, Any] | None:
        return sealer_of(self.request).open(purpose, self.principal.client_id, token)


def staff(request: Request, roles: frozenset[Role], scopes: Iterable[str] = ()) -> Staff:
    """The signed-in caller if their role and scopes open this page; else sign-in or a 403 page."""
    had_cookie = sessions_of(request).name in request.cookies
    session = sessions_of(request).read(request)
    if session is None or session.principal is None:
        raise SignInNeeded(ended=had_cookie and session is None)
    principal = session.principal
    request.state.principal = principal  # the access log names the client, as for the API
    if principal.role not in roles:
        raise PageError(403, "You cannot see this page", "Your organisation's role does not open this page.")
    missing = [s for s in scopes if not principal.allows(s)]
    if missing:
        raise PageError(
            403,
            "You cannot see this page",
            f"This page needs the scope {missing[0]}, which you were not granted.",
        )
    return Staff(request, session, principal)


async def form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the first value of each name)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise PageError(400, "The form could not be read", "Send the form from the console's own page.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(400, "The form could not be read", "The form is too large.")
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def check_csrf(session: Session, fields: dict[str, str]) -> None:
    if not session.csrf_matches(fields.get("csrf_token")):
        raise PageError(
            400,
            "The form has expired",
            "The form was not sent from this session of the console. Go back, reload the page and try again.",
        )


def navigation(principal: Principal | None, path: str) -> list[dict[str, Any]]:
    if principal is None:
        return []
    items = _IG_NAV if principal.role in AUDITORS else _PROVIDER_NAV if principal.role in PROVIDERS else ()
    best = max(
        (href for href, _ in items if path == href or path.startswith(href + "/")), key=len, default=""
    )
    return [{"href": href, "text": text, "current": href == best} for href, text in items]


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    session = sessions_of(request).read(request)
    principal = session.principal if session is not None else None
    context = {
        "cspNonce": request.state.csp_nonce,
        "assetPath": "/console/static/assets",
        "principal": principal,
        "csrf_token": session.csrf if session is not None else "",
        "nav": navigation(principal, request.url.path),
        **values,
    }
    html = environment().get_template(template).render(context)
    return HTMLResponse(html, status)


def error_page(request: Request, error: PageError) -> HTMLResponse:
    return render(request, "error.jinja", error.status, title=error.title, message=error.message)


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, 303)
