"""The HIE's HTTP client: one long-lived aiohttp session, a connection pool, timeouts that hold.

``ClientTimeout(total=...)`` alone does not stop a read that hangs after the
headers, so connect and per-read (``sock_read``) timeouts are set. Every error
that means "try again later" (connection refused or reset, timeouts) becomes
``HieUnreachable``; an HTTP answer of any status is returned for the publisher
to judge.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp

from gateway.publish.backoff import parse_retry_after
from gateway.publish.oauth import TokenSource
from gateway.settings import Settings

FHIR_JSON = "application/fhir+json"


class HieUnreachable(Exception):
    """No HTTP answer: connection refused or reset, or a timeout. Retry later."""


@dataclass(frozen=True, slots=True)
class HieResponse:
    status: int
    body: bytes
    retry_after: float | None


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
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Request-ID": request_id}
        try:
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
            async with self._session.post(
                self.url, data=bundle, headers=headers, timeout=timeout
            ) as response:
                body = await response.read()
                if response.status == 401 and self._tokens is not None:
                    self._tokens.forget()
                return HieResponse(
                    response.status, body, parse_retry_after(response.headers.get("Retry-After"))
                )
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise HieUnreachable(type(exc).__name__) from exc
        except aiohttp.ClientResponseError as exc:  # the token endpoint refused: retry later
            raise HieUnreachable("token request refused") from exc
