"""The publisher against the real HIE stub: what arrives, what is retracted, what survives faults.

After every scenario the end state is audited the same way: every shareable
person's current view is at the HIE exactly once at its latest content, no
opted-out person's data is there, and dead letters hold exactly what the HIE
refused.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from publishing import quick_publishing
from sqlalchemy import select

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.bootstrap import Services, bootstrap
from gateway.decisions import StoreDecider
from gateway.publish.client import HieClient
from gateway.publish.publisher import Publisher, backfill
from gateway.settings import Settings
from gateway.store import outbox as box
from gateway.store.schema import dead_letters, resources
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS

ACTOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")
PEOPLE = 12


@pytest.fixture
async def world(store_settings: Settings, hie: TestServer) -> AsyncIterator[Services]:
    services = await bootstrap(quick_publishing(store_settings, str(hie.make_url("/fhir"))))
    buffer = io.StringIO()
    WRITERS["gp"](population(PEOPLE, 11), buffer, random.Random("gp"), DefectPlan(0.0, 11))
    # Opt-out codes in the synthetic extract would make who is shareable vary: strip them.
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({**r, "opt_out_code": ""} for r in rows)
    data = out.getvalue().encode()
    await services.ingestor.run("gp", adapter_for("gp").read(io.BytesIO(data)), "gp.csv")
    try:
        yield services
    finally:
        await services.close()


async def stub(hie: TestServer, method: str, path: str, body: Any = None) -> Any:
    async with ClientSession() as session, session.request(method, hie.make_url(path), json=body) as response:
        return await response.json(content_type=None)


async def publish(services: Services, until_idle: bool = True) -> Any:
    async with HieClient(services.settings) as client:
        return await Publisher(services, client).run(until_idle=until_idle)


async def people(services: Services) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            select(resources.c.nhs_number, resources.c.resource_type, resources.c.id, resources.c.content)
        )
        out: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for number, rtype, rid, content in rows:
            out.setdefault(number, []).append((rtype, rid, orjson.loads(content)))
        return out


def _bare(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


async def assert_hie_matches(services: Services, hie: TestServer, opted_out: set[str]) -> None:
    """Every shareable person at the HIE exactly once at the latest content; nobody opted out."""
    state = await stub(hie, "GET", "/_stub/state")
    held = state["resources"]
    for number, entries in (await people(services)).items():
        patients = await stub(
            hie, "GET", f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{number}"
        )
        found = [e["resource"] for e in patients.get("entry", [])]
        if number in opted_out:
            assert found == [], "an opted-out person's Patient is at the HIE"
            for rtype, rid, _ in entries:
                assert rid not in held.get(rtype, {}), f"an opted-out person's {rtype} is at the HIE"
            continue
        assert len(found) == 1, "each shareable person is at the HIE exactly once"
        for rtype, rid, content in entries:
            at_hie = await stub(hie, "GET", f"/fhir/{rtype}/{rid}")
            if rtype == "Patient":
                at_hie = found[0]
            assert _bare(at_hie) == _bare(content), f"{rtype} at the HIE is not the latest"


async def test_publishes_every_view_then_retracts_and_republishes(world: Services, hie: TestServer) -> None:
    everyone = await people(world)
    number = sorted(everyone)[0]
    await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "t1")
    stats = await publish(world)
    assert stats.published == len(everyone) - 1
    await assert_hie_matches(world, hie, {number})

    again = await publish(world)
    assert (again.published, again.retracted) == (0, 0), "nothing changed, nothing is sent"

    await world.register.withdraw(number, None, Authority.LETTER, ACTOR, "t2")
    assert (await publish(world)).published == 1
    await assert_hie_matches(world, hie, set())

    other = sorted(everyone)[1]
    await world.register.opt_out(other, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "t3")
    assert (await publish(world)).retracted == 1
    await assert_hie_matches(world, hie, {other})


async def test_a_national_opt_out_does_not_stop_direct_care_publication(
    world: Services, hie: TestServer
) -> None:
    number = sorted(await people(world))[0]
    await world.register.opt_out(number, OptOutKind.NATIONAL, Authority.LETTER, ACTOR, "t1")
    await publish(world)
    await assert_hie_matches(world, hie, set())


async def test_survives_500s_429s_resets_and_hangs(world: Services, hie: TestServer) -> None:
    await stub(
        hie,
        "POST",
        "/_stub/faults",
        {
            "error_rate": 0.25,
            "throttle_rate": 0.15,
            "retry_after": 0,
            "reset_rate": 0.1,
            "hang_rate": 0.05,
            "delay_seconds": 2.0,
            "seed": 3,
        },
    )
    stats = await publish(world)
    assert stats.retried > 0 and stats.dead == 0
    await stub(hie, "POST", "/_stub/faults", {})
    await assert_hie_matches(world, hie, set())
    state = await stub(hie, "GET", "/_stub/state")
    assert any(n > 1 for n in state["request_ids"].values()), "a retry reuses its delivery's X-Request-ID"


async def test_hie_down_for_a_while_then_everything_arrives(world: Services, hie: TestServer) -> None:
    await stub(hie, "POST", "/_stub/faults", {"down_requests": 30})
    await publish(world)
    await stub(hie, "POST", "/_stub/faults", {})
    await assert_hie_matches(world, hie, set())


async def test_refused_transactions_are_dead_letters_with_the_hies_reason(
    world: Services, hie: TestServer
) -> None:
    await stub(hie, "POST", "/_stub/faults", {"fail_entry_rate": 1.0})
    stats = await publish(world)
    everyone = await people(world)
    assert stats.dead == len(everyone)
    async with world.engine.connect() as conn:
        letters = (await conn.execute(select(dead_letters))).mappings().all()
        assert await box.due_or_waiting(conn) == 0, "a dead letter is not retried forever"
    assert {r["nhs_number"] for r in letters} == set(everyone)
    assert all(r["status_code"] == 400 and "OperationOutcome" in r["outcome"] for r in letters)

    await stub(hie, "POST", "/_stub/faults", {})
    async with world.engine.begin() as conn:
        for letter in letters:
            await box.resolve_dead_letter(conn, letter["id"], letter["created_at"])
    assert (await publish(world)).published == len(everyone)
    await assert_hie_matches(world, hie, set())


async def test_two_publishers_share_the_outbox_without_losing_or_doubling(
    world: Services, hie: TestServer
) -> None:
    await stub(hie, "POST", "/_stub/faults", {"error_rate": 0.2, "seed": 5})
    async with HieClient(world.settings) as c1, HieClient(world.settings) as c2:
        first, second = Publisher(world, c1), Publisher(world, c2)
        a, b = await asyncio.gather(first.run(until_idle=True), second.run(until_idle=True))
    everyone = await people(world)
    assert a.published + b.published == len(everyone), "each person delivered once, by one publisher"
    await stub(hie, "POST", "/_stub/faults", {})
    await assert_hie_matches(world, hie, set())


async def test_backfill_republishes_everyone_to_a_new_hie(world: Services, hie: TestServer) -> None:
    await publish(world)
    await stub(hie, "POST", "/_stub/reset")
    # A new (empty) HIE: what concord believes it holds is wrong, so the backfill sends full views.
    assert await backfill(world, page=5) == len(await people(world))
    await publish(world)
    await assert_hie_matches(world, hie, set())


async def test_an_opt_out_whose_caches_are_not_yet_told_still_retracts(
    world: Services, hie: TestServer
) -> None:
    """The gap between an opt-out's commit and its cache invalidation: the publisher decides from the store."""
    await publish(world)
    number = sorted(await people(world))[0]
    hie_requester = Requester(RequesterKind.HIE, world.settings.hie_ods, "publisher")
    assert (await world.decider.decide(number, "direct-care", hie_requester)).permitted  # a cached permit
    real_changed = world.register.decider.changed

    async def not_yet(epochs: Any) -> bool:
        return True  # the commit happened; telling the caches has not

    world.register.decider.changed = not_yet  # type: ignore[method-assign]
    try:
        await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "gap")
        if type(world.decider) is not StoreDecider:  # PostgreSQL without Redis has no cache to be stale
            assert (await world.decider.decide(number, "direct-care", hie_requester)).permitted, (
                "cache is stale"
            )
        await publish(world)
    finally:
        world.register.decider.changed = real_changed  # type: ignore[method-assign]
    await assert_hie_matches(world, hie, {number})
