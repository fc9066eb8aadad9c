"""Consent decisions and their cache: store facts, the pure rules, a cache that never outlives a change.

Three deciders, picked by configuration (``build_decider``):

- ``StoreDecider``: reads the person's facts from the store for every decision.
  PostgreSQL without Redis uses it (processes may be on several machines).
- ``LocalDecider``: the embedded default. Decisions are cached in process,
  fenced by a shared-memory counter per person (gateway/fence.py) that every
  consent change bumps before it returns, in whatever process it ran.
- ``RedisDecider``: decisions cached in Redis beside a per-person *epoch* (the
  log sequence of the person's latest consent change, from the store). A cached
  decision counts only while its epoch equals the current one; a change writes
  the new epoch before it returns. There is no invalidation message to lose.

The rules every decider keeps:

- A decision is cached only when its facts were read; unreadable facts deny
  and are never cached.
- Redis failing (down, slow, refusing) sends the decider to the store, never to
  a permit. After an error Redis is skipped for a second, so an outage costs
  one timeout, not one per request.
- ``changed()`` returns only once no cache can still hold a decision made
  before the change: the fence or Redis epoch was moved, or, when Redis could
  not be told, after waiting out the longest life of a cached decision
  (``CONCORD_CONSENT_CACHE_SECONDS``), which every cache entry is given from the
  moment its facts were read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from consent.decide import decide
from consent.model import Decision, Facts, Reason, Requester, Verdict
from gateway.fence import FileFence
from gateway.group_commit import GroupCommit
from gateway.store.hot_reads import EngineReads, HotReads

log = logging.getLogger(__name__)

REDIS_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)


class Decider(Protocol):
    async def decide(self, nhs_number: str, purpose: str, requester: Requester) -> Decision:
        """Permit or deny; never raises. Reads the store only when no valid cached decision exists."""
        ...

    async def changed(self, epochs: Mapping[str, int]) -> bool:
        """Called after a consent change commits (NHS number to its new epoch), before the change returns.

        Returns True when every cache was told at once, False when it had to wait out the cache lifetime.
        """
        ...

    async def close(self) -> None: ...


class StoreDecider:
    """No cache: the store's facts, every time."""

    def __init__(self, engine: AsyncEngine, reads: HotReads | None = None) -> None:
        self.engine = engine
        #: Where the register is read: at the driver (``store.hot_reads``), or through the engine.
        self.reads = reads if reads is not None else EngineReads(engine)

    async def facts(self, nhs_number: str) -> Facts | None:
        try:
            return await self.reads.facts(nhs_number)
        except Exception:  # noqa: BLE001 - whatever stops the read, the answer is "facts unavailable": deny
            log.warning("consent facts could not be read from the store; denying")
            return None

    async def decide(self, nhs_number: str, purpose: str, requester: Requester) -> Decision:
        return decide(await self.facts(nhs_number), nhs_number, purpose, requester)

    async def changed(self, epochs: Mapping[str, int]) -> bool:
        return True

    async def close(self) -> None:
        return None


CacheKey = tuple[str, str, str]


