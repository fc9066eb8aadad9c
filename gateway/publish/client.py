"""The HIE's HTTP client: one long-lived aiohttp session, a connection pool, timeouts that hold.

``ClientTimeout(total=...)`` alone does not stop a read that hangs after the
headers, so connect and per-read (``sock_read``) timeouts are set, and the whole
exchange (the access token included) ends by the caller's deadline. Every error
that means "try again later" (connection refused or reset, timeouts, the token
endpoint failing) becomes ``HieUnreachable``; an HTTP answer of any status is
returned for the publisher to judge. Redirects are never followed: a person's
data goes to the configured HIE and nowhere else. At most ``MAX_REPLY_BYTES`` of
an answer are read (a transaction-response is small; an HIE's 100 MB, or a gzip
bomb, must not exhaust the publisher's memory).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp

from gateway.http_read import read_at_most
from gateway.publish.backoff import parse_retry_after
from gateway.publish.oauth import TokenSource, TokenUnavailable
from gateway.settings import Settings

FHIR_JSON = "application/fhir+json"
#: The most of an answer that is read; beyond it the body is dropped (``HieResponse.oversized``).
MAX_REPLY_BYTES = 16 * 1024 * 1024


class HieUnreachable(Exception):
    """No HTTP answer: connection refused or reset, or a timeout. Retry later."""


@dataclass(frozen=True, slots=True)
class HieResponse:
    status: int
    body: bytes
    retry_after: float | None
    #: The answer was longer than ``MAX_REPLY_BYTES``: it was not read (``body`` is empty).
    oversized: bool = False


class HieClient:
    def __init__(self, settings: Settings) -> None:
        if not settings.hie_url:
            raise ValueError("CONCORD_HIE_URL is not set: publishing is off")
        self.url = settings.hie_url.rstrip("/")
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._tokens: TokenSource | None = None

    async def __aenter__(self) -> HieClient:
        s = self.settings
        ssl_context: ssl.SSLContext | bool = True
        if s.hie_auth == "mtls":
            ssl_context = ssl.create_default_context(cafile=str(s.hie_ca_file) if s.hie_ca_file else None)
            if s.hie_cert_file is None:
                raise ValueError("CONCORD_HIE_CERT_FILE is required for mtls")
            ssl_context.load_cert_chain(str(s.hie_cert_file), str(s.hie_key_file) if s.hie_key_file else None)
        connector = aiohttp.TCPConnector(limit=max(8, s.publish_concurrency * 2), ssl=ssl_context)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.hie_connect_timeout,
            sock_connect=s.hie_connect_timeout,
            sock_read=s.hie_read_timeout,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        if s.hie_auth == "oauth2":
            if not (s.hie_token_url and s.hie_client_id and s.hie_key_file and s.hie_key_id):
                raise ValueError("oauth2 needs CONCORD_HIE_TOKEN_URL, _CLIENT_ID, _KEY_FILE and _KEY_ID")
            self._tokens = TokenSource(
                self._session, s.hie_token_url, s.hie_client_id, s.hie_key_file.read_bytes(), s.hie_key_id
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def renews_tokens(self) -> bool:
        """Whether a 401 means a new access token may help (OAuth 2.0 client credentials)."""
        return self._tokens is not None

    async def transaction(
        self, bundle: bytes, request_id: str, deadline_seconds: float | None = None
    ) -> HieResponse:
        """POST one transaction Bundle; the same ``request_id`` is sent on every retry of a delivery.

        ``deadline_seconds`` bounds the whole exchange (the caller's lease on the person must
        outlast it); past it the HIE counts as unreachable and the delivery is retried.
        """
        assert self._session is not None, "use `async with HieClient(...)`"
        try:
            # The deadline bounds the token request too: a token endpoint that drips its answer
            # must not hold the person past their lease (nor a stopping publisher for ever).
            async with asyncio.timeout(deadline_seconds):
                return await self._exchange(self._session, bundle, request_id, deadline_seconds)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise HieUnreachable(type(exc).__name__) from exc
        except TokenUnavailable as exc:
            raise HieUnreachable(f"access token: {exc}") from exc
        except aiohttp.ClientResponseError as exc:  # an answer aiohttp could not parse as HTTP
            raise HieUnreachable(f"malformed HTTP answer ({type(exc).__name__})") from exc

    async def _exchange(
        self, session: aiohttp.ClientSession, bundle: bytes, request_id: str, deadline_seconds: float | None
    ) -> HieResponse:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Request-ID": request_id}
        if self._tokens is not None:
            headers.update(await self._tokens.header())
        timeout = None
        if deadline_seconds is not None:
            timeout = aiohttp.ClientTimeout(
                total=deadline_seconds,
                connect=self.settings.hie_connect_timeout,
                sock_connect=self.settings.hie_connect_timeout,
                sock_read=self.settings.hie_read_timeout,
            )
        async with session.post(
            self.url, data=bundle, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            body, oversized = await read_at_most(response, MAX_REPLY_BYTES)
            if response.status == 401 and self._tokens is not None:
                self._tokens.forget()
            return HieResponse(
                response.status, body, parse_retry_after(response.headers.get("Retry-After")), oversized
            )
