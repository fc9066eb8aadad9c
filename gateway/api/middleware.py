"""Pure-ASGI middleware: request ids, access logs and metrics; request body limits; gzip both ways.

Outermost first (``front`` places the first two, ``install_middleware`` the rest):

1. ``RequestMiddleware``: takes the caller's ``X-Request-ID`` when it is 1-64
   characters of ``[A-Za-z0-9._-]``, else makes a random 32-hex-digit one; puts it in
   ``request.state.request_id`` and on every response (an unhandled error is
   answered with a 500 OperationOutcome carrying it). Writes one JSON line per
   request to the ``concord.access`` logger and counts the request in the metrics.
   Neither ever holds a query string (they carry NHS numbers): the route is the
   matched template, or, for an unmatched request, its path with digit runs
   redacted whatever separates them (``gateway.redact.path``). ``HEAD`` is answered
   here for every ``GET`` route (RFC 9110 §9.3.2): the layers inside see a ``GET``,
   the caller gets its status and headers (``Content-Length`` included) without the
   body; the log and metrics name ``HEAD``.
2. ``gateway.api.hot_path.HotPath``: the two searches providers make all day,
   answered without FastAPI (bodiless GETs only, so the body limit has nothing to do).

   Both sit in front of the layers FastAPI puts outside an application's own middleware
   (Starlette's ``ServerErrorMiddleware``, FastAPI's telemetry and body-size layers), which the
   searches then skip: 4-9% of a search's CPU in process (bench/RESULTS.md). An unhandled error
   further in is answered by ``ServerErrorMiddleware`` with ``internal_error``'s OperationOutcome,
   the one ``RequestMiddleware`` sends itself.
3. ``BodyLimitMiddleware``: a declared ``Content-Length`` over ``max_body_bytes``
   is answered 413 before the application runs; a streamed body is cut off the
   moment it passes the limit (the application reads a disconnect, the caller gets
   the 413). ``Content-Encoding: gzip`` bodies are inflated as they arrive under
   the same cap on the inflated size, so a zip bomb costs at most the limit. The
   application never holds more than the limit; what a refused caller still sends
   is discarded (up to a bound, see ``drain``) so that it can read the answer.
   Its refusals are OperationOutcomes, but at ``/token`` OAuth errors (``gateway.api.oauth``).
4. ``GZip`` (Starlette's ``GZipMiddleware``): responses of 1000 bytes or more, to callers
   that accept gzip (``accepts_gzip``: not ``gzip;q=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import zlib
from datetime import UTC, datetime
from typing import Final

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware, IdentityResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import redact
from gateway.api import oauth
from gateway.api.access_log import access_log, log_access
from gateway.api.metrics import Metrics, metrics_of, route_template
from gateway.api.outcome import FHIR_JSON, outcome_bytes
from gateway.settings import Settings

log = logging.getLogger(__name__)

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
GZIP_MIN_BYTES: Final = 1000
GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
#: A refused body is read and discarded up to max(limit, this) more bytes, for this long at most.
DRAIN_MIN_BYTES: Final = 1024 * 1024
DRAIN_SECONDS: Final = 5.0


def install_middleware(app: Starlette, settings: Settings) -> None:
    """Add the body limit and gzip to ``app``'s own middleware (Starlette runs the last added outermost)."""
    app.add_middleware(GZip, minimum_size=GZIP_MIN_BYTES, compresslevel=6)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics_of(app))


def front(app: Starlette, stack: ASGIApp) -> ASGIApp:
    """``RequestMiddleware`` and ``HotPath`` in front of ``stack``, everything else ``app`` runs."""
    from gateway.api.hot_path import HotPath  # it builds on this module

    metrics = metrics_of(app)
    return RequestMiddleware(HotPath(stack, metrics), metrics)


def internal_error(request_id: str) -> bytes:
    """The body of a 500: an OperationOutcome that asks the caller to quote the request id."""
    return outcome_bytes("exception", f"internal error; quote request id {request_id}")


