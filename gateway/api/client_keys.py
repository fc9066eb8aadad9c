"""A client's public keys at ``POST /token``: its registered JWK Set, or the set at its JWK Set URL.

A client registers one or the other (``concord clients add|set-keys``), and the registry keeps it in
the client's ``jwks`` text: a JWK Set (``{"keys": [...]}``), or a JWK Set URL written as
``{"jwks_uri": "https://..."}`` (RFC 7591's name for it). SMART Backend Services has servers
support both.

A set at a URL is fetched (aiohttp, one session per app) only when ``/token`` needs it, and must
pass the checks a registered set passes (``assertion.parse_jwks``):

- https only; http only to a loopback host (a local key server, tests); redirects are not followed;
- ``FETCH_SECONDS`` at most, ``MAX_JWKS_BYTES`` at most, status 200;
- kept for the answer's ``Cache-Control: max-age``, held within ``MIN_KEEP``..``MAX_KEEP``
  seconds (``DEFAULT_KEEP`` without one);
- fetched again before then only when an assertion names a ``kid`` the kept set lacks (the client
  has rolled its key), and then at most once every ``REFETCH_SECONDS``;
- a failed fetch is ``invalid_client`` (``Rejected``, saying what failed), never a 500; it is
  remembered for ``RETRY_SECONDS``, so a client's key server is not fetched on every refused
  assertion. Keys kept from an earlier fetch are not used once their time is up;
- a failed fetch *again* for an unknown ``kid`` leaves the kept keys in place until their time is
  up (only the refetch clock moves): the ``kid`` is read before any signature is checked, so
  anyone could ask for a bogus one, and a key server blipping then must not lock the client out.

Nothing here logs a key or a URL's answer; failures are logged with the client id and the reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.api import assertion
from gateway.api.assertion import JwksError, Key
from gateway.api.oauth import Rejected
from gateway.http_read import read_at_most

log = logging.getLogger(__name__)

FETCH_SECONDS: Final = 3.0
MAX_JWKS_BYTES: Final = 64 * 1024
MAX_URL_CHARS: Final = 2048
MIN_KEEP: Final = 60.0
MAX_KEEP: Final = 3600.0
DEFAULT_KEEP: Final = 300.0
REFETCH_SECONDS: Final = 60.0
RETRY_SECONDS: Final = 10.0
#: URLs whose fetched sets are kept at most (then all are forgotten; each is fetched again when needed).
MAX_URLS: Final = 1024

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_KEEP = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[,=]|$)", re.IGNORECASE)


def check_jwks_url(url: str) -> str:
    """``url`` if it may be registered as a JWK Set URL; ``JwksError`` saying why not otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        raise JwksError("the JWK Set URL is not a URL") from None
    if len(url) > MAX_URL_CHARS or parts.scheme not in ("https", "http") or not parts.hostname:
        raise JwksError(f"a JWK Set URL is an https URL of at most {MAX_URL_CHARS} characters")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise JwksError("a JWK Set URL may not hold credentials or a fragment")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise JwksError("a JWK Set URL must be https (http only for a loopback host)")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_registration(url: str) -> str:
    """What the registry keeps for a client registered by the JWK Set URL ``url`` (checked)."""
    return orjson.dumps({"jwks_uri": check_jwks_url(url)}).decode()


def jwks_url(registration: str) -> str | None:
    """The JWK Set URL a client's registration names, or None when it holds the set itself.

    Only ``{"jwks_uri": "..."}`` alone (``url_registration``) names a URL: anything else is read as a
    JWK Set, and ``parse_jwks`` refuses a set that also holds ``jwks_uri``.
    """
    try:
        document = orjson.loads(registration)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or set(document) != {"jwks_uri"}:
        return None
    url = document["jwks_uri"]
    return url if isinstance(url, str) else None


