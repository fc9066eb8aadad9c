"""The two searches providers make all day, answered in pure ASGI: the routes' code minus FastAPI's cost.

``GET /fhir/Patient?identifier=...`` and ``GET /fhir/CarePlan?subject...`` are nearly all of the
API's traffic. Through FastAPI each pays for dependency solving, request and response objects and
two more middleware layers, several times the cost of the search itself (measured: bench/api.py).
``HotPath`` sits inside ``RequestMiddleware`` (request id, access log, metrics) and answers these
two itself, running exactly what their routes run:

1. the bearer token (``deps.one_token``: 400 when the query carries one too; ``deps.authenticate``:
   401, then the client's rate limit: 429);
2. the search's scopes (``deps.check_scopes``: 403);
3. ``fhir_read.patient_search`` / ``careplan_search``: parse, decide, load, log, join bytes;
4. errors through ``errors.answer_for``, the mapping the app's exception handlers use;
5. gzip for callers that accept it (``middleware.accepts_gzip``: not ``gzip;q=0``), on the same
   terms as the app's ``GZip`` middleware (which also names ``Accept-Encoding`` in ``Vary`` on
   every body it could have compressed).

A ``HEAD`` of either search arrives here as a ``GET``: ``RequestMiddleware`` drops the body.

Anything else, and any of these two with a request body, goes on to the application unchanged, so
the routes (and their OpenAPI) stay the definition of both searches.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.deps import authenticate, bearer_token, check_scopes, one_token
from gateway.api.errors import answer_for
from gateway.api.metrics import Metrics
from gateway.api.middleware import GZIP_MIN_BYTES, accepts_gzip
from gateway.api.outcome import FHIR_JSON
from gateway.api.routes.fhir_read import (
    CAREPLAN_SEARCH_SCOPES,
    PATIENT_SEARCH_SCOPES,
    Call,
    Context,
    ReadApi,
    careplan_search,
    patient_search,
)

Search = Callable[[Context], Awaitable[bytes]]

#: Path → (scopes, the search); the path is also the route the access log and metrics name.
SEARCHES: Final[dict[str, tuple[tuple[str, ...], Search]]] = {
    "/fhir/Patient": (PATIENT_SEARCH_SCOPES, patient_search),
    "/fhir/CarePlan": (CAREPLAN_SEARCH_SCOPES, careplan_search),
}


@dataclass(frozen=True, slots=True)
class _Route:
    """What routing puts in ``scope["route"]`` as far as ``metrics.route_template`` reads it."""

    path: str


_ROUTES: Final = {path: _Route(path) for path in SEARCHES}
_CONTENT_TYPE: Final = (b"content-type", FHIR_JSON.encode())
GZIP_LEVEL: Final = 6
#: Bodies this large are compressed in a worker thread, not on the event loop.
GZIP_THREAD_BYTES: Final = 128 * 1024


class HotPath:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            found = SEARCHES.get(scope["path"])
            if found is not None:
                headers: dict[str, str] = {}
                for name, value in scope["headers"]:  # the first of a repeated header, as Starlette
                    headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
                api: ReadApi | None = getattr(scope["app"].state, "read_api", None)
                if api is not None and not _has_body(headers):
                    scope["route"] = _ROUTES[scope["path"]]  # named in the access log and metrics
                    await self._answer(api, scope, headers, found, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        api: ReadApi,
        scope: Scope,
        headers: dict[str, str],
        found: tuple[tuple[str, ...], Search],
        send: Send,
    ) -> None:
        scopes, search = found
        state = scope["app"].state
        extra: dict[str, str] = {}
        try:
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            token = one_token(bearer_token(headers.get("authorization")), (name for name, _ in pairs))
            principal = await authenticate(token, state.tokens, getattr(state, "limiter", None))
            scope["state"]["principal"] = principal  # the access log's client id
            check_scopes(principal, scopes)
            call = Call(principal, scope["state"]["request_id"], pairs, headers)
            status, body = 200, await search(Context(api, call))
        except Exception as exc:
            answer = answer_for(exc, self.metrics)
            if answer is None:
                raise  # a fault: RequestMiddleware answers 500 with the request id
            status, body, extra = answer.status, answer.body, answer.headers
        out = [_CONTENT_TYPE]
        if len(body) >= GZIP_MIN_BYTES:
            out.append((b"vary", b"Accept-Encoding"))
            if accepts_gzip(headers.get("accept-encoding", "")):
                body = await _gzip(body)
                out.append((b"content-encoding", b"gzip"))
        out.append((b"content-length", str(len(body)).encode()))
        out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


async def _gzip(body: bytes) -> bytes:
    if len(body) < GZIP_THREAD_BYTES:
        return gzip.compress(body, GZIP_LEVEL, mtime=0)
    return await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length")
    return (length is not None and length.strip() != "0") or "transfer-encoding" in headers
