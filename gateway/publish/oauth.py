"""The client side of SMART Backend Services: sign a JWT assertion, trade it for an access token.

The same protocol our own ``/token`` endpoint serves (docs/api-auth.md), used here
to authenticate concord to an HIE that requires it. Tokens are cached until a
minute before they expire.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import aiohttp
import jwt


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

    async def header(self) -> dict[str, str]:
        if self._token is None or time.monotonic() > self._expires - 60:
            await self._fetch()
        return {"Authorization": f"Bearer {self._token}"}

    def forget(self) -> None:
        """Drop the cached token (the HIE said 401)."""
        self._token = None

    async def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(
                self.client_id, self.token_url, self.key_pem, self.key_id, self.alg
            ),
        }
        async with self.session.post(self.token_url, data=form) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            if response.status != 200 or "access_token" not in body:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="HIE token request refused"
                )
        self._token = str(body["access_token"])
        self._expires = time.monotonic() + float(body.get("expires_in", 300))


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
