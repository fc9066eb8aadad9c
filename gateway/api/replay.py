"""Replay protection for client assertions: a (client, jti) is accepted once, until the assertion's exp.

``claim(client_id, jti, expires_at, now)`` returns True the first time and False for a replay. The
token endpoint calls it once per assertion that passed every other check, and issues a token only
on True. ``ReplayUnavailable``: the jti could not be recorded, so no token may be issued.

- ``SqlReplayStore``: the ``used_jtis`` table. A claim removes an expired row of the same jti, then
  inserts (ON CONFLICT DO NOTHING): a row inserted is a first use, none is a replay; the unique key
  makes this hold across processes. Expired rows are purged at most once a minute per process.
- ``RedisReplayStore`` (``CONCORD_REDIS_URL`` set): ``SET {prefix}{client}:{sha256(jti)} NX EX ttl``
  answers a replay at once; a jti Redis has not seen is still recorded in the table, which decides.
  So a Redis outage or a flushed Redis never lets a replay through (Redis is never the only copy:
  the table is written whether or not Redis answers), and Redis failing costs nothing but speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from datetime import UTC, datetime
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import Settings
from gateway.store.dialect import upsert
from gateway.store.schema import used_jtis

log = logging.getLogger(__name__)

REDIS_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)
STORE_ERRORS: Final = (SQLAlchemyError, OSError, asyncio.TimeoutError)
PURGE_EVERY: Final = 60.0


class ReplayUnavailable(RuntimeError):
    """Neither Redis nor the store could record the jti: refuse the token (never issue it unrecorded)."""


class ReplayStore(Protocol):
    async def claim(self, client_id: str, jti: str, expires_at: float, now: float) -> bool: ...

    async def close(self) -> None: ...


class SqlReplayStore:
    """Used jtis in the store's ``used_jtis`` table: one short transaction per claim."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._purged_at = -math.inf

    async def claim(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        at, until = _utc(now), _utc(expires_at)
        purge = now - self._purged_at >= PURGE_EVERY
        try:
            async with self.engine.begin() as conn:
                if purge:
                    await conn.execute(delete(used_jtis).where(used_jtis.c.expires_at < at))
                else:  # a jti may come back once its earlier assertion has expired
                    await conn.execute(
                        delete(used_jtis).where(
                            used_jtis.c.client_id == client_id,
                            used_jtis.c.jti == jti,
                            used_jtis.c.expires_at < at,
                        )
                    )
                result = await conn.execute(
                    upsert(conn, used_jtis, ["client_id", "jti"], []),
                    {"client_id": client_id, "jti": jti, "expires_at": until},
                )
        except STORE_ERRORS as exc:
            raise ReplayUnavailable("the replay store cannot be written") from exc
        if purge:
            self._purged_at = now
        return bool(result.rowcount == 1)

    async def close(self) -> None:
        """Nothing to close: the engine belongs to the services."""


class RedisReplayStore:
    """Redis first (a replay is answered without touching the store), the table always."""

    def __init__(self, redis: Redis, prefix: str, durable: SqlReplayStore) -> None:
        self.redis = redis
        self.prefix = prefix
        self.durable = durable

    def key(self, client_id: str, jti: str) -> str:
        return f"{self.prefix}{client_id}:{hashlib.sha256(jti.encode()).hexdigest()}"

    async def claim(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        ttl = max(1, math.ceil(expires_at - now))
        try:
            fresh = await self.redis.set(self.key(client_id, jti), b"1", nx=True, ex=ttl)
        except REDIS_ERRORS as exc:
            log.warning("jti replay check: Redis unavailable (%s); using the store alone", type(exc).__name__)
        else:
            if not fresh:
                return False
        return await self.durable.claim(client_id, jti, expires_at, now)

    async def close(self) -> None:
        await self.redis.aclose()


def build_replay_store(settings: Settings, engine: AsyncEngine) -> ReplayStore:
    """The replay store for these settings: Redis in front of the table when Redis is configured."""
    durable = SqlReplayStore(engine)
    if not settings.redis_url:
        return durable
    client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return RedisReplayStore(client, f"{settings.redis_prefix}jti:", durable)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
