"""Rate limiting per client organisation: a token bucket per client, answered with 429 and Retry-After.

Every client (a registered organisation's system: the access token's ``sub``) has a bucket that
holds at most ``burst`` tokens and refills at ``rate`` tokens a second; each authenticated request
(API or console) takes one. A request that finds the bucket empty raises ``Throttled``: 429, an
OperationOutcome with code ``throttled``, and ``Retry-After`` in whole seconds (rounded up, at least 1).

- ``take`` / ``take_many`` are the bucket arithmetic, pure. Both kinds of bucket use it; the Lua
  script mirrors ``take_many`` line for line, and the tests run both over the same cases.
- ``LocalBuckets``: in this process's memory. Without Redis each process keeps its own buckets, so
  under ``concord serve --workers N`` a client may get up to N times the configured rate.
- ``RedisBuckets`` (``CONCORD_REDIS_URL`` set): a hash ``{prefix}ratelimit:{client id}`` updated by
  one Lua script, atomically, so every process shares one budget; a process takes a small lease of
  tokens at a time when the rate is high (``RedisBuckets``). The caller passes ``now``; the
  key expires once an idle bucket would be full anyway (plus a margin), and a missing key is a full
  bucket. When Redis fails the request is checked against this process's ``LocalBuckets`` instead
  and Redis is left alone for ``SKIP_SECONDS``: rate limiting never fails a request because Redis
  is down (it only becomes per process while Redis is away).

Clock: ``now`` is wall-clock seconds (``time.time``), which processes on several hosts agree on,
injected so tests are deterministic. A bucket's stamp does not move back for a host whose clock lags
a little (it would refill the bucket a second time), only for a clock stepped back by more than
``MAX_SKEW_SECONDS`` (else the client would be refused until the clock caught up).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from gateway.api.metrics import Metrics
from gateway.api.outcome import Throttled
from gateway.api.principal import Principal
from gateway.bootstrap import Services
from gateway.decisions import RedisDecider
from gateway.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

REDIS_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)
#: After a Redis failure, how long this process limits on its own before asking Redis again.
SKIP_SECONDS: Final = 1.0
#: How long an idle bucket's key outlives the time it takes to fill up again.
TTL_MARGIN_SECONDS: Final = 60
#: What counts as a whole token: rounding (``0.1 + 3 * 0.3`` is ``0.9999999999999999``) must not turn
#: away a client that waited exactly the Retry-After it was given.
ONE_TOKEN: Final = 1.0 - 1e-9
#: A stamp further ahead of ``now`` than this is a clock that was stepped back, not skew between hosts:
#: counting restarts from ``now`` rather than refusing the client until the clock catches up.
MAX_SKEW_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    #: When ``tokens`` was last brought up to date (wall-clock seconds).
    stamp: float


@dataclass(frozen=True, slots=True)
class Taken:
    allowed: bool
    #: The bucket after this request (to store back).
    bucket: Bucket
    #: True when Redis failed and this process's own bucket decided.
    fallback: bool = False


def take(held: Bucket | None, now: float, rate: float, burst: int) -> Taken:
    """Refill ``held`` (None: a new, full bucket) up to ``now`` and take one token if there is one."""
    granted, bucket = take_many(held, now, rate, burst, 1)
    return Taken(granted > 0, bucket)


def take_many(held: Bucket | None, now: float, rate: float, burst: int, want: int) -> tuple[int, Bucket]:
    """Refill ``held`` up to ``now`` and take up to ``want`` whole tokens: (how many, the bucket after)."""
    if held is None:
        tokens, stamp = float(burst), now
    else:
        tokens, stamp = held.tokens, held.stamp
        if now > stamp:
            tokens = min(float(burst), tokens + (now - stamp) * rate)
            stamp = now
        elif stamp - now > MAX_SKEW_SECONDS:
            stamp = now
    granted = 0
    if tokens >= ONE_TOKEN:
        granted = min(want, math.floor(tokens + (1.0 - ONE_TOKEN)))
        tokens = tokens - granted
    return granted, Bucket(tokens, stamp)


def retry_after(tokens: float, rate: float) -> int:
    """Whole seconds until a bucket holding ``tokens`` has one again: rounded up, at least 1."""
    return max(1, math.ceil((1.0 - tokens) / rate))


class Buckets(Protocol):
    async def take(self, client: str, now: float) -> Taken:
        """Take one token from ``client``'s bucket at ``now``. Never raises for a backend failure."""
        ...


class LocalBuckets:
    """Buckets in this process's memory, one per client id (a closed set: the client registry)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._held: dict[str, Bucket] = {}

    async def take(self, client: str, now: float) -> Taken:
        taken = take(self._held.get(client), now, self.rate, self.burst)
        self._held[client] = taken.bucket
        return taken


# The Lua twin of ``take_many``: same operations in the same order on the same doubles, so both agree
# to the bit. Numbers travel as "%.17g" strings (a Lua number returned to Redis would be truncated).
# KEYS[1]: the bucket. ARGV: now, rate, burst, ttl (seconds), ONE_TOKEN, MAX_SKEW_SECONDS, want.
# Returns {granted, tokens, stamp}.
TAKE_LUA: Final = """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local one_token = tonumber(ARGV[5])
local max_skew = tonumber(ARGV[6])
local want = tonumber(ARGV[7])
local held = redis.call('HMGET', KEYS[1], 't', 's')
local tokens, stamp
if held[1] and held[2] then
  tokens = tonumber(held[1])
  stamp = tonumber(held[2])
  if now > stamp then
    tokens = math.min(burst, tokens + (now - stamp) * rate)
    stamp = now
  elseif stamp - now > max_skew then
    stamp = now
  end