class LocalDecider(StoreDecider):
    """In-process cache, fenced across the processes of one machine by a shared-memory counter per person.

    A hit costs two dict lookups at most and one shared-memory load: the person's fence slot is
    worked out when the decision is cached, not on every hit. Entries age out in two generations
    that a background task swaps every ``ttl / 2``, so nothing outlives ``ttl`` and the hit path
    never reads the clock.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        fence: FileFence,
        ttl: float,
        max_entries: int = 200_000,
        reads: HotReads | None = None,
    ) -> None:
        super().__init__(engine, reads)
        self.fence = fence
        self.ttl = ttl
        self.max_entries = max_entries
        self._view = fence.view
        self._young: dict[CacheKey, tuple[Decision, int, int]] = {}
        self._old: dict[CacheKey, tuple[Decision, int, int]] = {}
        self._rotator: asyncio.Task[None] | None = None

    def cached(self, nhs_number: str, purpose: str, requester: Requester) -> Decision | None:
        """The cached decision if it is still valid, else None. No I/O: one shared-memory read."""
        key = (nhs_number, purpose, requester.kind)
        hit = self._young.get(key)
        if hit is None:
            hit = self._old.get(key)
            if hit is None:
                return None
        if self._view[hit[1]] != hit[2]:
            return None
        return hit[0]

    async def _rotate(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 2)
            self._old, self._young = self._young, {}

    async def decide(self, nhs_number: str, purpose: str, requester: Requester) -> Decision:
        hit = self.cached(nhs_number, purpose, requester)
        if hit is not None:
            return hit
        if self._rotator is None or self._rotator.done():
            # Entries from before this rotator (a previous event loop's) cannot be aged: drop them.
            self._young, self._old = {}, {}
            self._rotator = asyncio.get_running_loop().create_task(self._rotate())
        slot = self.fence.slot(nhs_number)
        stamp = int(self._view[slot])  # before the facts: a change after this moves the fence
        facts = await self.facts(nhs_number)
        decision = decide(facts, nhs_number, purpose, requester)
        if facts is not None:
            if len(self._young) >= self.max_entries:
                self._young.clear()
            self._young[(nhs_number, purpose, requester.kind)] = (decision, slot, stamp)
        return decision

    async def changed(self, epochs: Mapping[str, int]) -> bool:
        self.fence.bump(tuple(epochs))
        return True

    async def close(self) -> None:
        if self._rotator is not None and not self._rotator.done():
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._rotator
        self.fence.close()


# KEYS[1] epoch key, KEYS[2] decision key; ARGV: epoch, encoded decision, ttl ms, epoch ttl s.
# The decision is written only if no newer epoch is known: a slow reader cannot undo a change.
_STORE_DECISION = """
local known = redis.call('GET', KEYS[1])
local epoch = tonumber(ARGV[1])
if known and tonumber(known) > epoch then return 0 end
if not known or tonumber(known) < epoch then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4]) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS[1] epoch key; ARGV: new epoch, epoch ttl s. The epoch only ever rises.
_RAISE_EPOCH = """
local known = redis.call('GET', KEYS[1])
if known and tonumber(known) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

EPOCH_TTL: Final = 7 * 24 * 3600


class RedisDecider(StoreDecider):
    """Decisions cached in Redis under the person's store epoch; the store when Redis fails."""

    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        ttl: float,
        prefix: str = "concord:consent:",
        retry_after: float = 1.0,
        reads: HotReads | None = None,
    ) -> None:
        super().__init__(engine, reads)
        self.redis = redis
        self.ttl = ttl
        self.prefix = prefix
        self.retry_after = retry_after
        self._skip_until = 0.0
        self._store_decision = redis.register_script(_STORE_DECISION)
        self._raise_epoch = redis.register_script(_RAISE_EPOCH)
        # Lookups in flight share one MGET (measured: a Redis command costs a request ~120 µs of
        # redis-py's CPU; shared by the dozens in flight, a few µs each).
        self._lookups: GroupCommit[_Lookup] = GroupCommit(self._look_up, max_batch=256)
        # Likewise decisions being cached share one pipeline (each script still checks its own epoch).
        self._stores: GroupCommit[_Store] = GroupCommit(self._store_all, max_batch=256)

    async def _store_all(self, stores: list[_Store]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for store in stores:
                await self._store_decision(keys=list(store.keys), args=list(store.args), client=pipe)
            await pipe.execute()

    async def _look_up(self, lookups: list[_Lookup]) -> None:
        found = await self.redis.mget([key for lookup in lookups for key in lookup.keys])
        for i, lookup in enumerate(lookups):
            lookup.found = (found[2 * i], found[2 * i + 1])

    def _keys(self, nhs_number: str, purpose: str, requester: Requester) -> tuple[str, str]:
        base = f"{self.prefix}{nhs_number}"
        return f"{base}:epoch", f"{base}:{purpose}:{requester.kind.value}"

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self) -> None:
        self._skip_until = time.monotonic() + self.retry_after
        log.warning("redis unavailable for consent decisions; using the store")

    async def decide(self, nhs_number: str, purpose: str, requester: Requester) -> Decision:
        epoch_key, decision_key = self._keys(nhs_number, purpose, requester)
        redis_ok = self._available()
        if redis_ok:
            try:
                lookup = _Lookup((epoch_key, decision_key))
                await self._lookups.submit(lookup)
                known, cached = lookup.found
                if known is not None and cached is not None:
                    hit = _decode(cached)
                    if hit is not None and hit.epoch == int(known):
                        return hit
            except REDIS_ERRORS:
                self._failed()
                redis_ok = False
        read_at = time.monotonic()
        facts = await self.facts(nhs_number)
        decision = decide(facts, nhs_number, purpose, requester)
        if facts is not None and redis_ok:
            life_ms = int((self.ttl - (time.monotonic() - read_at)) * 1000)
            if life_ms > 0:
                try:
                    await self._stores.submit(
                        _Store(
                            (epoch_key, decision_key), (facts.epoch, _encode(decision), life_ms, EPOCH_TTL)
                        )
                    )
                except REDIS_ERRORS:
                    self._failed()
        return decision

    async def changed(self, epochs: Mapping[str, int], attempts: int = 3) -> bool:
        started = time.monotonic()
        for attempt in range(attempts):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for nhs_number, epoch in epochs.items():
                        await self._raise_epoch(
                            keys=[f"{self.prefix}{nhs_number}:epoch"], args=[epoch, EPOCH_TTL], client=pipe
                        )
                    await pipe.execute()
                await self._announce(len(epochs))
                return True
            except REDIS_ERRORS:
                await asyncio.sleep(0.05 * (attempt + 1))
        # Redis could not be told. Every cached decision expires within ``ttl`` of its facts being read,
        # so once ``ttl`` has passed since the commit none made before it can remain anywhere.
        log.warning("redis could not be told of a consent change; waiting out the decision cache lifetime")
        await asyncio.sleep(max(0.0, self.ttl - (time.monotonic() - started)) + 0.05)
        return False

    async def _announce(self, people: int) -> None:
        # For listeners that act on changes (the publisher retracts); correctness never depends on it.
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.publish(f"{self.prefix}changes", str(people))

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass(slots=True)
class _Lookup:
    """One decision's keys (epoch, decision) and, once looked up, their values."""

    keys: tuple[str, str]
    found: tuple[bytes | str | None, bytes | str | None] = (None, None)


@dataclass(frozen=True, slots=True)
class _Store:
    """One decision to cache: the script's keys (epoch, decision) and arguments."""

    keys: tuple[str, str]
    args: tuple[int, str, int, int]


def _encode(d: Decision) -> str:
    return "|".join((str(d.epoch), d.verdict.value, d.reason.value, d.purpose, d.consent_id or ""))


@functools.lru_cache(maxsize=4096)
def _decode(raw: bytes | str) -> Decision | None:
    """A cached decision's value as a ``Decision`` (frozen, so one may be shared: most people's
    decisions encode alike, so a small cache spares parsing and two enum lookups per request)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        epoch, verdict, reason, purpose, consent_id = text.split("|")
        return Decision(Verdict(verdict), Reason(reason), purpose, int(epoch), consent_id or None)
    except ValueError:
        return None
