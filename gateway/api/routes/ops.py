"""Operations endpoints, without authentication: ``/healthz``, ``/readyz``, ``/metrics``.

- ``GET /healthz``: the process is up and serving. Always 200 ``{"status": "ok"}``.
- ``GET /readyz``: the store answers ``SELECT 1`` and, when ``CONCORD_REDIS_URL`` is
  set, Redis answers ``PING``, each within ``CHECK_SECONDS``. 200 when all do, else
  503 naming the failed component. Bodies name components and states only, never a
  URL, host or error message.
- ``GET /metrics``: Prometheus exposition, text or OpenMetrics as ``Accept`` asks (gateway/api/metrics.py).

None of them touch patient data, and none appear in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from fastapi import APIRouter, Request, Response
from redis.asyncio import Redis
from sqlalchemy import text

from gateway.api.metrics import metrics_of
from gateway.bootstrap import Services
from gateway.decisions import RedisDecider

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

_STATUS = {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}
_NOT_READY = {"description": "Not ready: a check failed (Retry-After)", "content": _STATUS}

CHECK_SECONDS: Final = 2.0
JSON: Final = "application/json"


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=JSON)


@router.get(
    "/healthz", summary="Liveness", responses={200: {"description": "The process serves", "content": _STATUS}}
)
async def healthz() -> Response:
    return _json(200, {"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: the store and, when configured, Redis answer",
    responses={200: {"description": "Ready", "content": _STATUS}, 503: _NOT_READY},
)
async def readyz(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return _json(503, {"status": "unavailable", "checks": {"app": "starting"}}, {"Retry-After": "5"})
    checks: dict[str, Callable[[], Awaitable[object]]] = {"store": lambda: _store(services)}
    if services.settings.redis_url:
        checks["redis"] = lambda: _redis(services)
    states = await asyncio.gather(*(_check(name, probe) for name, probe in checks.items()))
    results = dict(zip(checks, states, strict=True))
    if all(state == "ok" for state in states):
        return _json(200, {"status": "ok", "checks": results})
    return _json(503, {"status": "unavailable", "checks": results}, {"Retry-After": "5"})


@router.get(
    "/metrics",
    summary="Prometheus metrics (no patient data in any label)",
    responses={
        200: {"description": "Prometheus text (or OpenMetrics when asked)", "content": {"text/plain": {}}}
    },
)
async def metrics(request: Request) -> Response:
    body, content_type = metrics_of(request.app).exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


async def _check(name: str, probe: Callable[[], Awaitable[object]]) -> str:
    """ "ok" or "unavailable"; the failure is logged by type only (messages may hold hosts or URLs)."""
    try:
        await asyncio.wait_for(probe(), CHECK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready, and is reported as such
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        return "unavailable"
    return "ok"


async def _store(services: Services) -> None:
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(services: Services) -> None:
    decider = services.decider
    if isinstance(decider, RedisDecider):
        await decider.redis.ping()
        return
    url = services.settings.redis_url
    assert url is not None
    client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        await client.ping()
    finally:
        await client.aclose()