else
  tokens = burst
  stamp = now
end
local granted = 0
if tokens >= one_token then
  granted = math.min(want, math.floor(tokens + (1 - one_token)))
  tokens = tokens - granted
end
local t = string.format('%.17g', tokens)
local s = string.format('%.17g', stamp)
redis.call('HSET', KEYS[1], 't', t, 's', s)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {granted, t, s}
"""


@dataclass(slots=True)
class Lease:
    """Tokens this process took from a shared bucket ahead of need, spendable until ``until``."""

    left: int
    until: float
    bucket: Bucket


class RedisBuckets:
    """Buckets in Redis shared by every process; this process's ``LocalBuckets`` while Redis fails.

    A process takes up to ``lease`` tokens at a time (a hundredth of a second's worth of the rate,
    at most a quarter of the burst, at least one) and spends them before asking again, for at most
    ``LEASE_SECONDS``; what is left then is dropped. Every token still comes out of the one shared
    bucket, so no client ever gets more than its rate: at worst a little less, while another
    process holds tokens it does not use. At the default rates the lease is one token, a Redis call
    per request; a client allowed thousands a second costs a call per tens of its requests.
    """

    LEASE_SECONDS: Final = 1.0

    def __init__(self, redis: Redis, prefix: str, rate: float, burst: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.rate = rate
        self.burst = burst
        self.ttl = math.ceil(burst / rate) + TTL_MARGIN_SECONDS
        self.lease = max(1, min(int(rate / 100), burst // 4))
        self.local = LocalBuckets(rate, burst)
        self._script = redis.register_script(TAKE_LUA)
        self._skip_until = -math.inf
        self._leases: dict[str, Lease] = {}

    def key(self, client: str) -> str:
        return f"{self.prefix}{client}"

    async def take(self, client: str, now: float) -> Taken:
        held = self._leases.get(client)
        if held is not None and held.left > 0 and held.until > now >= held.until - self.LEASE_SECONDS:
            held.left -= 1
            return Taken(True, held.bucket)
        if now >= self._skip_until:
            try:
                granted, tokens, stamp = await self._script(
                    keys=[self.key(client)],
                    args=[now, self.rate, self.burst, self.ttl, ONE_TOKEN, MAX_SKEW_SECONDS, self.lease],
                )
                bucket = Bucket(float(tokens), float(stamp))
                if granted > 1:
                    self._leases[client] = Lease(int(granted) - 1, now + self.LEASE_SECONDS, bucket)
                else:
                    self._leases.pop(client, None)
                return Taken(granted > 0, bucket)
            except REDIS_ERRORS as exc:
                self._skip_until = now + SKIP_SECONDS
                log.warning(
                    "rate limit: Redis unavailable (%s); limiting in this process for %.0f s",
                    type(exc).__name__,
                    SKIP_SECONDS,
                )
        taken = await self.local.take(client, now)
        return Taken(taken.allowed, taken.bucket, fallback=True)


class RateLimiter:
    """Admits a request for a principal or raises ``Throttled``; counts refusals and fallbacks."""

    def __init__(
        self, buckets: Buckets, rate: float, metrics: Metrics | None = None, clock: Clock = time.time
    ) -> None:
        self.buckets = buckets
        self.rate = rate
        self.metrics = metrics
        self.clock = clock

    async def admit(self, principal: Principal) -> None:
        """Take one token from the principal's client's bucket; ``Throttled`` when there is none."""
        taken = await self.buckets.take(principal.client_id, self.clock())
        if self.metrics is not None:
            self.metrics.rate_limited(principal.role.value, taken.allowed, taken.fallback)
        if not taken.allowed:
            wait = retry_after(taken.bucket.tokens, self.rate)
            raise Throttled(
                f"too many requests from this client: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )


def build_limiter(
    settings: Settings, services: Services, metrics: Metrics | None = None, clock: Clock = time.time
) -> RateLimiter | None:
    """The limiter for these settings (None when ``rate_limit_per_second`` is 0): in Redis when the
    services use Redis (sharing their connection pool), else in this process."""
    rate, burst = settings.rate_limit_per_second, settings.rate_limit_burst
    if rate <= 0:
        return None
    buckets: Buckets
    if isinstance(services.decider, RedisDecider):
        buckets = RedisBuckets(services.decider.redis, f"{settings.redis_prefix}ratelimit:", rate, burst)
    else:
        buckets = LocalBuckets(rate, burst)
    return RateLimiter(buckets, rate, metrics, clock)


async def admit(request: Request, principal: Principal) -> None:
    """Where a request's principal has just been authenticated: take its token or raise ``Throttled``."""
    limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        await limiter.admit(principal)
