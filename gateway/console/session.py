"""Console sessions: a signed cookie bound to the principal of a verified access token. No I/O.

Staff sign in with their organisation's client credentials: they get an access token the usual
way (``concord token --client NAME``, or ``POST /token`` with a signed assertion) and paste it
into the sign-in form. The gateway verifies it with its own token key and sets this cookie:

    base64url(JSON {v, c: csrf token, e: expiry (unix seconds), p: principal or null}) "." base64url(MAC)

MAC = HMAC-SHA256 under a key derived from the token secret (so every gateway process of a
deployment reads every other's cookies, and nobody without the secret can forge or edit one).
The cookie holds the principal's claims, never the access token itself: a stolen cookie is not
a bearer token for the FHIR API. It expires when the token would have (at most five minutes),
so a disabled client loses the console as fast as it loses the API. Before sign-in an anonymous
session (no principal, ten minutes) carries the sign-in form's CSRF token.

Cookie flags: HttpOnly, SameSite=Strict, Path=/console, and Secure with the ``__Secure-`` name
prefix when ``CONCORD_PUBLIC_URL`` is https.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.principal import Principal, Role

COOKIE: Final = "concord-console"
SECURE_COOKIE: Final = "__Secure-concord-console"
PATH: Final = "/console"
#: Life of an anonymous session: the time a person has to fill in the sign-in form.
ANONYMOUS_SECONDS: Final = 600
#: Cookies longer than this are not read (a browser would not send one longer anyway).
MAX_COOKIE_CHARS: Final = 4096
VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Session:
    #: The synchronizer token every form of this session must send back.
    csrf: str
    #: Unix time after which the session is void.
    expires: int
    principal: Principal | None = None

    @property
    def signed_in(self) -> bool:
        return self.principal is not None

    def csrf_matches(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf.encode(), str(sent).encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _principal_claims(p: Principal) -> dict[str, Any]:
    return {
        "sub": p.client_id,
        "name": p.name,
        "ods": p.ods_code,
        "role": p.role.value,
        "scope": sorted(p.scopes),
        "src": p.source,
    }


def _principal(claims: dict[str, Any]) -> Principal:
    return Principal(
        client_id=str(claims["sub"]),
        name=str(claims["name"]),
        ods_code=str(claims["ods"]),
        role=Role(claims["role"]),
        scopes=frozenset(str(s) for s in claims["scope"]),
        source=None if claims.get("src") is None else str(claims["src"]),
    )


class Sessions:
    """Makes, signs, reads and sets session cookies for one deployment (one token secret)."""

    def __init__(self, secret: bytes, secure: bool, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(secret, b"concord/console-session/v1", hashlib.sha256).digest()
        self.secure = secure
        self.name = SECURE_COOKIE if secure else COOKIE
        self.clock = clock

    def anonymous(self) -> Session:
        return Session(secrets.token_urlsafe(24), int(self.clock()) + ANONYMOUS_SECONDS)

    def signed_in(self, principal: Principal, expires: int) -> Session:
        """A new session (with a new CSRF token) for ``principal`` until ``expires``."""
        return Session(secrets.token_urlsafe(24), expires, principal)

    def encode(self, session: Session) -> str:
        payload = {
            "v": VERSION,
            "c": session.csrf,
            "e": session.expires,
            "p": None if session.principal is None else _principal_claims(session.principal),
        }
        body = _b64(orjson.dumps(payload))
        return f"{body}.{self._mac(body)}"

    def decode(self, value: str | None) -> Session | None:
        """The session a cookie value holds; None if it is absent, forged, edited, malformed or expired."""
        if not value or len(value) > MAX_COOKIE_CHARS:
            return None
        body, dot, mac = value.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        try:
            payload = orjson.loads(_unb64(body))
            if payload.get("v") != VERSION:
                return None
            expires = int(payload["e"])
            principal = None if payload["p"] is None else _principal(payload["p"])
            session = Session(str(payload["c"]), expires, principal)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None
        return session if expires > self.clock() else None

    def read(self, request: Request) -> Session | None:
        return self.decode(request.cookies.get(self.name))

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            self.name,
            self.encode(session),
            max_age=max(0, session.expires - int(self.clock())),
            path=PATH,
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(self.name, path=PATH, secure=self.secure, httponly=True, samesite="strict")

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii", "replace"), hashlib.sha256).digest())
