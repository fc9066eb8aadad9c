"""Rate limiting on the real Redis and through the API: the Lua twin of ``take``, one budget shared by
several processes, the fallback when Redis is unreachable, and 429 answers with Retry-After."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from bucket_cases import AWKWARD, CASES, Case, FakeClock
from fastapi import FastAPI
from reachable import REDIS_URL, need_service
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.api.metrics import Metrics, metrics_of
from gateway.api.outcome import Throttled
from gateway.api.principal import Principal, Role
from gateway.api.ratelimit import (
    MAX_SKEW_SECONDS,
    ONE_TOKEN,
    SKIP_SECONDS,
    TAKE_LUA,
    Bucket,
    RateLimiter,
    RedisBuckets,
    build_limiter,
    take,
    take_many,
)
from gateway.bootstrap import bootstrap
from gateway.settings import Settings

CLIENT_A = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
CLIENT_B = Principal("epr-b", "Acute EPR", "RXX", Role.PROVIDER, frozenset({"system/*.read"}))
CLOSED_PORT = "redis://127.0.0.1:1/0"


def connect(url: str = REDIS_URL) -> Redis:
    return Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on the real Redis, emptied afterwards."""
    need_service("Redis", "127.0.0.1", 6379)
    mine = f"test-{uuid.uuid4().hex[:12]}:"
    yield mine
    with SyncRedis.from_url(REDIS_URL) as redis:
        keys = list(redis.scan_iter(match=f"{mine}*"))
        if keys:
            redis.delete(*keys)


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[Redis]:
    client = connect()
    yield client
    await client.aclose()


async def lua_take(
    redis: Redis, prefix: str, held: Bucket | None, now: float, rate: float, burst: int
) -> Bucket:
    buckets = RedisBuckets(redis, prefix, rate, burst)
    key = buckets.key("client")
    await redis.delete(key)
    if held is not None:
        await redis.hset(key, mapping={"t": repr(held.tokens), "s": repr(held.stamp)})
    taken = await buckets.take("client", now)
    assert not taken.fallback
    assert taken == take(held, now, rate, burst)
    stored = await redis.hgetall(key)
    return Bucket(float(stored[b"t"]), float(stored[b"s"]))


@pytest.mark.redis
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_the_lua_script_takes_as_the_pure_function_does(redis: Redis, prefix: str, case: Case) -> None:
    stored = await lua_take(redis, prefix, case.held, case.now, case.rate, case.burst)
    assert stored == case.expected.bucket


@pytest.mark.redis
async def test_the_lua_script_rounds_exactly_as_python(redis: Redis, prefix: str) -> None:
    for held, now, rate, burst in AWKWARD:
        assert await lua_take(redis, prefix, held, now, rate, burst) == take(held, now, rate, burst).bucket


@pytest.mark.redis
async def test_an_idle_bucket_expires_once_it_would_be_full_anyway(redis: Redis, prefix: str) -> None:
    buckets = RedisBuckets(redis, prefix, 2.0, 10)
    await buckets.take("client", FakeClock()())
    ttl = await redis.ttl(buckets.key("client"))
    assert buckets.ttl == 5 + 60
    assert 0 < ttl <= buckets.ttl


@pytest.mark.redis
async def test_two_processes_share_one_budget(prefix: str) -> None:
    clock = FakeClock()
    first, second = connect(), connect()  # two connection pools, as two workers have
    try:
        worker_a = RateLimiter(RedisBuckets(first, prefix, 1.0, 4), 1.0, clock=clock)
        worker_b = RateLimiter(RedisBuckets(second, prefix, 1.0, 4), 1.0, clock=clock)
        for worker in (worker_a, worker_b, worker_a, worker_b):
            await worker.admit(CLIENT_A)
        for worker in (worker_a, worker_b):
            with pytest.raises(Throttled):
                await worker.admit(CLIENT_A)
        await worker_b.admit(CLIENT_B)  # another client's budget is its own
        clock.advance(1.0)
        await worker_b.admit(CLIENT_A)
        with pytest.raises(Throttled) as refused:
            await worker_a.admit(CLIENT_A)
        assert refused.value.headers == {"Retry-After": "1"}
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("want", [1, 3, 40])
async def test_the_lua_script_takes_many_as_the_pure_function_does(
    redis: Redis, prefix: str, want: int
) -> None:
    script = redis.register_script(TAKE_LUA)
    key = f"{prefix}many"
    for held, now, rate, burst in [*((c.held, c.now, c.rate, c.burst) for c in CASES), *AWKWARD]:
        await redis.delete(key)
        if held is not None:
            await redis.hset(key, mapping={"t": repr(held.tokens), "s": repr(held.stamp)})
        granted, tokens, stamp = await script(
            keys=[key], args=[now, rate, burst, 60, ONE_TOKEN, MAX_SKEW_SECONDS, want]
        )
        assert (granted, Bucket(float(tokens), float(stamp))) == take_many(held, now, rate, burst, want)