def keep_seconds(cache_control: str | None) -> float:
    """How long a fetched set is kept: its ``max-age`` held within ``MIN_KEEP``..``MAX_KEEP``."""
    if not cache_control:
        return DEFAULT_KEEP
    if _NO_KEEP.search(cache_control):
        return MIN_KEEP
    found = _MAX_AGE.search(cache_control)
    seconds = float(found[1]) if found else DEFAULT_KEEP
    return min(max(seconds, MIN_KEEP), MAX_KEEP)


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One fetch of a URL: its keys, or (``keys`` None) the description of its failure."""

    at: float
    keep_until: float
    keys: Mapping[str, Key] | None
    failure: str = ""


class ClientKeys:
    """The keys a client's assertion is verified with; one per app, closed with it (``close``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.fetches = 0  # HTTP fetches made (the tests count them)
        self._fetched: dict[str, _Fetched] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    async def keys(self, client_id: str, registration: str, kid: object) -> Mapping[str, Key]:
        """The client's keys by ``kid``; ``Rejected`` (``invalid_client``) when they cannot be had.

        Registered set: parsed (cached on the text). URL: the set kept from the last fetch, or a
        fetch now if there is none, its time is up, or ``kid`` is not in it (at most once a minute).
        """
        url = jwks_url(registration)
        if url is None:
            try:
                return assertion.parse_jwks(registration)
            except JwksError:
                log.error("client %s: its registered JWK Set no longer parses", client_id)
                raise Rejected("invalid_client", "the client's registered keys are unusable") from None
        fetched = self._fetched.get(url)
        if fetched is None or self._stale(fetched, kid):
            async with self._locks.setdefault(url, asyncio.Lock()):
                fetched = self._fetched.get(url)  # another request may have fetched it meanwhile
                if fetched is None or self._stale(fetched, kid):
                    fetched = await self._fetch(client_id, url)
        if fetched.keys is None:
            raise Rejected("invalid_client", fetched.failure)
        return fetched.keys

    def _stale(self, fetched: _Fetched, kid: object) -> bool:
        now = self.clock()
        if fetched.keys is None:
            return now >= fetched.at + RETRY_SECONDS
        if now >= fetched.keep_until:
            return True
        unknown = isinstance(kid, str) and kid not in fetched.keys
        return unknown and now >= fetched.at + REFETCH_SECONDS

    async def _fetch(self, client_id: str, url: str) -> _Fetched:
        self.fetches += 1
        try:
            check_jwks_url(url)  # registered through the CLI, but the row is not ours to trust blindly
            text, cache_control = await self._get(url)
        except (JwksError, _FetchFailed) as exc:
            return self._failed(client_id, url, exc, "the client's JWK Set URL could not be fetched")
        try:
            keys = assertion.parse_jwks(text)
        except JwksError as exc:
            return self._failed(client_id, url, exc, "the keys at the client's JWK Set URL are unusable")
        now = self.clock()
        return self._keep(url, _Fetched(now, now + keep_seconds(cache_control), keys))

    def _failed(self, client_id: str, url: str, exc: Exception, description: str) -> _Fetched:
        log.warning("client %s: its JWK Set URL gave no usable keys: %s", client_id, exc)
        now, kept = self.clock(), self._fetched.get(url)
        if kept is not None and kept.keys is not None and now < kept.keep_until:
            # A refetch for an unknown kid failed: the kept keys stay until their time is up; the
            # attempt only moves the refetch clock (at most one more in REFETCH_SECONDS).
            return self._keep(url, _Fetched(now, kept.keep_until, kept.keys))
        return self._keep(url, _Fetched(now, 0.0, None, description))

    def _keep(self, url: str, fetched: _Fetched) -> _Fetched:
        if len(self._fetched) >= MAX_URLS:  # forget every set, and the locks of their fetches
            self._fetched.clear()
            self._locks.clear()  # a fetch in flight keeps its own lock; at worst one more fetch runs
        self._fetched[url] = fetched
        return fetched

    async def _get(self, url: str) -> tuple[str, str | None]:
        """The body (text) and Cache-Control of a 200 answer from ``url``; ``_FetchFailed`` otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_SECONDS),
                connector=aiohttp.TCPConnector(limit=8),
            )
        try:
            async with self._session.get(
                url, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status != 200:
                    raise _FetchFailed(f"HTTP status {response.status}")
                body, oversized = await read_at_most(response, MAX_JWKS_BYTES)
                if oversized:
                    raise _FetchFailed(f"more than {MAX_JWKS_BYTES} bytes")
                text = body.decode("utf-8", errors="replace")  # anything not UTF-8 then fails as JSON
                return text, response.headers.get("Cache-Control")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _FetchFailed(type(exc).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _FetchFailed(Exception):
    """No JWK Set came from the URL (the message says why; never the body)."""
