"""The publisher against an HIE that misbehaves on purpose, in ways the stub does not.

Each HIE here is a few lines of aiohttp: redirects, answers too long to read, refusals
whose OperationOutcome is malformed or quotes the data, a 204 to a transaction (perhaps
applied), and a token endpoint that fails or drips its answer. Every scenario ends: no
delivery hangs past its lease, and nothing is sent anywhere but the configured HIE.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from publishing import quick_publishing
from sqlalchemy import select

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.bootstrap import Services, bootstrap
from gateway.publish import client as hie_client
from gateway.publish.client import HieClient
from gateway.publish.publisher import Publisher, PublishStats
from gateway.settings import Settings
from gateway.store.schema import dead_letters, hie_people, resources
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS

ACTOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")
PEOPLE = 3
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def transaction_response(sent: bytes, status: str = "200 OK") -> bytes:
    entries = orjson.loads(sent)["entry"]
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": status}} for _ in entries],
        }
    )


class Hie:
    """A one-route HIE (``POST /fhir``, ``POST /token``) whose answers a test chooses."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.tokens = 0
        self.answer: Handler = self.ok
        self.token_answer: Handler = self.token_ok
        app = web.Application()
        app.router.add_post("/fhir", self._fhir)
        app.router.add_post("/token", self._token)
        self.server = TestServer(app)

    async def _fhir(self, request: web.Request) -> web.StreamResponse:
        self.received.append(await request.read())
        return await self.answer(request)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.tokens += 1
        return await self.token_answer(request)

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=transaction_response(self.received[-1]), content_type="application/fhir+json"
        )

    async def token_ok(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)  # long enough for concurrent deliveries to ask at once
        return web.json_response({"access_token": f"t{self.tokens}", "expires_in": 300})

    def methods(self) -> list[list[str]]:
        return [[e["request"]["method"] for e in orjson.loads(b)["entry"]] for b in self.received]


@pytest.fixture
async def hie() -> AsyncIterator[Hie]:
    built = Hie()
    await built.server.start_server()
    yield built
    await built.server.close()


def fast(settings: Settings, url: str, **more: Any) -> Settings:
    """Quicker still than the publisher's other tests: a dripping answer is cut off at 0.5 s."""
    quicker = {"publish_backoff_cap_seconds": 0.05, "publish_lease_seconds": 4.0, "hie_read_timeout": 0.5}
    return quick_publishing(settings, url, **{**quicker, **more})


async def build(settings: Settings) -> Services:
    services = await bootstrap(settings)
    buffer = io.StringIO()
    WRITERS["gp"](population(PEOPLE, 5), buffer, random.Random("gp"), DefectPlan(0.0, 5))
    data = buffer.getvalue().encode()
    await services.ingestor.run("gp", adapter_for("gp").read(io.BytesIO(data)), "gp.csv")
    return services


@pytest.fixture
async def world(store_settings: Settings, hie: Hie) -> AsyncIterator[Services]:
    services = await build(fast(store_settings, str(hie.server.make_url("/fhir"))))
    try:
        yield services
    finally:
        await services.close()


async def publish(services: Services, within: float = 20.0) -> PublishStats:
    """Publish until idle; a publisher that does not get there in ``within`` seconds fails the test."""
    async with HieClient(services.settings) as client:
        return await asyncio.wait_for(Publisher(services, client).run(until_idle=True), within)


async def shareable(services: Services) -> list[str]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            select(resources.c.nhs_number).where(resources.c.resource_type == "Patient")
        )
        return sorted(r[0] for r in rows)


