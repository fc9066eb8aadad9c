"""The decision cache in one process: what it serves, when it goes back to the store, how it fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from reachable import REDIS_URL, need_service
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from consent.model import Authority, Facts, OptOutKind, Reason, Requester, RequesterKind, Verdict
from gateway.bootstrap import Services
from gateway.decisions import LocalDecider, RedisDecider, StoreDecider
from gateway.fence import FileFence

PERSON = "9990000018"
PROVIDER = Requester(RequesterKind.PROVIDER, "RY4", "community-epr")


class CountingReads:
    """Counts how often a decider goes to the store for facts."""

    def __init__(self, decider: StoreDecider) -> None:
        self.count = 0
        plain = decider.facts

        async def counted(nhs_number: str) -> Facts | None:
            self.count += 1
            return await plain(nhs_number)

        decider.facts = counted  # type: ignore[method-assign]


@pytest.fixture
async def broken_engine() -> AsyncIterator[AsyncEngine]:
    """An engine whose every connection fails: the register cannot be read."""
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    yield engine
    await engine.dispose()


async def test_unreadable_register_denies_and_is_never_cached(
    broken_engine: AsyncEngine, tmp_path: Path
) -> None:
    fence = FileFence(tmp_path / "fence")
    decider = LocalDecider(broken_engine, fence, ttl=60)
    for _ in range(2):
        decision = await decider.decide(PERSON, "direct-care", PROVIDER)
        assert (decision.verdict, decision.reason) == (Verdict.DENY, Reason.FACTS_UNAVAILABLE)
    assert decider.cached(PERSON, "direct-care", PROVIDER) is None
    await decider.close()


async def test_store_decider_denies_when_the_store_is_down(broken_engine: AsyncEngine) -> None:
    decision = await StoreDecider(broken_engine).decide(PERSON, "direct-care", PROVIDER)
    assert decision.verdict is Verdict.DENY


async def test_local_cache_serves_until_the_fence_moves_in_any_process(
    services: Services, tmp_path: Path
) -> None:
    fence_path = tmp_path / "shared.fence"
    mine = LocalDecider(services.engine, FileFence(fence_path), ttl=60)
    reads = CountingReads(mine)
    assert (await mine.decide(PERSON, "direct-care", PROVIDER)).permitted
    assert (await mine.decide(PERSON, "direct-care", PROVIDER)).permitted
    assert reads.count == 1
    other_process = FileFence(fence_path)  # another mapping of the same file, as another process has
    other_process.bump([PERSON])
    assert mine.cached(PERSON, "direct-care", PROVIDER) is None
    await mine.decide(PERSON, "direct-care", PROVIDER)
    assert reads.count == 2
    other_process.close()
    await mine.close()


async def test_local_cache_entries_expire(services: Services, tmp_path: Path) -> None:
    decider = LocalDecider(services.engine, FileFence(tmp_path / "fence"), ttl=0.05)
    reads = CountingReads(decider)
    await decider.decide(PERSON, "direct-care", PROVIDER)
    await asyncio.sleep(0.1)
    await decider.decide(PERSON, "direct-care", PROVIDER)
    assert reads.count == 2
    await decider.close()


@pytest.fixture
async def redis_decider(services: Services) -> AsyncIterator[RedisDecider]:
    need_service("Redis", "127.0.0.1", 6379)
    client = Redis.from_url(REDIS_URL, socket_timeout=0.5)
    decider = RedisDecider(services.engine, client, ttl=30, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield decider
    await decider.close()


async def test_redis_cache_hit_then_change_moves_the_epoch(
    services: Services, redis_decider: RedisDecider
) -> None:
    reads = CountingReads(redis_decider)
    assert (await redis_decider.decide(PERSON, "direct-care", PROVIDER)).permitted
    assert (await redis_decider.decide(PERSON, "direct-care", PROVIDER)).permitted
    assert reads.count == 1
    services.register.decider = redis_decider
    await services.register.opt_out(PERSON, OptOutKind.LOCAL, Authority.LETTER, PROVIDER, "t")
    denied = await redis_decider.decide(PERSON, "direct-care", PROVIDER)
    assert (denied.verdict, denied.reason) == (Verdict.DENY, Reason.LOCAL_OPT_OUT)
    assert denied.consent_id is not None
    assert reads.count == 2


async def test_a_slow_reader_cannot_write_back_a_decision_older_than_the_epoch(
    services: Services, redis_decider: RedisDecider
) -> None:
    """Facts read before a change, cached after it: the newer epoch in Redis refuses the write."""
    stale = await redis_decider.facts(PERSON)
    assert stale is not None
    services.register.decider = redis_decider
    await services.register.opt_out(PERSON, OptOutKind.LOCAL, Authority.LETTER, PROVIDER, "t")
    original = redis_decider.facts

    async def stale_facts(nhs_number: str) -> Facts | None:
        return stale

    redis_decider.facts = stale_facts  # type: ignore[method-assign]
    assert (
        await redis_decider.decide(PERSON, "direct-care", PROVIDER)
    ).permitted  # computed from stale facts
    redis_decider.facts = original  # type: ignore[method-assign]
    assert not (await redis_decider.decide(PERSON, "direct-care", PROVIDER)).permitted


async def test_redis_down_goes_to_the_store(services: Services) -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    decider = RedisDecider(services.engine, client, ttl=0.2)
    await services.register.opt_out(PERSON, OptOutKind.LOCAL, Authority.LETTER, PROVIDER, "t")
    decision = await decider.decide(PERSON, "direct-care", PROVIDER)
    assert (decision.verdict, decision.reason) == (Verdict.DENY, Reason.LOCAL_OPT_OUT)
    assert (await decider.decide("9990000026", "direct-care", PROVIDER)).permitted
    assert await decider.changed({PERSON: 1}, attempts=1) is False
    await decider.close()
