"""The publisher: outbox rows in, one transaction per person out to the HIE, until nothing is left.

For each person with due outbox rows: lease the person, ask the disclosure
function (purpose direct care, recipient the HIE), then

- permitted: send the person's current shared view (``bundle.publication``),
  deleting anything sent before that is no longer in it;
- denied (an opt-out): retract everything the HIE was sent (``bundle.retraction``),
  or nothing at all if it was never sent anything.

The HIE's answer decides what happens next (``bundle.read_reply``): a
transaction-response with one 2xx entry per request (a DELETE's 404 or 410
counts) finishes the rows; 5xx, 408, 409, 429, timeouts and connection errors
retry after exponential backoff with jitter (honouring Retry-After) with the same
X-Request-ID, and what such a request carried counts as possibly held, for a
later retraction; a first 401 under OAuth 2.0 retries with a new token; anything
else is a dead letter holding the codes of the HIE's OperationOutcome
(``bundle.safe_outcome``).
A person waiting for a retry blocks nobody else: only their rows wait.

The store is read and written per claim, not per person: one transaction claims
the rows, leases the people and gives each delivery its id; one query reads the
register for all of them (``batch.ClaimDecider``); the disclosure function's
loads, its log entries and the finishes of concurrent deliveries each share a
query or a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consent.model import Requester, RequesterKind
from gateway.audit.batcher import BatchedAppender
from gateway.audit.log import AuditLog
from gateway.bootstrap import Services
from gateway.disclosure import Appender, Ask, Disclosure, DisclosureUnavailable
from gateway.group_commit import GroupCommit
from gateway.publish.backoff import retry_delay
from gateway.publish.batch import ClaimDecider, PersonLoader
from gateway.publish.bundle import (
    Reply,
    problem,
    publication,
    read_reply,
    refs_of,
    request_methods,
    retraction,
)
from gateway.publish.client import MAX_REPLY_BYTES, HieClient, HieUnreachable
from gateway.store import outbox as box

log = logging.getLogger(__name__)

RETRYABLE = {408, 409, 429}

#: Rows delivered longer ago than this are deleted when the publisher is idle (at most once a minute).
KEEP_SENT = timedelta(hours=1)
PRUNE_EVERY = timedelta(minutes=1)
#: A request to the HIE must end this long before its lease does (clock steps, the finish's commit).
LEASE_SAFETY_SECONDS = 2.0
#: After a wake-up, how long to let further changes arrive before claiming.
GATHER_SECONDS = 0.02
#: People in hand per request allowed in flight (``publish_concurrency``): each claim's store work
#: (lease, register read, log and finish transactions) is shared by up to this many times as many.
PEOPLE_PER_REQUEST_SLOT = 16
#: Claims being dispatched at once: the next is taken while one finishes; changes arriving while
#: both are busy wait to be claimed together (a lease transaction and a register read per claim).
#: A claim stops counting once each of its deliveries has been sent or has ended, so people
#: waiting on a slow or hung HIE hold up no later claim (``_Claim``).
CLAIMS_AT_ONCE = 2


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
        self.wake = asyncio.Event()
        log: Appender = services.disclosure.log
        # Deliveries in flight log their decisions in shared transactions (one head lock per group).
        self.log = BatchedAppender(log) if isinstance(log, AuditLog) else log
        self.loader = PersonLoader(services.engine)
        self.finishes: GroupCommit[box.Finished] = GroupCommit(self._commit_finishes)
        self._pruned_at: datetime | None = None
        self._gate = asyncio.Semaphore(self.settings.publish_concurrency)
        #: People this publisher is delivering now: never claimed again until their delivery is done.
        self._in_flight: set[str] = set()
        #: Set when enough deliveries finished to make another claim worth taking.
        self._room = asyncio.Event()
        #: A request is started only with this much of its lease left (a claim may wait for slots).
        #: The exchange ends this long before the lease (a quarter of a lease shorter than 8 s).
        self._safety = min(LEASE_SAFETY_SECONDS, self.settings.publish_lease_seconds / 4)
        self._send_margin = timedelta(
            seconds=min(self.settings.hie_read_timeout, self.settings.publish_lease_seconds / 2)
        )

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None) -> PublishStats:
        """Deliver until stopped; with ``until_idle``, return once nothing is due or waiting to retry.

        Claims overlap: once half of the people in hand are done, the next claim is taken while the
        rest are still being delivered. A person being delivered is never claimed again until done.
        """
        limit = self.settings.publish_concurrency * PEOPLE_PER_REQUEST_SLOT
        self._gate = asyncio.Semaphore(self.settings.publish_concurrency)
        claims: dict[asyncio.Task[None], _Claim] = {}
        try:
            while stop is None or not stop.is_set():
                self._reap(claims)
                # Cleared before looking, so a wake-up that arrives while we claim is not lost.
                self.wake.clear()
                self._room.clear()
                room = limit - len(self._in_flight)
                dispatching = sum(1 for claim in claims.values() if claim.unsent)
                claimed = (
                    await self._claim(room) if room * 2 >= limit and dispatching < CLAIMS_AT_ONCE else []
                )
                if claimed:
                    self._in_flight.update(lease.state.nhs_number for lease in claimed)
                    claim = _Claim(len(claimed), self._room)
                    claims[asyncio.create_task(self._deliver_all(claimed, claim))] = claim
                    continue
                if not claims and until_idle and await self._idle():
                    break
                await self._wait(stop, claims)
        except asyncio.CancelledError:
            for task in claims:
                task.cancel()
            raise
        finally:
            if claims:  # stopping: let the deliveries in hand finish (and record what the HIE said)
                await asyncio.wait(claims)
            self._reap(claims)
        return self.stats

    def _reap(self, claims: dict[asyncio.Task[None], _Claim]) -> None:
        """Forget claims that are done; an error that escaped one stops the publisher, as it always did."""
        for task in [t for t in claims if t.done()]:
            del claims[task]
            task.result()

    async def _wait(self, stop: asyncio.Event | None, claims: dict[asyncio.Task[None], _Claim]) -> None:
        """Until woken, stopped, room for another claim, a claim done, or the poll interval passes."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wake.wait())}
        if claims:
            waiters.add(asyncio.ensure_future(self._room.wait()))
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(
                waiters | set(claims),
                timeout=self.settings.publish_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self.wake.is_set() and not (stop is not None and stop.is_set()):
            # A wake-up comes with every committed change: let the ones right behind it arrive too, so
            # that a burst is one claim (one lease transaction, one register read), not one each.
            await asyncio.sleep(GATHER_SECONDS)

    async def _idle(self) -> bool:
        async with self.services.engine.connect() as conn:
            idle = await box.due_or_waiting(conn) == 0
        await self._prune()
        return idle

    async def _prune(self) -> None:
        """Delete long-delivered rows (what status and dead letters need stays), at most once a minute."""
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        async with self.services.engine.begin() as conn:
            await box.prune_sent(conn, now - KEEP_SENT)

    async def _claim(self, limit: int) -> list[Lease]:
        """One transaction: claim due rows, lease their people (a delivery id each), take their other rows."""
        now = self.clock()
        until = now + timedelta(seconds=self.settings.publish_lease_seconds)
        async with self.services.engine.begin() as conn:
            claimed = await box.claim(conn, self.owner, now, until, limit, self._in_flight)
            if not claimed:
                return []
            fresh_ids = {number: uuid.uuid4().hex for number in claimed}
            leased = await box.lease_people(conn, claimed, self.owner, now, until, fresh_ids)
            busy = [rid for number, ids in claimed.items() if number not in leased for rid in ids]
            if busy:
                # Another publisher is talking to the HIE about these people: after it, not beside it.
                self.stats.busy += len(claimed) - len(leased)
                await box.release_rows(conn, busy, now + timedelta(seconds=0.2))
            rest = await box.claim_rest(conn, leased, self.owner, now, until)
        return [
            Lease(claimed[n] + rest.get(n, []), leased[n], until, leased[n].delivery_id != fresh_ids[n])
            for n in sorted(leased)
        ]

    async def _deliver_all(self, claimed: list[Lease], claim: _Claim | None = None) -> None:
        """Decide and log for the whole claim together; send ``publish_concurrency`` requests at a time.

        ``claim`` counts the deliveries sent (the run loop's, which it reads; a fresh one if not given).
        """
        claim = claim if claim is not None else _Claim(len(claimed), self._room)
        # Decided from the store, never a cache: the consent change that queued these rows committed
        # with them, but may not yet have told the caches; a cached permit here would publish an
        # opted-out person and close the very row meant to retract them. Read after the claim committed.
        numbers = [lease.state.nhs_number for lease in claimed]
        decider = await ClaimDecider.read(self.services.engine, numbers)
        disclosure = Disclosure(self.services.engine, decider, self.log, reads=self.services.reads)
        limit = self.settings.publish_concurrency * PEOPLE_PER_REQUEST_SLOT

        async def one(lease: Lease) -> None:
            sent = claim.sender()
            try:
                await self._deliver(lease, disclosure, sent)
            except Exception:
                log.exception("delivery failed unexpectedly; retrying later")
                await self._retry(lease, "internal error", None)
            finally:
                sent()
                self._in_flight.discard(lease.state.nhs_number)
                if len(self._in_flight) * 2 == limit:  # just fell to half: room for the next claim
                    self._room.set()

        try:
            await asyncio.gather(*(one(lease) for lease in claimed))
        finally:
            self._in_flight.difference_update(numbers)

    async def _deliver(self, lease: Lease, disclosure: Disclosure, sent: Callable[[], None]) -> None:
        """Decide, log, send and record the HIE's answer; ``sent()`` is called as the request goes out."""
        state, ids = lease.state, lease.ids
        number, delivery_id = state.nhs_number, lease.delivery_id
        ask = Ask(self.requester, "direct-care", "publish", delivery_id)
        try:
            disclosed = await disclosure.person(ask, number, self.loader.load)
        except DisclosureUnavailable:
            await self._retry(lease, "audit log unavailable", None)
            return
        if disclosed.permitted and disclosed.resources:
            body = publication(disclosed.resources, number, state.published)
            new_state, held = "published", refs_of(disclosed.resources)
        elif state.published or state.state == "published" or lease.resumed:
            gone = state.published
            if lease.resumed:
                # An earlier attempt may have gone out unrecorded (its publisher killed between
                # sending and recording): it carried at most the person's resources, and concord
                # never deletes one, so their current ids cover it. DELETEs of what the HIE never
                # got are answered 404 or 410, which count as done.
                gone = sorted({*state.published, *await self.services.reads.refs(number)})
            body = retraction(gone, number)
            new_state, held = "retracted", []
        else:
            await self._finish(number, ids, "retracted" if not disclosed.permitted else "none", [])
            self.stats.skipped += 1
            return
        try:
            async with self._gate:
                # The exchange ends before the lease does, so no other publisher can take the person
                # while this request is still in flight (a hung HIE counts as unreachable: retried).
                left = (lease.until - self.clock()).total_seconds() - self._safety
                if self.clock() >= lease.until - self._send_margin or left <= 0:
                    # Waited too long for a request slot: the lease could lapse while the HIE answers,
                    # and another publisher take the person meanwhile. Back to the queue, due at once.
                    # (Never sent without a deadline: aiohttp reads a total of 0 or less as none.)
                    await self._requeue(lease)
                    return
                sent()
                response = await self.client.transaction(body, delivery_id, deadline_seconds=left)
        except HieUnreachable as exc:
            # Sent, perhaps applied, answer lost: the HIE may hold this publication now, so a later
            # retraction (an opt-out meanwhile) must delete it too.
            await self._retry(lease, f"unreachable: {exc}", None, maybe_held=held)
            return
        if response.oversized and 200 <= response.status < 300:
            reply = Reply(False, None, problem(f"the HIE answered more than {MAX_REPLY_BYTES} bytes"))
        else:
            reply = read_reply(response.status, response.body, request_methods(body))
        if reply.ok:
            await self._finish(number, ids, new_state, held)
            if new_state == "published":
                self.stats.published += 1
            else:
                self.stats.retracted += 1
        elif response.status >= 500 or response.status in RETRYABLE:
            await self._retry(lease, f"HTTP {response.status}", response.retry_after, maybe_held=held)
        elif response.status == 401 and self.client.renews_tokens and state.attempts == 0:
            await self._retry(lease, "HTTP 401: retrying once with a new access token", None)
        else:
            # The HIE's own words are not kept: they may quote what was sent (safe_outcome).
            about = f"HTTP {response.status}: {len(response.body)} bytes that are not an OperationOutcome"
            if reply.failed_entry is not None:
                about = "the HIE refused the entry without an OperationOutcome"
            outcome = reply.outcome or {"diagnostics": about}
            if reply.failed_entry is not None:
                outcome = {"failed_entry": reply.failed_entry, "outcome": outcome}
            # A 2xx that reads wrong (empty, not a Bundle, a failed entry: an HIE that applies entries
            # one by one) does not say the request failed as a whole: what it carried may be at the
            # HIE, so a retraction after an opt-out must delete it too (as after a lost answer). A
            # 3xx or 4xx says nothing was applied.
            applied = 200 <= response.status < 300
            maybe = sorted(set(state.published) | set(held)) if applied else sorted(state.published)
            async with self.services.engine.begin() as conn:
                await box.dead_letter(
                    conn,
                    number,
                    ids,
                    delivery_id,
                    response.status,
                    orjson.dumps(outcome).decode(),
                    self.clock(),
                    published=maybe if maybe != sorted(state.published) else None,
                )
            self.stats.dead += 1

    async def _finish(self, number: str, ids: list[int], state: str, held: list[str]) -> None:
        """Return once this delivery's finish is committed (with those of the deliveries beside it)."""
        await self.finishes.submit(box.Finished(number, ids, state, held))

    async def _commit_finishes(self, done: list[box.Finished]) -> None:
        async with self.services.engine.begin() as conn:
            await box.finish(conn, done, self.clock())

    async def _requeue(self, lease: Lease) -> None:
        async with self.services.engine.begin() as conn:
            await box.release_people(conn, [lease.state.nhs_number], lease.ids, self.owner)
        self.stats.busy += 1

    async def _retry(
        self, lease: Lease, error: str, retry_after: float | None, maybe_held: Sequence[str] = ()
    ) -> None:
        """Try again later; ``maybe_held``: refs the HIE may have applied (a lost or failed answer
        to a request that went out), added to what a retraction must delete."""
        delay = retry_delay(
            lease.state.attempts + 1,
            self.settings.publish_backoff_seconds,
            self.settings.publish_backoff_cap_seconds,
            retry_after,
            self.rng,
        )
        async with self.services.engine.begin() as conn:
            held = sorted(set(lease.state.published) | set(maybe_held))
            await box.retry_later(
                conn,
                lease.state.nhs_number,
                lease.ids,
                self.clock() + timedelta(seconds=delay),
                error,
                held if held != sorted(lease.state.published) else None,
            )
        self.stats.retried += 1


class _Claim:
    """A claim being delivered: how many of its deliveries have not yet been sent (nor ended).

    While any have not, the claim counts against ``CLAIMS_AT_ONCE``; when the last is sent, the
    publisher is told there is room (``room``) to claim again.
    """

    __slots__ = ("room", "unsent")

    def __init__(self, deliveries: int, room: asyncio.Event) -> None:
        self.unsent, self.room = deliveries, room

    def sender(self) -> Callable[[], None]:
        """For one delivery: a call that counts it sent, once however often it is made."""
        done = False

        def sent() -> None:
            nonlocal done
            if not done:
                done = True
                self.unsent -= 1
                if not self.unsent:
                    self.room.set()

        return sent


@dataclass(frozen=True, slots=True)
class Lease:
    """A person this publisher holds: their claimed rows and their state as the lease found it."""

    ids: list[int]
    state: box.PersonState
    #: When the lease lapses.
    until: datetime
    #: The lease kept the delivery id of an earlier attempt that never finished: retried, or a
    #: publisher that died mid-request (its lease lapsed), which may have sent what it did not record.
    resumed: bool = False

    @property
    def delivery_id(self) -> str:
        """X-Request-ID of this delivery, the same on every retry (the lease always sets one)."""
        assert self.state.delivery_id is not None
        return self.state.delivery_id


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
