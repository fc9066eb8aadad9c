"""The stub HIE's HTTP face: an aiohttp app over a ``Store``, with injected faults.

``make_app(faults, data=None)`` builds the app; nothing listens until it is run (``concord
hie-stub``, or aiohttp's ``TestServer``). Routes:

    POST /fhir, POST /           a transaction Bundle (faults apply here)
    GET  /fhir/metadata          CapabilityStatement
    GET  /fhir/{type}/{id}       read (404 unknown, 410 deleted)
    GET  /fhir/{type}?...        search (``gateway.hie_stub.search``), a searchset Bundle
    GET  /_stub/state            counts, {type: {id: versionId}}, requests, faults, request ids
                                 (``?brief``: without the per-resource versions and request ids)
    GET  /_stub/digests/{type}   [[id, content digest, ["system|value", ...]], ...] by id
    POST /_stub/reset            forget resources and counts; restart the current fault plan
    POST /_stub/faults           install a fault plan (JSON object of ``Faults`` fields)

Every FHIR request's ``X-Request-ID`` is counted (the last ``REQUEST_IDS_KEPT`` distinct ids) and
echoed; the ``down`` fault refuses every FHIR request; ``/_stub/*`` is never faulted or counted.
With ``data``, the store is loaded from that JSON file on start and written back on shutdown.
Logs name method, path, status and request id only: never a body or a query (patient data).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway import redact
from gateway.hie_stub import transaction, wire
from gateway.hie_stub.faults import FaultInjector, FaultPlanError, Faults
from gateway.hie_stub.search import SearchError, parse_query
from gateway.hie_stub.store import Store
from gateway.hie_stub.transaction import TransactionError, operation_outcome

log = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
JSON_TYPES: Final = frozenset({FHIR_JSON, "application/json"})
REQUEST_IDS_KEPT: Final = 10_000
MAX_BODY: Final = 64 * 1024 * 1024


@dataclass
class Stats:
    """What the stub has been asked: requests to /fhir and deliveries per X-Request-ID (bounded)."""

    requests: int = 0
    transactions: int = 0
    request_ids: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def delivered(self, request_id: str) -> None:
        self.request_ids[request_id] = self.request_ids.get(request_id, 0) + 1
        self.request_ids.move_to_end(request_id)
        while len(self.request_ids) > REQUEST_IDS_KEPT:
            self.request_ids.popitem(last=False)


@dataclass
class Stub:
    """The state one app serves: store, fault injector, counts, and the lock around transactions."""

    store: Store
    faults: FaultInjector
    stats: Stats = field(default_factory=Stats)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


STUB: Final = web.AppKey("stub", Stub)


def make_app(faults: Faults | None = None, data: Path | None = None) -> web.Application:
    """The stub HIE app: empty store (or ``data``'s snapshot), fault plan ``faults`` (default: none)."""
    app = web.Application(middlewares=[_fhir_requests], client_max_size=MAX_BODY)
    app[STUB] = Stub(Store(), FaultInjector(faults))
    if data is not None:
        app.cleanup_ctx.append(_persisted(data))
    for path in ("/fhir", "/fhir/", "/"):
        app.router.add_post(path, _transaction)
    app.router.add_get("/fhir/metadata", _metadata)
    app.router.add_get("/fhir/{type}/{id}", _read)
    app.router.add_get("/fhir/{type}", _search)
    app.router.add_get("/_stub/state", _state)
    app.router.add_get("/_stub/digests/{type}", _digests)
    app.router.add_post("/_stub/reset", _reset)
    app.router.add_post("/_stub/faults", _set_faults)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _fhir_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_stub/"):
        return await handler(request)
    stub = request.app[STUB]
    stub.stats.requests += 1
    request_id = request.headers.get("X-Request-ID")
    if request_id:
        stub.stats.delivered(request_id)
    retry_after = stub.faults.down()
    if retry_after is not None:
        log.info("fault down: 503 (request id %s)", request_id)
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        response: web.StreamResponse = _fhir(503, operation_outcome("transient", "HIE unavailable"), headers)
    else:
        response = await handler(request)
    if request_id and not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


async def _transaction(request: web.Request) -> web.StreamResponse:
    stub = request.app[STUB]
    stub.stats.transactions += 1
    if request.content_type not in JSON_TYPES:
        return _fhir(415, operation_outcome("not-supported", "send application/fhir+json"))
    try:
        bundle = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _fhir(400, operation_outcome("structure", "the body is not JSON"))
    fault = stub.faults.draw()
    if fault is not None:
        log.info("fault %s (request id %s)", fault, request.headers.get("X-Request-ID"))
    if fault == "reset":
        return wire.reset_connection(request)
    if fault == "error":
        return _fhir(500, operation_outcome("exception", "injected fault: internal error"))
    if fault == "throttle":
        retry = {"Retry-After": str(stub.faults.faults.retry_after)}
        return _fhir(429, operation_outcome("throttled", "injected fault: too many requests"), retry)
    if fault == "fail-entry":
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        index = stub.faults.pick_entry(len(entries) if isinstance(entries, list) else 0)
        diagnostics = "injected fault: the HIE rejected this entry"
        return _fhir(400, operation_outcome("processing", diagnostics, f"Bundle.entry[{index}]"))
    if fault == "delay":
        await wire.stall(request, stub.faults.faults.delay_seconds)
    status, body = await _apply(stub, bundle, "return=representation" in request.headers.get("Prefer", ""))
    if fault == "hang":
        return await wire.hang(request, status, orjson.dumps(body), stub.faults.faults.delay_seconds)
    return _fhir(status, body)


async def _apply(stub: Stub, bundle: Any, representation: bool) -> tuple[int, dict[str, Any]]:
    try:
        entries = transaction.parse(bundle)
        async with stub.lock:
            return 200, transaction.apply(stub.store.begin(), entries, representation)
    except TransactionError as exc:
        return exc.status, exc.outcome


async def _read(request: web.Request) -> web.StreamResponse:
    store = request.app[STUB].store
    rtype, rid = request.match_info["type"], request.match_info["id"]
    if not transaction.known_type(rtype):
        return _fhir(404, operation_outcome("not-supported", "unknown resource type"))
    stored = store.get(rtype, rid)
    if stored is None:
        if store.was_deleted(rtype, rid):
            return _fhir(410, operation_outcome("deleted", "the resource was deleted"))
        return _fhir(404, operation_outcome("not-found", "no such resource"))
    return _fhir(200, stored.resource, {"ETag": stored.etag})


async def _search(request: web.Request) -> web.StreamResponse:
    store = request.app[STUB].store
    if not transaction.known_type(request.match_info["type"]):
        return _fhir(404, operation_outcome("not-supported", "unknown resource type"))
    try:
        query = parse_query(request.query.items())
    except SearchError as exc:
        return _fhir(400, operation_outcome("not-supported", str(exc)))
    return _fhir(200, transaction.searchset(store.search(request.match_info["type"], query), query.count))


async def _metadata(request: web.Request) -> web.StreamResponse:
    interactions = [{"code": c} for c in ("read", "search-type", "update", "delete", "create")]
    params = [{"name": n, "type": t} for n, t in (("identifier", "token"), ("subject", "reference"))]
    resources = [
        {"type": t, "interaction": interactions, "conditionalUpdate": True, "searchParam": params}
        for t in ("Patient", "CarePlan", "Provenance")
    ]
    return _fhir(
        200,
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "software": {"name": "concord hie-stub"},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": resources, "interaction": [{"code": "transaction"}]}],
        },
    )