async def letters(services: Services) -> list[tuple[int, dict[str, Any]]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(select(dead_letters.c.status_code, dead_letters.c.outcome))
        return [(code, orjson.loads(outcome)) for code, outcome in rows]


async def test_a_redirect_is_not_followed_the_data_goes_nowhere_else(world: Services, hie: Hie) -> None:
    elsewhere = Hie()
    await elsewhere.server.start_server()
    try:
        target = str(elsewhere.server.make_url("/fhir"))

        async def moved(request: web.Request) -> web.StreamResponse:
            return web.Response(status=307, headers={"Location": target})

        hie.answer = moved
        stats = await publish(world)
        assert elsewhere.received == [], "a person's data was re-sent to the host a redirect named"
        assert (stats.published, stats.dead) == (0, PEOPLE)
        assert {code for code, _ in await letters(world)} == {307}
    finally:
        await elsewhere.server.close()


async def test_an_answer_too_long_to_read_is_not_read(
    world: Services, hie: Hie, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hie_client, "MAX_REPLY_BYTES", 64 * 1024)

    async def padded(request: web.Request) -> web.StreamResponse:
        # A valid transaction-response behind 1 MiB of whitespace: read whole, it would count.
        body = b" " * (1024 * 1024) + transaction_response(hie.received[-1])
        return web.Response(body=body, content_type="application/fhir+json")

    hie.answer = padded
    stats = await publish(world)
    assert (stats.published, stats.dead) == (0, PEOPLE)
    for code, outcome in await letters(world):
        assert code == 200
        assert "more than" in outcome["issue"][0]["diagnostics"]


async def test_a_malformed_refusal_is_a_dead_letter_not_a_retry_for_ever(world: Services, hie: Hie) -> None:
    async def refused(request: web.Request) -> web.StreamResponse:
        return web.json_response({"resourceType": "OperationOutcome", "issue": 5}, status=400)

    hie.answer = refused
    stats = await publish(world, within=10.0)
    assert (stats.dead, stats.retried) == (PEOPLE, 0)


async def test_a_refusal_that_quotes_the_data_is_not_kept(world: Services, hie: Hie) -> None:
    number = (await shareable(world))[0]

    async def quoting(request: web.Request) -> web.StreamResponse:
        issue = {
            "severity": "error",
            "code": "invalid",
            "details": {"coding": [{"system": "urn:x", "code": "BAD", "display": f"NHS {number}"}]},
            "expression": [f"Patient.identifier.where(value='{number}')", "Patient.identifier[0]"],
            "location": [f"/f:Patient/f:identifier[f:value/@value='{number}']"],
        }
        return web.json_response({"resourceType": "OperationOutcome", "issue": [issue]}, status=422)

    hie.answer = quoting
    await publish(world)
    kept = await letters(world)
    assert len(kept) == PEOPLE
    for _, outcome in kept:
        assert number not in orjson.dumps(outcome).decode()
        assert outcome["issue"] == [
            {
                "severity": "error",
                "code": "invalid",
                "expression": ["Patient.identifier[0]"],
                "details": {"coding": [{"system": "urn:x", "code": "BAD"}]},
            }
        ]


@pytest.mark.parametrize("answer", ["204", "200-not-a-bundle", "200-failed-entry"])
async def test_an_opt_out_after_an_unusable_2xx_retracts_what_it_may_have_applied(
    world: Services, hie: Hie, answer: str
) -> None:
    async def unusable(request: web.Request) -> web.StreamResponse:
        if answer == "204":
            return web.Response(status=204)
        if answer == "200-not-a-bundle":
            return web.Response(body=b"<html>ok</html>", content_type="text/html")
        return web.Response(body=transaction_response(hie.received[-1], "500 Oops"))

    hie.answer = unusable
    assert (await publish(world)).dead == PEOPLE
    number = (await shareable(world))[0]
    sent = [b for b in hie.received if number.encode() in b]
    await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "t1")
    hie.answer, hie.received = hie.ok, []
    stats = await publish(world)
    assert stats.retracted == 1, "the HIE may hold the person's data: the opt-out must retract it"
    deletes = [e["request"]["url"] for e in orjson.loads(hie.received[0])["entry"]]
    for entry in orjson.loads(sent[0])["entry"]:
        url = entry["request"]["url"]
        assert url in deletes or url.startswith("Patient?"), f"{url} was sent and is not retracted"


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hie-client.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
async def oauth_world(store_settings: Settings, hie: Hie, tmp_path: Path) -> AsyncIterator[Services]:
    settings = fast(
        store_settings,
        str(hie.server.make_url("/fhir")),
        hie_auth="oauth2",
        hie_token_url=str(hie.server.make_url("/token")),
        hie_client_id="concord",
        hie_key_file=key_file(tmp_path),
        hie_key_id="k1",
        publish_lease_seconds=4.0,
    )
    services = await build(settings)
    try:
        yield services
    finally:
        await services.close()


async def test_a_token_endpoint_that_drips_cannot_hold_a_delivery_past_its_lease(
    oauth_world: Services, hie: Hie
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "999"})
        await response.prepare(request)
        for _ in range(999):
            await response.write(b" ")
            await asyncio.sleep(0.2)  # each read well within hie_read_timeout: only a deadline ends it
        return response

    hie.token_answer = drip
    stop = asyncio.Event()
    async with HieClient(oauth_world.settings) as client:
        run = asyncio.create_task(Publisher(oauth_world, client).run(stop=stop))
        await asyncio.sleep(0.5)
        stop.set()
        # Stopping waits for the deliveries in hand, each bounded by its lease (4 s, less 2 s).
        stats = await asyncio.wait_for(run, 6.0)
    assert stats.published == 0
    assert hie.received == [], "nothing goes out without a token"
    assert hie.tokens == 1, "deliveries waiting for a token share one request"