def request_id_from(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` if usable, else a fresh random one (32 hex digits)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _REQUEST_ID.fullmatch(candidate) else new_request_id()
    return new_request_id()


class _RandomIds:
    """128-bit random ids, as unguessable as uuid4's, from ``os.urandom`` read 256 ids at a time
    (a system call per request was a measurable share of a search's CPU)."""

    BATCH: Final = 256

    def __init__(self) -> None:
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._ids.clear)  # a child never reuses its parent's

    def __call__(self) -> str:
        if not self._ids:
            block = os.urandom(16 * self.BATCH)
            self._ids = [block[i : i + 16].hex() for i in range(0, len(block), 16)]
        return self._ids.pop()


new_request_id = _RandomIds()


def loggable_route(scope: Scope) -> str:
    """The matched route template; else the path (never the query string) with digit runs redacted."""
    template = route_template(scope)
    if template is not None:
        return template
    return redact.path(str(scope.get("path", "")))


def _client_id(state: object) -> str | None:
    principal = state.get("principal") if isinstance(state, dict) else None
    client_id = getattr(principal, "client_id", None)
    return client_id if isinstance(client_id, str) else None


async def send_outcome(send: Send, status: int, code: str, diagnostics: str, close: bool = False) -> None:
    """Send a complete OperationOutcome response."""
    await send_body(send, status, outcome_bytes(code, diagnostics), close)


async def send_body(
    send: Send, status: int, body: bytes, close: bool = False, media_type: str = FHIR_JSON
) -> None:
    """Send a complete response of ``body`` (an OperationOutcome's bytes unless ``media_type`` says)."""
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    if media_type == oauth.JSON:
        headers += [(k.lower().encode(), v.encode()) for k, v in oauth.NO_STORE.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` names gzip (or x-gzip) with a non-zero weight: ``q=0`` means
    not acceptable (RFC 9110 §12.5.3)."""
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        weight = next((p.strip()[2:] for p in params if p.strip().lower().startswith("q=")), "1")
        try:
            return float(weight) > 0
        except ValueError:
            return False
    return False


class GZip(GZipMiddleware):
    """Starlette's ``GZipMiddleware``, deciding by ``accepts_gzip`` (it looks for ``gzip`` anywhere)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not accepts_gzip(Headers(scope=scope).get("accept-encoding", "")):
            identity = IdentityResponder(
                self.app, self.minimum_size, exclude_content_types=self.exclude_content_types
            )
            await identity(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class RequestMiddleware:
    """Request id in and out, one access log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode("ascii"))
        method = scope["method"]
        head = method == "HEAD"
        if head:  # the app answers a GET (the server's own scope keeps HEAD: it frames the answer)
            scope = {**scope, "method": "GET"}
        status = 0
        sent = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append(rid_header)
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                if head:
                    message = {**message, "body": b""}
                sent += len(message.get("body", b""))
            await send(message)

        self.metrics.started()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status == 0:  # nothing sent yet: answer for the app, then let the server log the error
                with contextlib.suppress(Exception):
                    await send_body(send_with_id, 500, internal_error(rid))
            raise
        finally:
            self.metrics.finished()
            seconds = time.perf_counter() - started
            self.metrics.observe(method, route_template(scope), status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                log_access(self._line(scope, method, rid, status, seconds, sent))

    @staticmethod
    def _line(scope: Scope, method: str, rid: str, status: int, seconds: float, sent: int) -> str:
        return orjson.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": rid,
                "method": method,
                "route": loggable_route(scope),
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes": sent,
                "client_id": _client_id(scope.get("state")),
            }
        ).decode()

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.metrics.retire()
            await send(message)

        return lifespan_send


class _Refused(Exception):
    def __init__(self, status: int, code: str, reason: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.reason, self.diagnostics = status, code, reason, diagnostics

    async def send(self, send: Send, scope: Scope, close: bool) -> None:
        """The refusal: an OperationOutcome, or at the token endpoint an OAuth ``invalid_request``."""
        if oauth.answers_in_oauth(scope["path"]):
            body = oauth.error_body("invalid_request", self.diagnostics)
            await send_body(send, self.status, body, close, media_type=oauth.JSON)
        else:
            await send_outcome(send, self.status, self.code, self.diagnostics, close)


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "too-long", "too-large", f"the request body exceeds {limit} bytes")


async def drain(receive: Receive, budget: int) -> bool:
    """Read and discard the rest of a refused body: True if it ended within ``budget`` bytes and
    ``DRAIN_SECONDS``. A client that is still sending reads no answer (it sees the connection reset)
    unless its body is consumed, so a refused body is drained this far, and beyond it the connection
    is closed."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                budget -= len(message.get("body", b""))
                if budget < 0:
                    return False
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False


class BodyLimitMiddleware:
    """No request body over ``max_bytes`` (raw or inflated) reaches the application.

    A refused body is drained (discarded) up to ``max(max_bytes, DRAIN_MIN_BYTES)`` more bytes so the
    caller can read the refusal on a connection that stays open; a longer one gets the refusal and the
    connection closed. A caller that sent ``Expect: 100-continue`` is refused before it sends anything.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.drain_budget = max(max_bytes, DRAIN_MIN_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            gzipped = self._check_headers(scope)
        except _Refused as refused:
            self.metrics.rejected.labels(refused.reason).inc()
            drained = self._worth_draining(scope) and await drain(receive, self.drain_budget)
            await refused.send(send, scope, close=not drained)
            return
        body = _LimitedBody(scope, receive, send, self.max_bytes, gzipped, self)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if not body.answered:
                raise
            # The app failed after the caller already had its refusal (it was told the client went away).
            log.debug("the application failed after its request body was refused", exc_info=True)

    def _worth_draining(self, scope: Scope) -> bool:
        """Whether a body refused on its headers alone should be drained before answering."""
        headers = dict(scope["headers"])
        if b"100-continue" in headers.get(b"expect", b"").lower():
            return False  # the caller waits for our word before sending: refuse at once
        declared = headers.get(b"content-length", b"0").strip()
        return declared.isdigit() and int(declared) <= self.drain_budget

    def _check_headers(self, scope: Scope) -> bool:
        """Refuse what the headers alone condemn; True when the body is gzip (headers then rewritten)."""
        length: bytes | None = None
        encoding: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value.strip()
            elif name == b"content-encoding":
                encoding = value.strip().lower()
        if length is not None:
            if not length.isdigit():
                raise _Refused(400, "invalid", "bad-length", "the Content-Length header is not a number")
            if int(length) > self.max_bytes:
                raise _too_large(self.max_bytes)
        if encoding in (None, b"", b"identity"):
            return False
        if encoding not in (b"gzip", b"x-gzip"):
            raise _Refused(
                415, "not-supported", "unsupported-encoding", "only gzip is supported as a Content-Encoding"
            )
        # The app sees the inflated body: its length is unknown and it is no longer encoded.
        scope["headers"] = [
            (n, v) for n, v in scope["headers"] if n not in (b"content-length", b"content-encoding")
        ]
        return True


class _LimitedBody:
    """The ``receive`` the app gets: counts (and inflates) the body; past the limit, answers itself."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int,
        gzipped: bool,
        owner: BodyLimitMiddleware,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limit = limit
        self.owner = owner
        self.raw = 0
        self.inflated = 0
        self.inflater = zlib.decompressobj(GZIP_WBITS) if gzipped else None
        self.started = False
        self.refused = False
        self.answered = False

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self.raw += len(chunk)
        try:
            if self.raw > self.limit:
                raise _too_large(self.limit)
            if self.inflater is not None:
                chunk = self._inflate(chunk, more)
        except _Refused as refused:
            await self._refuse(refused, more)
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": more}

    def _inflate(self, data: bytes, more: bool) -> bytes:
        assert self.inflater is not None
        out = bytearray()
        try:
            while data:
                piece = self.inflater.decompress(data, self.limit - self.inflated + 1)
                self.inflated += len(piece)
                if self.inflated > self.limit:
                    raise _too_large(self.limit)
                out += piece
                if self.inflater.eof:  # another gzip member may follow
                    data = self.inflater.unused_data
                    if data:
                        self.inflater = zlib.decompressobj(GZIP_WBITS)
                else:
                    data = self.inflater.unconsumed_tail
        except zlib.error:
            raise _Refused(400, "invalid", "bad-encoding", "the request body is not valid gzip") from None
        if not more and self.raw and not self.inflater.eof:
            raise _Refused(400, "invalid", "bad-encoding", "the gzip request body is truncated")
        return bytes(out)

    async def _refuse(self, refused: _Refused, more: bool) -> None:
        """The app reads a disconnect from now on; the caller gets the refusal unless the app answered."""
        self.refused = True
        self.owner.metrics.rejected.labels(refused.reason).inc()
        if self.started:
            return
        self.started = self.answered = True
        drained = not more or await drain(self._receive, self.owner.drain_budget)
        await refused.send(self._send, self.scope, close=not drained)

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the caller already has its answer; what the app says now goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