async def _state(request: web.Request) -> web.StreamResponse:
    stub = request.app[STUB]
    faults = stub.faults.state()
    state: dict[str, Any] = {
        "counts": stub.store.counts(),
        "requests": stub.stats.requests,
        "transactions": stub.stats.transactions,
        "faults": faults["injected"],
        "fault_plan": faults["plan"],
        "down_seconds_left": faults["down_seconds_left"],
        "down_requests_left": faults["down_requests_left"],
    }
    if "brief" not in request.query:
        state["resources"] = stub.store.versions()
        state["request_ids"] = dict(stub.stats.request_ids)
    return web.json_response(state, dumps=lambda v: orjson.dumps(v).decode())


async def _digests(request: web.Request) -> web.StreamResponse:
    """Every current resource of a type as ``[id, content digest, identifiers]``: audit without reading."""
    rtype = request.match_info["type"]
    if not transaction.known_type(rtype):
        return _fhir(404, operation_outcome("not-supported", "unknown resource type"))
    digests = request.app[STUB].store.digests(rtype)
    return web.Response(body=orjson.dumps(digests), content_type="application/json")


async def _reset(request: web.Request) -> web.StreamResponse:
    stub = request.app[STUB]
    async with stub.lock:
        stub.store.clear()
        stub.stats = Stats()
        stub.faults = FaultInjector(stub.faults.faults)
    return web.Response(status=204)


async def _set_faults(request: web.Request) -> web.StreamResponse:
    try:
        plan = Faults.from_json(orjson.loads(await request.read() or b"{}"))
    except (orjson.JSONDecodeError, FaultPlanError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    request.app[STUB].faults.install(plan)
    return web.json_response(plan.as_json())


def _fhir(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=FHIR_JSON, charset="utf-8", headers=headers
    )


def _persisted(data: Path) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        store = app[STUB].store
        if data.exists():
            store.load(orjson.loads(data.read_bytes()))
        yield
        tmp = data.with_name(data.name + ".tmp")
        tmp.write_bytes(orjson.dumps(store.snapshot()))
        os.replace(tmp, data)

    return context


class AccessLog(AbstractAccessLogger):
    """One line per request: method, path (no query string: it may hold an NHS number; digit runs
    redacted, as the API's access log does: ``gateway.redact``), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.3fs request-id=%s",
            request.method,
            redact.path(request.path),
            response.status,
            time,
            request.headers.get("X-Request-ID", "-"),
        )
