"""Deterministic resource ids.

An id is derived from what identifies the thing at its source (source name,
local id, NHS number), so re-ingesting an extract lands on the same ids and
creates nothing new. It is an HMAC under a per-deployment key rather than a
plain hash: NHS numbers are few enough to brute-force a plain hash, and ids
travel in URLs and logs.
"""

from __future__ import annotations

import hashlib
import hmac


class IdMaker:
    """Makes FHIR ids (32 lowercase hex characters) under one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("id key must be at least 16 bytes")
        self._key = key

    def make(self, kind: str, *parts: str) -> str:
        message = "\x1f".join((kind, *parts)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def patient(self, nhs_number: str) -> str:
        """The shared Patient: one per NHS number, whatever the source."""
        return self.make("Patient", nhs_number)

    def source_resource(self, resource_type: str, source: str, local_id: str, nhs_number: str) -> str:
        return self.make(resource_type, source, local_id, nhs_number)
