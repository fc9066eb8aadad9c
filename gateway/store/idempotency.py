"""Idempotency keys of the push endpoints: the first response to a key is kept and given again on a retry.

A key belongs to one client (``client_id``, ``key``) and to one request (``request_hash``,
a hash of what was sent). ``claim`` is the one step that decides, atomically, who
processes a request:

- no row, or a row older than ``KEEP`` (expired): the caller holds the key and
  processes the request (``Claimed``), then ``finish`` stores the response or
  ``release`` gives the key up (a failure another attempt may fix);
- a row for another request (a different hash): ``KeyReused``;
- a row still without a response: ``KeyInUse`` unless it is older than
  ``ABANDONED`` (its holder died), when the caller takes it over;
- a finished row for the same request: its ``Stored`` response.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson
from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.dialect import upsert
from gateway.store.schema import idempotency_keys

#: How long a stored response is given again for a retry.
KEEP: Final = timedelta(hours=24)
#: A claim with no response after this long is taken to be abandoned (its process died).
ABANDONED: Final = timedelta(minutes=15)


class KeyReused(Exception):
    """The key was used before for a different request (another body, or another endpoint)."""


class KeyInUse(Exception):
    """The same request with this key is being processed right now."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A response as it was sent: status, media type, the headers worth repeating, the body."""

    status: int
    media_type: str
    headers: dict[str, str]
    body: bytes

    def encode(self) -> str:
        return orjson.dumps(
            {"media_type": self.media_type, "headers": self.headers, "body": self.body.decode()}
        ).decode()

    @classmethod
    def decode(cls, status: int, text: str) -> Stored:
        data = orjson.loads(text)
        return cls(status, str(data["media_type"]), dict(data["headers"]), str(data["body"]).encode())


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller holds the key: it must ``finish`` or ``release`` it."""

    client_id: str
    key: str


def utcnow() -> datetime:
    return datetime.now(UTC)


async def claim(
    engine: AsyncEngine, client_id: str, key: str, request_hash: str, now: datetime | None = None
) -> Claimed | Stored:
    """Hold ``key`` for this request, or the response already stored for it; see the module docstring."""
    when = now or utcnow()
    async with engine.begin() as conn:
        stmt = upsert(conn, idempotency_keys, ["client_id", "key"], [])
        inserted = await conn.execute(
            stmt.values(
                client_id=client_id,
                key=key,
                request_hash=request_hash,
                status=None,
                response=None,
                created_at=when,
            )
        )
        if inserted.rowcount == 1:
            return Claimed(client_id, key)
        row = (
            (
                await conn.execute(
                    select(idempotency_keys).where(
                        idempotency_keys.c.client_id == client_id, idempotency_keys.c.key == key
                    )
                )
            )
            .mappings()
            .one()
        )
        created = _aware(row["created_at"])
        if when - created >= KEEP or (row["status"] is None and when - created >= ABANDONED):
            if await _take_over(conn, client_id, key, row["created_at"], request_hash, when):
                return Claimed(client_id, key)
            raise KeyInUse
        if row["request_hash"] != request_hash:
            raise KeyReused
        if row["status"] is None or row["response"] is None:
            raise KeyInUse
        return Stored.decode(int(row["status"]), str(row["response"]))


async def finish(engine: AsyncEngine, held: Claimed, response: Stored) -> None:
    """Store the response to the held key (given again to every retry until it expires)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.client_id == held.client_id, idempotency_keys.c.key == held.key)
            .values(status=response.status, response=response.encode())
        )


async def release(engine: AsyncEngine, held: Claimed) -> None:
    """Give the key up without a response: the next request with it is processed afresh."""
    async with engine.begin() as conn:
        await conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.client_id == held.client_id,
                idempotency_keys.c.key == held.key,
                idempotency_keys.c.status.is_(None),
            )
        )


async def purge(engine: AsyncEngine, now: datetime | None = None) -> int:
    """Delete keys past ``KEEP``; returns how many (expired keys are also replaced on reuse)."""
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(idempotency_keys).where(idempotency_keys.c.created_at < (now or utcnow()) - KEEP)
        )
        return int(result.rowcount)


async def _take_over(
    conn: AsyncConnection, client_id: str, key: str, seen: datetime, request_hash: str, when: datetime
) -> bool:
    """Claim an expired or abandoned row, unless another request claimed it since it was read."""
    result = await conn.execute(
        update(idempotency_keys)
        .where(
            and_(
                idempotency_keys.c.client_id == client_id,
                idempotency_keys.c.key == key,
                idempotency_keys.c.created_at == seen,
            )
        )
        .values(request_hash=request_hash, status=None, response=None, created_at=when)
    )
    return int(result.rowcount) == 1


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; the table holds UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
