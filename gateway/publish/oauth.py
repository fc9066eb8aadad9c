"""The client side of SMART Backend Services: sign a JWT assertion, trade it for an access token.

The same protocol our own ``/token`` endpoint serves (docs/api-auth.md), used here
to authenticate concord to an HIE that requires it. Tokens are cached until a
minute before they expire; deliveries that need one at the same moment share one
request. Whatever the token endpoint answers that is not a token (an error status,
HTML, JSON of another shape, a redirect) is ``TokenUnavailable``: try again later.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Any

import aiohttp
import jwt
import orjson

from gateway.http_read import read_at_most

#: The most of a token endpoint's answer that is read (a token response is a few kilobytes).
MAX_TOKEN_REPLY_BYTES = 64 * 1024


class TokenUnavailable(Exception):
    """The token endpoint did not hand out a usable access token (its status, or what was wrong)."""


def client_assertion(client_id: str, token_url: str, private_key_pem: bytes, key_id: str, alg: str) -> str:
    """A private_key_jwt assertion: iss = sub = client id, aud = the token URL, 5 minutes, fresh jti."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 300,
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, private_key_pem, algorithm=alg, headers={"kid": key_id, "typ": "JWT"})


class TokenSource:
    """Fetches and caches an access token for the HIE."""

    def __init__(
        self, session: aiohttp.ClientSession, token_url: str, client_id: str, key_pem: bytes, key_id: str
    ) -> None:
        self.session = session
        self.token_url = token_url
        self.client_id = client_id
        self.key_pem = key_pem
        self.key_id = key_id
        self.alg = "ES384" if b"EC PRIVATE" in key_pem or _is_ec(key_pem) else "RS384"
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> str | None:
        if self._token is None or time.monotonic() > self._expires - 60:
            return None
        return self._token

    async def header(self) -> dict[str, str]:
        token = self._fresh()
        if token is None:
            async with self._lock:  # one request for everyone waiting, not one each
                token = self._fresh()
                if token is None:
                    token = await self._fetch()
        return {"Authorization": f"Bearer {token}"}

    def forget(self) -> None:
        """Drop the cached token (the HIE said 401)."""
        self._token = None

    async def _fetch(self) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(
                self.client_id, self.token_url, self.key_pem, self.key_id, self.alg
            ),
        }
        async with self.session.post(self.token_url, data=form, allow_redirects=False) as response:
            if response.status != 200:
                raise TokenUnavailable(f"the token endpoint answered HTTP {response.status}")
            raw, oversized = await read_at_most(response, MAX_TOKEN_REPLY_BYTES)
        if oversized:
            raise TokenUnavailable("the token endpoint's answer is too long")
        token, lifetime = read_token(raw)
        self._token = token
        self._expires = time.monotonic() + lifetime
        return token


def read_token(raw: bytes) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint's 200 answer.

    ``expires_in`` missing: 300 s; present but not a finite number: 0 (used once, not cached).
    """
    if len(raw) > MAX_TOKEN_REPLY_BYTES:
        raise TokenUnavailable("the token endpoint's answer is too long")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokenUnavailable("the token endpoint did not answer JSON") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
        raise TokenUnavailable("the token endpoint's answer holds no access token")
    lifetime: Any = body.get("expires_in", 300)
    if isinstance(lifetime, str):
        try:
            lifetime = float(lifetime)
        except ValueError:
            lifetime = 0.0
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or not math.isfinite(lifetime):
        lifetime = 0.0
    return token, max(0.0, float(lifetime))


def _is_ec(pem: bytes) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return isinstance(load_pem_private_key(pem, password=None), ec.EllipticCurvePrivateKey)


def key_id_for(private_key_pem: bytes) -> str:
    """The ``kid`` concord gives a key it registers (RFC 7638 thumbprint of its public JWK)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from gateway.api.assertion import public_jwk, thumbprint

    key = load_pem_private_key(private_key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return thumbprint(public_jwk(key.public_key(), "ES384"))
    if isinstance(key, rsa.RSAPrivateKey):
        return thumbprint(public_jwk(key.public_key(), "RS384"))
    raise ValueError("not an EC or RSA private key")
