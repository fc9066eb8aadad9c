"""Redis wakes an idle publisher: a change reaches the HIE at once, not at the next poll.

The publisher polls every 30 s here, so anything that arrives within ``PROMPT``
seconds was delivered because the outbox signal woke it. The control runs the
same publisher without the signal listener: the change waits (the poll is far
off) until the publisher is woken by hand, which shows that the row was ready
and that only the wake-up was missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from reachable import REDIS_URL, need_service
from redis.asyncio import Redis

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.bootstrap import Services, bootstrap
from gateway.publish.client import HieClient
from gateway.publish.publisher import Publisher
from gateway.settings import Settings
from gateway.store import outbox as box
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS

ACTOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")
PEOPLE = 3
POLL_SECONDS = 30.0
#: A delivery this soon can only have come from a wake-up (the poll is POLL_SECONDS away).
PROMPT = 2.0


class Parked(asyncio.Event):
    """The publisher's wake event, telling the test when the publisher is idle and waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.parked.set()
        return await super().wait()


@pytest.fixture
async def world(store_settings: Settings, hie: TestServer) -> AsyncIterator[Services]:
    """A few people ingested and already published; Redis configured under a prefix of this test's own."""
    need_service("Redis", "127.0.0.1", 6379)
    settings = store_settings.model_copy(
        update={
            "hie_url": str(hie.make_url("/fhir")),
            "redis_url": REDIS_URL,
            "redis_prefix": f"test-wake-{uuid.uuid4().hex[:12]}:",
            "publish_poll_seconds": POLL_SECONDS,
            "publish_lease_seconds": 5.0,
        }
    )
    services = await bootstrap(settings)
    try:
        buffer = io.StringIO()
        WRITERS["gp"](population(PEOPLE, 11), buffer, random.Random("gp"), DefectPlan(0.0, 11))
        rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "opt_out_code": ""} for r in rows)  # everyone shareable
        await services.ingestor.run(
            "gp", adapter_for("gp").read(io.BytesIO(out.getvalue().encode())), "gp.csv"
        )
        async with HieClient(services.settings) as client:
            stats = await Publisher(services, client).run(until_idle=True)
        assert stats.published == PEOPLE
        yield services
    finally:
        await services.close()


async def stub_state(hie: TestServer) -> Any:
    async with ClientSession() as session, session.get(hie.make_url("/_stub/state")) as response:
        return await response.json()


async def first_number(services: Services) -> str:
    async with services.engine.connect() as conn:
        numbers = await box.people_after(conn, "", 1)
    return numbers[0]


async def transactions_after(hie: TestServer, seen: int, within: float) -> tuple[int, float]:
    """The stub's transaction count once it exceeds ``seen`` (or at ``within`` seconds), and when."""
    started = time.monotonic()
    while True:
        count = int((await stub_state(hie))["transactions"])
        elapsed = time.monotonic() - started
        if count > seen or elapsed >= within:
            return count, elapsed
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(services: Services, listen: bool) -> AsyncIterator[Publisher]:
    """A publisher running until stopped, parked on its poll wait; with ``listen``, the Redis listener too."""
    async with HieClient(services.settings) as client:
        publisher = Publisher(services, client)
        wake = Parked()
        publisher.wake = wake
        stop = asyncio.Event()
        listener = asyncio.create_task(services.signal.listen(publisher.wake)) if listen else None
        task = asyncio.create_task(publisher.run(stop=stop))
        try:
            await asyncio.wait_for(wake.parked.wait(), 5)
            if listen:
                await subscribed(services.signal.channel)
            yield publisher
        finally:
            stop.set()
            # The publisher looks at ``stop`` only between rounds, and clears its wake event after each
            # claim: keep waking it until it has seen ``stop``.
            for _ in range(200):
                publisher.wake.set()
                if (await asyncio.wait({task}, timeout=0.05))[0]:
                    break
            await asyncio.wait_for(task, 5)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener


async def subscribed(channel: str) -> None:
    """Wait until someone listens on ``channel`` (the listener's SUBSCRIBE has reached Redis)."""
    redis = Redis.from_url(REDIS_URL)
    try:
        for _ in range(250):
            counts = await redis.pubsub_numsub(channel)
            if counts and counts[0][1] > 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the outbox listener never subscribed")
    finally:
        await redis.aclose()


async def test_a_redis_wake_up_delivers_at_once(world: Services, hie: TestServer) -> None:
    number = await first_number(world)
    seen = int((await stub_state(hie))["transactions"])
    async with running(world, listen=True) as publisher:
        await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "wake-1")
        count, elapsed = await transactions_after(hie, seen, PROMPT)
        assert count == seen + 1, f"no delivery within {PROMPT}s of the opt-out (poll is {POLL_SECONDS}s)"
        assert elapsed < PROMPT
        for _ in range(100):  # the stub answers before the publisher records the answer
            if publisher.stats.retracted:
                break
            await asyncio.sleep(0.02)
        assert publisher.stats.retracted == 1
    state = await stub_state(hie)
    assert state["counts"].get("Patient") == PEOPLE - 1, "the opted-out person's Patient was retracted"
    async with world.engine.connect() as conn:
        assert await box.due_or_waiting(conn) == 0


async def test_without_the_listener_the_change_waits_for_the_poll(world: Services, hie: TestServer) -> None:
    number = await first_number(world)
    seen = int((await stub_state(hie))["transactions"])
    async with running(world, listen=False) as publisher:
        await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "wake-2")
        count, _ = await transactions_after(hie, seen, PROMPT)
        assert count == seen, "delivered without a wake-up: the test would prove nothing"
        async with world.engine.connect() as conn:
            assert await box.due_or_waiting(conn) > 0, "the opt-out is queued, waiting"
        publisher.wake.set()  # what the listener would have done
        count, elapsed = await transactions_after(hie, seen, PROMPT)
        assert count == seen + 1 and elapsed < PROMPT
