"""This gateway's own access tokens: short-lived JWTs signed with HMAC-SHA256.

Client assertions at ``/token`` are rare and verified with the client's public
key (RS384/ES384/RS512). The access tokens we issue are checked on every
request, so they are HMAC-signed (about 250 times cheaper to verify than a
P-384 signature): only the gateway's processes, which share the secret, need
to verify them. They live at most 300 seconds and there are no refresh tokens.

A client sends the same token with every request for its life, so a verified
token is remembered (up to ``REMEMBERED`` of them) with its principal and expiry:
until it expires, the same string is the same principal, and the next request
pays a dict lookup instead of a decode. Nothing else about a token can change
while it lives (there is no revocation; disabling a client stops new tokens).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import jwt

from gateway.api.outcome import Unauthorized
from gateway.api.principal import Principal, Role

ALGORITHM = "HS256"
#: Verified tokens remembered at most (then forgotten all at once; each is re-verified on next use).
REMEMBERED: Final = 10_000


class AccessTokens:
    def __init__(
        self, secret: bytes, issuer: str, lifetime: int = 300, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 bytes")
        self._secret = secret
        self.issuer = issuer
        self.lifetime = lifetime
        self.clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, principal: Principal, scopes: frozenset[str] | None = None) -> tuple[str, int]:
        """A token for ``principal`` carrying ``scopes`` (default: all it was granted); (token, lifetime)."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.issuer,
            "sub": principal.client_id,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": secrets.token_hex(12),
            "scope": " ".join(sorted(scopes if scopes is not None else principal.scopes)),
            "name": principal.name,
            "ods": principal.ods_code,
            "role": principal.role.value,
        }
        if principal.source:
            claims["src"] = principal.source
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), self.lifetime

    def verify(self, token: str) -> Principal:
        """The principal a valid token stands for; ``Unauthorized`` for anything else (no detail leaks)."""
        known = self._verified.get(token)
        if known is not None and self.clock() < known[1]:
            return known[0]
        principal, expires = self._decode(token)
        if self.clock() >= expires:
            raise _expired()
        if len(self._verified) >= REMEMBERED:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.issuer,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
            principal = Principal(
                client_id=str(claims["sub"]),
                name=str(claims.get("name", "")),
                ods_code=str(claims["ods"]),
                role=Role(claims["role"]),
                scopes=frozenset(str(claims.get("scope", "")).split()),
                source=claims.get("src"),
            )
            return principal, float(claims["exp"])
        except jwt.ExpiredSignatureError:
            raise _expired() from None
        except (jwt.InvalidTokenError, KeyError, ValueError):
            raise Unauthorized(
                "access token invalid", headers=_invalid_token("the access token is not valid")
            ) from None


def _invalid_token(description: str) -> dict[str, str]:
    """The challenge for a token that was sent but cannot be used (RFC 6750 section 3.1)."""
    return {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'}


def _expired() -> Unauthorized:
    return Unauthorized(
        "access token expired", code="expired", headers=_invalid_token("the access token expired")
    )
