"""The publisher's per-claim store work: one lease statement, shared reads, grouped finishes, pruning,
and what the store records of a delivery whose answer never came (for a later retraction).

Run on both stores (``services`` is parametrised over SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Reason, Requester, RequesterKind
from gateway.bootstrap import Services
from gateway.publish.batch import ClaimDecider, PersonLoader
from gateway.publish.publisher import Publisher, backfill
from gateway.store import outbox as box
from gateway.store.resources import read_for_person
from gateway.store.schema import hie_people, outbox
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS
from mappings.nhs_number import check_digit

NOW = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
HIE = Requester(RequesterKind.HIE, "HIE", "publisher")
ACTOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")


def numbers(count: int) -> list[str]:
    """Synthetic NHS numbers (999 range, valid check digits)."""
    out = []
    for n in range(999_000_000, 999_999_999):
        digit = check_digit(str(n))
        if digit is not None:
            out.append(f"{n}{digit}")
            if len(out) == count:
                return out
    raise AssertionError("not enough numbers")


async def queue(services: Services, people: list[str], at: datetime = NOW) -> None:
    async with services.engine.begin() as conn:
        await box.enqueue_person(conn, people, at, "test")


async def test_one_statement_leases_free_people_and_keeps_a_retrys_delivery_id(services: Services) -> None:
    a, b, c = numbers(3)
    async with services.engine.begin() as conn:
        first = await box.lease_people(conn, [a, b], "one", NOW, LATER, {a: "id-a1", b: "id-b1"})
    assert {n: s.delivery_id for n, s in first.items()} == {a: "id-a1", b: "id-b1"}
    assert first[a].state == "none" and first[a].published == [] and first[a].attempts == 0

    async with services.engine.begin() as conn:
        # b is held by "one"; a and c are not yet (a is released after a failed attempt).
        await box.retry_later(conn, a, [], NOW, "HTTP 500")
        second = await box.lease_people(conn, [a, b, c], "two", NOW, LATER, {a: "x", b: "y", c: "id-c"})
    assert set(second) == {a, c}, "a live lease of another publisher is not taken"
    assert second[a].delivery_id == "id-a1", "a retry reuses its delivery's X-Request-ID"
    assert second[a].attempts == 1
    assert second[c].delivery_id == "id-c"

    async with services.engine.begin() as conn:
        lapsed = await box.lease_people(conn, [b], "two", LATER + timedelta(seconds=1), LATER, {b: "z"})
    assert lapsed[b].delivery_id == "id-b1", "a lapsed lease is taken over with the delivery it was doing"


async def test_claim_leaves_the_rows_of_people_being_delivered(services: Services) -> None:
    a, b = numbers(2)
    await queue(services, [a, b, a])
    async with services.engine.begin() as conn:
        claimed = await box.claim(conn, "one", NOW, LATER, 10, skip_people={a})
    assert set(claimed) == {b}
    async with services.engine.begin() as conn:
        rest = await box.claim_rest(conn, [a], "one", NOW, LATER)
    assert len(rest[a]) == 2, "once leased, a person's rows are all taken together"


async def test_finishing_many_deliveries_records_each_persons_own_state(services: Services) -> None:
    a, b = numbers(2)
    await queue(services, [a, b])
    async with services.engine.begin() as conn:
        claimed = await box.claim(conn, "one", NOW, LATER, 10)
        await box.lease_people(conn, claimed, "one", NOW, LATER, {a: "da", b: "db"})
        await box.finish(
            conn,
            [
                box.Finished(a, claimed[a], "published", ["Patient/p1/_history/2"]),
                box.Finished(b, claimed[b], "retracted", []),
            ],
            NOW,
        )
    async with services.engine.connect() as conn:
        rows = {r.nhs_number: r for r in await conn.execute(select(hie_people))}
        statuses = {s for (s,) in await conn.execute(select(outbox.c.status))}
    assert rows[a].state == "published" and orjson.loads(rows[a].published) == ["Patient/p1/_history/2"]
    assert rows[b].state == "retracted" and orjson.loads(rows[b].published) == []
    assert all(r.lease_owner is None and r.delivery_id is None for r in rows.values())
    assert statuses == {"sent"}


async def test_pruning_deletes_only_rows_sent_before_the_cut(services: Services) -> None:
    a, b, c = numbers(3)
    await queue(services, [a, b, c])
    async with services.engine.begin() as conn:
        claimed = await box.claim(conn, "one", NOW, LATER, 10)
        await box.finish(conn, [box.Finished(a, claimed[a], "published", [])], NOW - timedelta(hours=2))
        await box.finish(conn, [box.Finished(b, claimed[b], "published", [])], NOW)
        await box.release_rows(conn, claimed[c], None)
        assert await box.prune_sent(conn, NOW - timedelta(hours=1)) == 1
    async with services.engine.connect() as conn:
        left = {n for (n,) in await conn.execute(select(outbox.c.nhs_number))}
    assert left == {b, c}, "recent and waiting rows stay"


async def test_a_claims_decisions_come_from_the_store_as_it_is_after_the_claim(services: Services) -> None:
    a, b, stranger = numbers(3)
    await services.register.opt_out(a, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "req-1")
    decider = await ClaimDecider.read(services.engine, [a, b])
    assert not (await decider.decide(a, "direct-care", HIE)).permitted
    assert (await decider.decide(b, "direct-care", HIE)).permitted
    missing = await decider.decide(stranger, "direct-care", HIE)
    assert not missing.permitted and missing.reason == Reason.FACTS_UNAVAILABLE, "not read: deny"


async def test_a_claim_whose_register_cannot_be_read_denies_everyone() -> None:
    (a,) = numbers(1)
    unreachable = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")  # nothing listens
    try:
        decider = await ClaimDecider.read(unreachable, [a])
    finally:
        await unreachable.dispose()
    assert decider.facts is None
    decision = await decider.decide(a, "direct-care", HIE)
    assert not decision.permitted and decision.reason == Reason.FACTS_UNAVAILABLE


@pytest.fixture
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(services.engine.sync_engine, "before_cursor_execute", count)
    yield seen
    event.remove(services.engine.sync_engine, "before_cursor_execute", count)


async def test_loads_asked_for_together_are_one_read_with_each_persons_own_view(
    services: Services, statements: list[str]
) -> None:
    await ingest_three(services)
    async with services.engine.connect() as conn:
        people = await box.people_after(conn, "", 3)
        expected = [await read_for_person(conn, n) for n in people]
    statements.clear()
    loader = PersonLoader(services.engine)
    loaded = await asyncio.gather(*(loader.load(n) for n in people))
    assert loaded == expected
    assert len([s for s in statements if "FROM resources" in s]) == 1


async def ingest_three(services: Services) -> None:
    buffer = io.StringIO()
    WRITERS["gp"](population(3, 5), buffer, random.Random("gp"), DefectPlan(0.0, 5))
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({**r, "opt_out_code": ""} for r in rows)
    await services.ingestor.run("gp", adapter_for("gp").read(io.BytesIO(out.getvalue().encode())), "gp.csv")


class NoHie:
    """A client that must not be called."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def transaction(
        self, bundle: bytes, request_id: str, deadline_seconds: float | None = None
    ) -> object:
        self.sent.append(request_id)
        raise AssertionError("sent with too little of its lease left")