async def test_a_token_endpoint_answering_nonsense_is_retried_quietly(
    oauth_world: Services, hie: Hie, caplog: pytest.LogCaptureFixture
) -> None:
    answers = [
        web.Response(status=500, text="<html>down</html>", content_type="text/html"),
        web.Response(status=200, text="<html>login</html>", content_type="text/html"),
        web.json_response(["access_token"]),
        web.json_response({"access_token": {"nested": 1}}),
    ]

    async def nonsense(request: web.Request) -> web.StreamResponse:
        if answers:
            return answers.pop(0)
        return web.json_response({"access_token": "good", "expires_in": "soon"})

    hie.token_answer = nonsense
    with caplog.at_level(logging.WARNING, logger="gateway.publish"):
        stats = await publish(oauth_world)
    assert stats.published == PEOPLE
    assert stats.retried >= 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a token failure is not a crash"
    async with oauth_world.engine.connect() as conn:
        states = set((await conn.execute(select(hie_people.c.state))).scalars())
    assert states == {"published"}


async def test_with_a_short_lease_a_dripping_hie_still_cannot_outlast_it(
    store_settings: Settings, hie: Hie
) -> None:
    """A lease of 2 s left no room for the 2 s safety margin: the deadline came out at 0 or less,
    which aiohttp reads as no deadline at all, and an HIE that drips held the person past the lease."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/fhir+json", "Content-Length": "999"}
        )
        await response.prepare(request)
        for _ in range(999):
            await response.write(b" ")
            await asyncio.sleep(0.2)
        return response

    hie.answer = drip
    settings = fast(
        store_settings, str(hie.server.make_url("/fhir")), publish_lease_seconds=2.0, hie_read_timeout=1.0
    )
    services = await build(settings)
    try:
        stop = asyncio.Event()
        async with HieClient(services.settings) as client:
            run = asyncio.create_task(Publisher(services, client).run(stop=stop))
            while not hie.received:
                await asyncio.sleep(0.01)
            stop.set()
            stats = await asyncio.wait_for(run, 3.0)
        assert stats.published == 0
        assert stats.retried == PEOPLE, "each request was cut off by its deadline, inside the lease"
    finally:
        await services.close()


async def test_an_opt_out_after_a_publisher_died_mid_request_retracts_what_it_sent(
    world: Services, hie: Hie
) -> None:
    """A publisher killed between sending a person's view and recording the answer left nothing
    recorded: the person counted as never published, and an opt-out then deleted nothing."""
    arrived = asyncio.Event()

    async def dies(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(3600)  # the publisher is killed before any answer
        raise AssertionError("unreachable")

    hie.answer = dies
    only = world.settings.model_copy(update={"publish_concurrency": 1})
    async with HieClient(only) as client:
        killed = asyncio.create_task(Publisher(world, client).run(until_idle=True))
        await asyncio.wait_for(arrived.wait(), 10)
        killed.cancel()  # as kill -9: nothing after the send runs
        with pytest.raises(asyncio.CancelledError):
            await killed
    sent = hie.received[0]
    number = next(n for n in await shareable(world) if n.encode() in sent)
    async with world.engine.begin() as conn:  # its lease lapses
        await conn.execute(hie_people.update().values(lease_until=None, lease_owner=None))
    await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "t1")
    hie.answer, hie.received = hie.ok, []
    await publish(world)
    retractions = [orjson.loads(b) for b in hie.received if b'"DELETE"' in b]
    deletes = {e["request"]["url"] for r in retractions for e in r["entry"]}
    for entry in orjson.loads(sent)["entry"]:
        url = entry["request"]["url"]
        assert url in deletes or url.startswith("Patient?"), f"{url} was sent and is not retracted"
    assert f"Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{number}" in deletes


async def test_an_opt_out_after_a_refusal_retracts_nothing_the_hie_never_held(
    world: Services, hie: Hie
) -> None:
    """A 4xx says the transaction was not applied: an opt-out after it sends no DELETEs (which
    would tell the HIE of a person it never held)."""

    async def refused(request: web.Request) -> web.StreamResponse:
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
        return web.json_response(outcome, status=422)

    hie.answer = refused
    assert (await publish(world)).dead == PEOPLE
    number = (await shareable(world))[0]
    await world.register.opt_out(number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, "t1")
    hie.answer, hie.received = hie.ok, []
    stats = await publish(world)
    assert (stats.retracted, hie.received) == (0, [])
