"""Opaque references for URLs: a person or a set of filters, encrypted so no NHS number is in a URL.

The console's forms that name a person are POSTed; the answer is a redirect to a GET page
whose query string holds only ``sealed(...)``: AES-256-GCM (``cryptography``) under a key derived
from the token secret, with a random 96-bit nonce, and the purpose and the client id as
associated data. So a page can be reloaded, bookmarked and paged through, while URLs that land
in access logs, proxies and browser history hold ciphertext only. A reference opens only for the
client it was made for, for the page it was made for, and until it expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: How long a sealed reference can be opened: a working day.
LIFETIME_SECONDS: Final = 12 * 3600
MAX_CHARS: Final = 4096
_NONCE: Final = 12


class Sealer:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        key = hmac.new(secret, b"concord/console-seal/v1", hashlib.sha256).digest()
        self._aead = AESGCM(key)
        self.clock = clock

    def seal(self, purpose: str, owner: str, data: dict[str, Any]) -> str:
        """An opaque, URL-safe reference to ``data`` for ``owner`` (a client id) on page ``purpose``."""
        nonce = os.urandom(_NONCE)
        payload = orjson.dumps({"d": data, "e": int(self.clock()) + LIFETIME_SECONDS})
        sealed = self._aead.encrypt(nonce, payload, self._aad(purpose, owner))
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, purpose: str, owner: str, token: str | None) -> dict[str, Any] | None:
        """The data sealed for ``owner`` and ``purpose``; None if anything else (or expired)."""
        if not token or len(token) > MAX_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(purpose, owner))
            payload = orjson.loads(plain)
        except (InvalidTag, ValueError, binascii.Error, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or int(payload.get("e", 0)) < self.clock():
            return None
        data = payload.get("d")
        return data if isinstance(data, dict) else None

    @staticmethod
    def _aad(purpose: str, owner: str) -> bytes:
        return f"concord-console|{purpose}|{owner}".encode()