async def test_a_delivery_that_waited_too_long_for_a_slot_goes_back_unsent(services: Services) -> None:
    await ingest_three(services)
    async with services.engine.begin() as conn:
        await conn.execute(delete(outbox))  # the ingest's rows: one backfill row per person instead
    await backfill(services)
    clock = [NOW]
    client = NoHie()
    publisher = Publisher(services, client, clock=lambda: clock[0])  # type: ignore[arg-type]
    claimed = await publisher._claim(10)
    assert len(claimed) == 3
    clock[0] = NOW + timedelta(seconds=services.settings.publish_lease_seconds - 1)  # nearly lapsed
    await publisher._deliver_all(claimed)
    assert client.sent == []
    async with services.engine.connect() as conn:
        leases = [r.lease_owner for r in await conn.execute(select(hie_people))]
        assert await box.due_or_waiting(conn) == 3
        rows = (await conn.execute(select(outbox.c.status, outbox.c.available_at))).all()
    assert leases == [None, None, None], "the people are free for whoever sends next"
    assert rows == [("pending", None)] * 3, "due again at once"


class SlowHie:
    """An HIE that never answers within the deadline it is given: the client gives up, as aiohttp would."""

    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    async def transaction(
        self, bundle: bytes, request_id: str, deadline_seconds: float | None = None
    ) -> object:
        from gateway.publish.client import HieUnreachable

        self.deadlines.append(deadline_seconds)
        raise HieUnreachable("TimeoutError")


async def test_a_request_to_the_hie_ends_before_the_lease_it_was_sent_under(services: Services) -> None:
    """A hung HIE must not keep a request in flight after another publisher could lease the person."""
    await ingest_three(services)
    clock = [NOW]
    client = SlowHie()
    publisher = Publisher(services, client, clock=lambda: clock[0])  # type: ignore[arg-type]
    claimed = await publisher._claim(10)
    clock[0] = NOW + timedelta(seconds=5)
    await publisher._deliver_all(claimed)
    lease = services.settings.publish_lease_seconds
    assert len(client.deadlines) == 3
    assert all(d is not None and 0 < d <= lease - 5 - 1 for d in client.deadlines), client.deadlines
    async with services.engine.connect() as conn:
        assert await box.due_or_waiting(conn) > 0, "timed out deliveries are retried, not dropped"


