"""The publisher: outbox rows in, one transaction per person out to the HIE, until nothing is left.

For each person with due outbox rows: lease the person, ask the disclosure
function (purpose direct care, recipient the HIE), then

- permitted: send the person's current shared view (``bundle.publication``),
  deleting anything sent before that is no longer in it;
- denied (an opt-out): retract everything the HIE was sent (``bundle.retraction``),
  or nothing at all if it was never sent anything.

The HIE's answer decides what happens next: a transaction-response with every
entry 2xx finishes the rows; 5xx, 408, 409, 429, timeouts and connection errors
retry after exponential backoff with jitter (honouring Retry-After) with the same
X-Request-ID; any other 4xx is a dead letter holding the HIE's OperationOutcome.
A person waiting for a retry blocks nobody else: only their rows wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from consent.model import Requester, RequesterKind
from gateway.bootstrap import Services
from gateway.decisions import StoreDecider
from gateway.disclosure import Ask, Disclosure, DisclosureUnavailable
from gateway.publish.backoff import retry_delay
from gateway.publish.bundle import publication, read_reply, refs_of, retraction
from gateway.publish.client import HieClient, HieUnreachable
from gateway.store import outbox as box
from gateway.views import load_person

log = logging.getLogger(__name__)

RETRYABLE = {408, 409, 429}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class PublishStats:
    published: int = 0
    retracted: int = 0
    skipped: int = 0
    retried: int = 0
    dead: int = 0
    busy: int = 0
    lags: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "published": self.published,
            "retracted": self.retracted,
            "skipped": self.skipped,
            "retried": self.retried,
            "dead_letters": self.dead,
        }


class Publisher:
    def __init__(
        self,
        services: Services,
        client: HieClient,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.client = client
        self.owner = owner or f"publisher-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter
        self.requester = Requester(RequesterKind.HIE, self.settings.hie_ods, "publisher")
        self.stats = PublishStats()
        self.store_decider = StoreDecider(services.engine)
        self.wake = asyncio.Event()

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None) -> PublishStats:
        """Deliver until stopped; with ``until_idle``, return once nothing is due or waiting to retry."""
        batch = self.settings.publish_concurrency * 4
        while stop is None or not stop.is_set():
            # Cleared before looking, so a wake-up that arrives while we claim is not lost.
            self.wake.clear()
            claimed = await self._claim(batch)
            if claimed:
                await self._deliver_all(claimed)
                continue
            if until_idle and await self._idle():
                break
            await self._wait(stop)
        return self.stats

    async def _wait(self, stop: asyncio.Event | None) -> None:
        """Until woken, stopped, or the poll interval passes."""
        waiters = [asyncio.ensure_future(self.wake.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(
                waiters, timeout=self.settings.publish_poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _idle(self) -> bool:
        async with self.services.engine.connect() as conn:
            return await box.due_or_waiting(conn) == 0

    async def _claim(self, limit: int) -> dict[str, list[int]]:
        now = self.clock()
        until = now + timedelta(seconds=self.settings.publish_lease_seconds)
        async with self.services.engine.begin() as conn:
            claimed = await box.claim(conn, self.owner, now, until, limit)
            leased: dict[str, list[int]] = {}
            for number, ids in sorted(claimed.items()):  # one lease order for every publisher: no deadlock
                if await box.lease_person(conn, number, self.owner, now, until):
                    leased[number] = ids + await box.claim_rest(conn, number, self.owner, now, until)
                else:
                    # Another publisher is talking to the HIE about this person: after it, not beside it.
                    self.stats.busy += 1
                    await box.release_rows(conn, ids, now + timedelta(seconds=0.2))
        return leased

    async def _deliver_all(self, claimed: dict[str, list[int]]) -> None:
        gate = asyncio.Semaphore(self.settings.publish_concurrency)

        async def one(number: str, ids: list[int]) -> None:
            async with gate:
                try:
                    await self._deliver(number, ids)
                except Exception:
                    log.exception("delivery failed unexpectedly; retrying later")
                    await self._retry(number, ids, "internal error", None)

        await asyncio.gather(*(one(n, ids) for n, ids in claimed.items()))

    async def _deliver(self, number: str, ids: list[int]) -> None:
        async with self.services.engine.connect() as conn:
            state = await box.person_state(conn, number)
        delivery_id = state.delivery_id or uuid.uuid4().hex
        if state.delivery_id is None:
            async with self.services.engine.begin() as conn:
                await box.start_delivery(conn, number, delivery_id)
        ask = Ask(self.requester, "direct-care", "publish", delivery_id)
        # Decided from the store, never a cache: the consent change that queued this row committed
        # with it, but may not yet have told the caches; a cached permit here would publish an
        # opted-out person and close the very row meant to retract them.
        fresh = Disclosure(self.services.engine, self.store_decider, self.services.disclosure.log)
        try:
            disclosed = await fresh.person(ask, number, lambda n: load_person(self.services.engine, n))
        except DisclosureUnavailable:
            await self._retry(number, ids, "audit log unavailable", None)
            return
        if disclosed.permitted and disclosed.resources:
            body = publication(disclosed.resources, number, state.published)
            new_state, held = "published", refs_of(disclosed.resources)
        elif state.published or state.state == "published":
            body = retraction(state.published, number)
            new_state, held = "retracted", []
        else:
            await self._finish(number, ids, "retracted" if not disclosed.permitted else "none", [])
            self.stats.skipped += 1
            return
        try:
            response = await self.client.transaction(body, delivery_id)
        except HieUnreachable as exc:
            await self._retry(number, ids, f"unreachable: {exc}", None)
            return
        reply = read_reply(response.status, response.body)
        if reply.ok:
            await self._finish(number, ids, new_state, held)
            if new_state == "published":
                self.stats.published += 1
            else:
                self.stats.retracted += 1
        elif response.status >= 500 or response.status in RETRYABLE:
            await self._retry(number, ids, f"HTTP {response.status}", response.retry_after)
        else:
            outcome = reply.outcome or {"diagnostics": response.body[:2000].decode("utf-8", "replace")}
            if reply.failed_entry is not None:
                outcome = {"failed_entry": reply.failed_entry, "outcome": outcome}
            async with self.services.engine.begin() as conn:
                await box.dead_letter(
                    conn,
                    number,
                    ids,
                    delivery_id,
                    response.status,
                    orjson.dumps(outcome).decode(),
                    self.clock(),
                )
            self.stats.dead += 1

    async def _finish(self, number: str, ids: list[int], state: str, held: list[str]) -> None:
        async with self.services.engine.begin() as conn:
            await box.finish(conn, number, ids, state, held, self.clock())

    async def _retry(self, number: str, ids: list[int], error: str, retry_after: float | None) -> None:
        async with self.services.engine.connect() as conn:
            attempts = (await box.person_state(conn, number)).attempts + 1
        delay = retry_delay(
            attempts,
            self.settings.publish_backoff_seconds,
            self.settings.publish_backoff_cap_seconds,
            retry_after,
            self.rng,
        )
        async with self.services.engine.begin() as conn:
            await box.retry_later(conn, number, ids, self.clock() + timedelta(seconds=delay), error)
        self.stats.retried += 1


async def backfill(services: Services, page: int = 1000, after: str = "") -> int:
    """Queue every person's current view for delivery (a new HIE, or after an outage); resumable.

    Returns how many people were queued. Each page commits on its own, so an interrupted backfill
    keeps what it queued; ``after`` resumes after a given NHS number.
    """
    queued = 0
    while True:
        async with services.engine.begin() as conn:
            numbers = await box.people_after(conn, after, page)
            if not numbers:
                return queued
            await box.enqueue_person(conn, numbers, utcnow(), "backfill")
        queued += len(numbers)
        after = numbers[-1]