@pytest.mark.redis
async def test_leases_cut_redis_calls_and_never_admit_more_than_the_shared_budget(prefix: str) -> None:
    """At 1,000 a second a process takes ten tokens per call; two such processes together admit
    exactly the burst from a full bucket, and a lease is spent without a call to Redis."""
    clock = FakeClock()
    first, second = connect(), connect()
    try:
        buckets_a, buckets_b = (
            RedisBuckets(first, prefix, 1000.0, 100),
            RedisBuckets(second, prefix, 1000.0, 100),
        )
        assert buckets_a.lease == 10
        worker_a, worker_b = (
            RateLimiter(buckets_a, 1000.0, clock=clock),
            RateLimiter(buckets_b, 1000.0, clock=clock),
        )
        await worker_a.admit(CLIENT_A)
        assert float(await first.hget(buckets_a.key(CLIENT_A.client_id), "t")) == 90.0, "one call, ten tokens"
        admitted = 1
        for _ in range(200):
            for worker in (worker_a, worker_b):
                try:
                    await worker.admit(CLIENT_A)
                    admitted += 1
                except Throttled:
                    pass
        assert admitted == 100
        clock.advance(0.005)  # five tokens come back to the bucket
        await worker_b.admit(CLIENT_A)  # takes all five: one now, four on lease
        key = buckets_b.key(CLIENT_A.client_id)
        before = await second.hget(key, "t")
        for _ in range(4):
            await worker_b.admit(CLIENT_A)
        assert await second.hget(key, "t") == before, "the lease is spent without asking Redis"
        with pytest.raises(Throttled):
            await worker_b.admit(CLIENT_A)
    finally:
        await first.aclose()
        await second.aclose()


def fallbacks(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("concord_rate_limit_fallbacks_total") or 0.0


async def test_redis_unreachable_limits_in_process(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics, down = FakeClock(), Metrics(), connect(CLOSED_PORT)
    try:
        limits = RateLimiter(RedisBuckets(down, "concord:ratelimit:", 1.0, 2), 1.0, metrics, clock)
        with caplog.at_level(logging.WARNING, logger="gateway.api.ratelimit"):
            await limits.admit(CLIENT_A)
            await limits.admit(CLIENT_A)
            with pytest.raises(Throttled):  # the process's own bucket still limits
                await limits.admit(CLIENT_A)
            assert fallbacks(metrics) == 3
            assert len(caplog.records) == 1  # Redis is left alone for a while after failing
            clock.advance(SKIP_SECONDS)
            await limits.admit(CLIENT_A)
        assert len(caplog.records) == 2
        assert "Redis unavailable" in caplog.records[0].getMessage()
        assert CLIENT_A.client_id not in caplog.text
    finally:
        await down.aclose()


# Through the API: the app and client fixtures of conftest.py, on limited settings.


@pytest.fixture(params=["in-process", "redis"])
async def store_settings(
    request: pytest.FixtureRequest, sqlite_settings: Settings
) -> AsyncIterator[Settings]:
    limited = sqlite_settings.model_copy(update={"rate_limit_per_second": 1.0, "rate_limit_burst": 3})
    if request.param == "in-process":
        yield limited
        return
    prefix: str = request.getfixturevalue("prefix")
    yield limited.model_copy(update={"redis_url": REDIS_URL, "redis_prefix": prefix})


@pytest.fixture
def clock(app: FastAPI) -> FakeClock:
    fake = FakeClock()
    app.state.limiter.clock = fake
    return fake


def bearer(app: FastAPI, who: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.state.tokens.issue(who)[0]}"}


async def test_the_request_after_the_burst_gets_429_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    a, b = bearer(app, CLIENT_A), bearer(app, CLIENT_B)
    for _ in range(3):
        assert (await client.get("/fhir/Patient/unknown", headers=a)).status_code == 404
    refused = await client.get("/fhir/Patient/unknown", headers=a)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["content-type"].startswith("application/fhir+json")
    outcome = orjson.loads(refused.content)
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in outcome["issue"]] == ["throttled"]
    assert (await client.get("/fhir/Patient/unknown", headers=b)).status_code == 404  # others unaffected
    sample = metrics_of(app).registry.get_sample_value
    assert sample("concord_rate_limited_requests_total", {"role": "provider"}) == 1
    assert not sample("concord_rate_limit_fallbacks_total")
    shared = isinstance(app.state.limiter.buckets, RedisBuckets)
    assert shared == bool(app.state.settings.redis_url)
    clock.advance(1.0)
    assert (await client.get("/fhir/Patient/unknown", headers=a)).status_code == 404


async def test_unauthenticated_and_public_requests_take_no_token(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    for _ in range(5):
        assert (await client.get("/fhir/metadata")).status_code == 200
        assert (await client.get("/fhir/Patient/unknown")).status_code == 401
    a = bearer(app, CLIENT_A)
    for _ in range(3):
        assert (await client.get("/fhir/Patient/unknown", headers=a)).status_code == 404


async def test_a_limit_of_zero_turns_rate_limiting_off(sqlite_settings: Settings) -> None:
    services = await bootstrap(sqlite_settings)
    try:
        off = sqlite_settings.model_copy(update={"rate_limit_per_second": 0.0})
        assert build_limiter(off, services) is None
        assert build_limiter(sqlite_settings, services) is not None
    finally:
        await services.close()


async def test_405_keeps_its_allow_header(client: httpx.AsyncClient) -> None:
    answer = await client.delete("/fhir/metadata")
    assert answer.status_code == 405
    assert "GET" in answer.headers["Allow"]