class HangingHie:
    """Answers every transaction at once, except those for ``hung`` people: they wait for ``release``."""

    def __init__(self) -> None:
        self.numbers: list[str] = []
        self.hung: set[str] = set()
        self.release = asyncio.Event()
        self.answered: list[str] = []

    async def transaction(
        self, bundle: bytes, request_id: str, deadline_seconds: float | None = None
    ) -> object:

        text = bundle.decode()
        if any(number in text for number in self.hung):
            await asyncio.wait_for(self.release.wait(), deadline_seconds)
        self.answered.extend(n for n in self.numbers if n in text)
        return all_ok(bundle)


def all_ok(bundle: bytes) -> object:
    """The HIE's answer when every entry of ``bundle`` succeeded: one 200 per request."""
    from gateway.publish.client import HieResponse

    entries = [{"response": {"status": "200 OK"}} for _ in orjson.loads(bundle)["entry"]]
    reply = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    return HieResponse(200, orjson.dumps(reply), None)


async def test_people_waiting_on_a_hung_hie_hold_up_no_later_claim(services: Services) -> None:
    """Two claims whose only person hangs at the HIE leave room for a third (no head-of-line blocking)."""
    await ingest_three(services)
    async with services.engine.begin() as conn:
        people = sorted({n for (n,) in await conn.execute(select(outbox.c.nhs_number))})
        await conn.execute(delete(outbox))
    first, second, third = people
    client = HangingHie()
    client.numbers, client.hung = people, {first, second}
    publisher = Publisher(services, client)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(publisher.run(stop=stop))
    try:
        for number in (first, second):
            await queue(services, [number])
            publisher.wake.set()
            for _ in range(200):  # until its claim is out, hanging at the HIE
                if number in publisher._in_flight:
                    break
                await asyncio.sleep(0.01)
            assert number in publisher._in_flight
        await queue(services, [third])
        publisher.wake.set()
        for _ in range(500):
            if third in client.answered:
                break
            await asyncio.sleep(0.01)
        assert client.answered == [third], "delivered while the two earlier claims still hang"
        client.release.set()
        for _ in range(500):
            if len(client.answered) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(client.answered) == people
    finally:
        stop.set()
        publisher.wake.set()
        await running


class LostAnswerHie:
    """An HIE that applies each transaction but whose answer never arrives (then, later, answers)."""

    renews_tokens = False

    def __init__(self) -> None:
        self.answering = False
        self.bundles: list[dict[str, object]] = []

    async def transaction(
        self, bundle: bytes, request_id: str, deadline_seconds: float | None = None
    ) -> object:
        from gateway.publish.client import HieUnreachable

        self.bundles.append(orjson.loads(bundle))
        if not self.answering:
            raise HieUnreachable("TimeoutError")
        return all_ok(bundle)


async def test_an_opt_out_after_an_unanswered_publication_retracts_what_it_may_have_applied(
    services: Services,
) -> None:
    """The HIE applied the publication but its answer was lost; the person then opted out. Nothing
    was confirmed, yet the retraction must delete what the HIE may hold."""
    await ingest_three(services)
    clock = [NOW]
    hie = LostAnswerHie()
    publisher = Publisher(services, hie, clock=lambda: clock[0])  # type: ignore[arg-type]
    await publisher._deliver_all(await publisher._claim(10))
    assert len(hie.bundles) == 3
    async with services.engine.connect() as conn:
        people = {r.nhs_number: r for r in await conn.execute(select(hie_people))}
    number = sorted(people)[0]
    pattern = f"Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{number}"
    (first,) = [b for b in hie.bundles if any(e["request"]["url"] == pattern for e in b["entry"])]
    applied = {e["request"]["url"] for e in first["entry"]} - {pattern}
    assert applied, "the publication carried more than the Patient"
    maybe_held = {ref.split("/_history/")[0] for ref in orjson.loads(people[number].published)}
    assert people[number].state == "none"
    assert maybe_held == applied | {f"Patient/{services.mapper.ids.patient(number)}"}, "what it may hold"

    await services.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "lost")
    hie.answering, hie.bundles = True, []
    clock[0] = NOW + timedelta(hours=1)  # every retry due
    await publisher._deliver_all(await publisher._claim(10))
    (retraction,) = [b for b in hie.bundles if any(e["request"]["url"] == pattern for e in b["entry"])]
    methods = {e["request"]["method"] for e in retraction["entry"]}
    assert methods == {"DELETE"}, "the opted-out person's bundle only deletes"
    deleted = {e["request"]["url"] for e in retraction["entry"]}
    assert deleted == applied | {pattern}, "everything the HIE may hold is deleted"
    async with services.engine.connect() as conn:
        after = (await conn.execute(select(hie_people).where(hie_people.c.nhs_number == number))).one()
    assert (after.state, orjson.loads(after.published)) == ("retracted", [])
