"""A client's keys at ``POST /token``: a JWK Set URL served by a small local aiohttp server (fetched,
kept, fetched again for a new kid, failures refused), and rolling registered keys with
``concord clients set-keys`` without changing the client_id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from smart_clients import Registered, form, invoke, probe_app, refused, register, serving

from gateway.api import client_keys
from gateway.api.assertion import public_jwk
from gateway.api.client_keys import ClientKeys, url_registration
from gateway.bootstrap import Services
from gateway.settings import Settings


@dataclass
class KeyServer:
    """Serves ``body`` at /jwks.json with ``headers``; counts the requests it answers."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    requests: int = 0
    server: TestServer | None = None

    def serve(self, *keys: ec.EllipticCurvePrivateKey, **extra: Any) -> None:
        jwks = [{**public_jwk(k.public_key(), "ES384"), **extra} for k in keys]
        self.body = orjson.dumps({"keys": jwks})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks.json"))

    async def handle(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status in (301, 302):
            raise web.HTTPFound("/elsewhere.json")
        return web.Response(body=self.body, status=self.status, headers=self.headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def keys_server() -> AsyncIterator[KeyServer]:
    state = KeyServer()
    app = web.Application()
    app.router.add_get("/jwks.json", state.handle)
    app.router.add_get("/elsewhere.json", state.handle)
    state.server = TestServer(app, host="127.0.0.1")
    await state.server.start_server()
    yield state
    await state.server.close()


@dataclass
class Setup:
    client: httpx.AsyncClient
    clock: Clock
    keys: ClientKeys


@pytest.fixture
async def setup(services: Services) -> AsyncIterator[Setup]:
    async with serving(probe_app(services=services)) as c:
        keys: ClientKeys = c.app.state.client_keys  # type: ignore[attr-defined]
        clock = Clock()
        keys.clock = clock
        yield Setup(c, clock, keys)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


async def by_url(services: Services, key: ec.EllipticCurvePrivateKey, url: str) -> Registered:
    """A client registered by its JWK Set URL, signing with ``key``."""
    return await register(services, key, "ES384", jwks=url_registration(url))


async def served(
    services: Services, keys_server: KeyServer, cache_control: str | None = None
) -> tuple[ec.EllipticCurvePrivateKey, Registered]:
    """A new key, its set served at ``keys_server`` (with ``cache_control``), a client registered by the URL."""
    key = new_key()
    keys_server.serve(key)
    if cache_control is not None:
        keys_server.headers = {"Cache-Control": cache_control}
    return key, await by_url(services, key, keys_server.url)


def signer(client: Registered, key: ec.EllipticCurvePrivateKey) -> Registered:
    return Registered(
        client.client_id, client.name, key, public_jwk(key.public_key(), "ES384")["kid"], "ES384"
    )


async def token_status(setup: Setup, caller: Registered) -> int:
    return (await setup.client.post("/token", data=form(caller.assertion()))).status_code


# --- a JWK Set URL ----------------------------------------------------------------------------------


async def test_a_set_at_a_url_is_fetched_once_and_kept(
    services: Services, setup: Setup, keys_server: KeyServer
) -> None:
    _, caller = await served(services, keys_server, "max-age=120")
    response = await setup.client.post("/token", data=form(caller.assertion()))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert (
        await setup.client.get("/_probe", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    for _ in range(3):
        assert await token_status(setup, caller) == 200
    assert keys_server.requests == 1
    setup.clock.now += 119
    assert await token_status(setup, caller) == 200
    assert keys_server.requests == 1
    setup.clock.now += 2  # past its max-age: fetched again
    assert await token_status(setup, caller) == 200
    assert keys_server.requests == 2


async def test_a_new_kid_fetches_the_set_again_at_most_once_a_minute(
    services: Services, setup: Setup, keys_server: KeyServer
) -> None:
    old, new = new_key(), new_key()
    keys_server.serve(old)
    keys_server.headers = {"Cache-Control": "max-age=3600"}
    caller = await by_url(services, old, keys_server.url)
    assert await token_status(setup, caller) == 200
    keys_server.serve(old, new)  # the client publishes its next key, then signs with it
    rolled = signer(caller, new)
    setup.clock.now += 30
    assert "kid" in await refused(setup.client, form(rolled.assertion()), "invalid_client")
    assert "kid" in await refused(setup.client, form(rolled.assertion()), "invalid_client")
    assert keys_server.requests == 1  # fetched under a minute ago: not again, however many ask
    setup.clock.now += 31
    assert await token_status(setup, rolled) == 200
    assert await token_status(setup, caller) == 200
    assert keys_server.requests == 2
    # An unknown kid does not make every request a fetch.
    stranger = Registered(caller.client_id, caller.name, new_key(), "no-such-kid", "ES384")
    for _ in range(5):
        await refused(setup.client, form(stranger.assertion()), "invalid_client")
    assert keys_server.requests == 2


async def test_a_failed_refetch_for_an_unknown_kid_keeps_the_kept_keys(
    services: Services, setup: Setup, keys_server: KeyServer
) -> None:
    # The kid is read before the signature is checked: anyone can send iss=victim with a bogus kid.
    # If the victim's key server blips then, its kept keys must stay usable until their time is up.
    _, caller = await served(services, keys_server, "max-age=3600")
    assert await token_status(setup, caller) == 200
    keys_server.status = 503
    setup.clock.now += client_keys.REFETCH_SECONDS + 1
    attacker = Registered(caller.client_id, caller.name, new_key(), "no-such-kid", "ES384")
    assert "kid" in await refused(setup.client, form(attacker.assertion()), "invalid_client")
    assert keys_server.requests == 2  # the refetch was made, and failed
    assert await token_status(setup, caller) == 200  # the victim is not locked out
    await refused(setup.client, form(attacker.assertion()), "invalid_client")
    assert keys_server.requests == 2  # the failed attempt moved the refetch clock
    # Kept keys are not used once their time is up: then the failure is the answer.
    setup.clock.now += 3600
    assert "could not be fetched" in await refused(setup.client, form(caller.assertion()), "invalid_client")
    assert keys_server.requests == 3


async def test_a_jku_equal_to_the_registered_url_is_accepted_any_other_refused(
    services: Services, setup: Setup, keys_server: KeyServer
) -> None:
    # SMART Backend Services: a jku, when present, must match the client's registered JWKS URL.
    key, caller = await served(services, keys_server)
    sent = await setup.client.post("/token", data=form(caller.assertion(headers={"jku": keys_server.url})))
    assert sent.status_code == 200, sent.text
    for other in ("https://attacker.example/jwks.json", keys_server.url + "?x=1"):
        assertion = caller.assertion(headers={"jku": other})
        assert "jku" in await refused(setup.client, form(assertion), "invalid_client")
    assert keys_server.requests == 1  # the jku itself is never fetched
    for header in ({"x5u": keys_server.url}, {"jwk": public_jwk(key.public_key(), "ES384")}):
        assertion = caller.assertion(headers={"jku": keys_server.url, **header})
        assert "names a key" in await refused(setup.client, form(assertion), "invalid_client")


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("status", "could not be fetched"),
        ("redirect", "could not be fetched"),
        ("too-large", "could not be fetched"),
        ("not-json", "unusable"),
        ("private", "unusable"),
        ("slow", "could not be fetched"),
    ],
)
async def test_a_failed_fetch_is_invalid_client_never_a_500(
    services: Services,
    setup: Setup,
    keys_server: KeyServer,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
    expected: str,
) -> None:
    key = new_key()
    keys_server.serve(key)
    if problem == "status":
        keys_server.status = 500
    elif problem == "redirect":
        keys_server.status = 302  # the target would answer: redirects are not followed
    elif problem == "too-large":
        keys_server.body = b'{"keys": [], "pad": "' + b"x" * client_keys.MAX_JWKS_BYTES + b'"}'
    elif problem == "not-json":
        keys_server.body = b"<html>\xff</html>"
    elif problem == "private":
        private = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
        keys_server.body = orjson.dumps({"keys": [{**private, "kid": "k"}]})
    else:
        monkeypatch.setattr(client_keys, "FETCH_SECONDS", 0.2)
        keys_server.delay = 1.0
    caller = await by_url(services, key, keys_server.url)
    assert expected in await refused(setup.client, form(caller.assertion()), "invalid_client")
    fetched = keys_server.requests
    await refused(setup.client, form(caller.assertion()), "invalid_client")
    assert keys_server.requests == fetched  # a failure is remembered for a few seconds
    keys_server.status, keys_server.delay = 200, 0.0
    keys_server.serve(key)
    setup.clock.now += client_keys.RETRY_SECONDS
    assert await token_status(setup, caller) == 200


async def test_a_url_that_may_not_be_fetched_is_refused_without_a_request(
    services: Services, setup: Setup
) -> None:
    # Written to the row directly (the CLI would refuse it): plain http to a host not loopback.
    key = new_key()
    caller = await register(
        services, key, "ES384", jwks=orjson.dumps({"jwks_uri": "http://keys.example/jwks"}).decode()
    )
    assert "could not be fetched" in await refused(setup.client, form(caller.assertion()), "invalid_client")
    assert setup.keys.fetches == 1


# --- the command line -------------------------------------------------------------------------------


def jwks_file(path: Path, *keys: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(orjson.dumps({"keys": [public_jwk(k.public_key(), "ES384") for k in keys]}))
    return str(path)


def statuses(data_dir: Path, *callers: Registered) -> list[int]:
    """The /token status for an assertion of each caller, on the CLI's embedded store."""

    async def use() -> list[int]:
        async with serving(probe_app(Settings(data_dir=data_dir))) as c:
            return [(await c.post("/token", data=form(x.assertion()))).status_code for x in callers]

    return asyncio.run(use())


def test_set_keys_rolls_a_clients_keys_in_place(cli_env: Path, tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    args = ["clients", "add", "--name", "epr", "--ods-code", "RX1", "--role", "provider"]
    added = invoke(*args, "--scopes", "system/*.read", "--jwks", jwks_file(tmp_path / "old.json", old))
    assert added.exit_code == 0, added.output
    client_id = added.stdout.strip()
    with_old = Registered(client_id, "epr", old, public_jwk(old.public_key(), "ES384")["kid"], "ES384")
    with_new = signer(with_old, new)
    assert statuses(cli_env, with_old, with_new) == [200, 400]

    # 1. register old and new; 2. the client switches to the new key; 3. remove the old one.
    both = invoke(
        "clients", "set-keys", "--name", "epr", "--jwks", jwks_file(tmp_path / "both.json", old, new)
    )
    assert both.exit_code == 0, both.output
    assert with_old.kid in both.stdout and with_new.kid in both.stdout
    assert statuses(cli_env, with_old, with_new) == [200, 200]
    only_new = invoke("clients", "set-keys", "--name", "epr", "--jwks", jwks_file(tmp_path / "new.json", new))
    assert only_new.exit_code == 0, only_new.output
    assert statuses(cli_env, with_old, with_new) == [400, 200]

    (row,) = orjson.loads(invoke("clients", "list", "--json").stdout)
    assert row["client_id"] == client_id
    assert row["key_ids"] == [with_new.kid] and row["jwks_url"] is None


def test_set_keys_applies_the_checks_add_applies(cli_env: Path, tmp_path: Path) -> None:
    key = new_key()
    args = ["clients", "add", "--name", "epr", "--ods-code", "RX1", "--role", "provider"]
    assert (
        invoke(*args, "--scopes", "system/*.read", "--jwks", jwks_file(tmp_path / "k.json", key)).exit_code
        == 0
    )
    kid = public_jwk(key.public_key(), "ES384")["kid"]
    private = tmp_path / "private.json"
    private.write_bytes(
        orjson.dumps({"keys": [{**jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True), "kid": "p"}]})
    )
    result = invoke("clients", "set-keys", "--name", "epr", "--jwks", str(private))
    assert result.exit_code != 0 and "private key" in result.output
    for url in ("http://keys.example/jwks.json", "ftp://keys.example/jwks"):
        result = invoke("clients", "set-keys", "--name", "epr", "--jwks-url", url)
        assert result.exit_code != 0 and "https" in result.output
    both = invoke(
        "clients", "set-keys", "--name", "epr", "--jwks", str(private), "--jwks-url", "https://k.example/j"
    )
    assert both.exit_code != 0 and "exactly one" in both.output
    assert orjson.loads(invoke("clients", "list", "--json").stdout)[0]["key_ids"] == [kid]  # unchanged

    unknown = invoke("clients", "set-keys", "--name", "nobody", "--generate-key", str(tmp_path / "n.pem"))
    assert unknown.exit_code != 0 and "no client named" in unknown.output
    assert not (tmp_path / "n.pem").exists()  # the key made for a client that is not there is gone

    generated = invoke("clients", "set-keys", "--name", "epr", "--generate-key", str(tmp_path / "g.pem"))
    assert generated.exit_code == 0, generated.output
    private_key = serialization.load_pem_private_key((tmp_path / "g.pem").read_bytes(), password=None)
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    (row,) = orjson.loads(invoke("clients", "list", "--json").stdout)
    assert row["key_ids"] == [public_jwk(private_key.public_key(), "ES384")["kid"]]


def test_a_jwks_file_that_also_names_a_jwks_uri_is_refused(cli_env: Path, tmp_path: Path) -> None:
    # Stored, /token would read the row as a URL (one never checked as --jwks-url checks it).
    key = new_key()
    path = tmp_path / "both.json"
    jwks = {"keys": [public_jwk(key.public_key(), "ES384")], "jwks_uri": "http://keys.example/j"}
    path.write_bytes(orjson.dumps(jwks))
    args = ["clients", "add", "--name", "epr", "--ods-code", "RX1", "--role", "provider"]
    result = invoke(*args, "--scopes", "system/*.read", "--jwks", str(path))
    assert result.exit_code != 0 and "jwks_uri" in result.output
    assert orjson.loads(invoke("clients", "list", "--json").stdout) == []
    assert (
        invoke(*args, "--scopes", "system/*.read", "--jwks", jwks_file(tmp_path / "k.json", key)).exit_code
        == 0
    )
    result = invoke("clients", "set-keys", "--name", "epr", "--jwks", str(path))
    assert result.exit_code != 0 and "jwks_uri" in result.output


async def test_a_stored_set_that_also_names_a_jwks_uri_is_not_fetched(
    services: Services, setup: Setup, keys_server: KeyServer
) -> None:
    # A row written before registration refused such sets: neither fetched nor used.
    key = new_key()
    keys_server.serve(key)
    jwks = {"keys": [public_jwk(key.public_key(), "ES384")], "jwks_uri": keys_server.url}
    caller = await register(services, key, "ES384", jwks=orjson.dumps(jwks).decode())
    assert "unusable" in await refused(setup.client, form(caller.assertion()), "invalid_client")
    assert keys_server.requests == 0 and setup.keys.fetches == 0


def test_a_client_registers_and_rolls_to_a_jwks_url(cli_env: Path, tmp_path: Path) -> None:
    args = ["clients", "add", "--name", "by-url", "--ods-code", "RX1", "--role", "provider"]
    url = "https://keys.example.nhs.uk/.well-known/jwks.json"
    added = invoke(*args, "--scopes", "system/*.read", "--jwks-url", url)
    assert added.exit_code == 0, added.output
    (row,) = orjson.loads(invoke("clients", "list", "--json").stdout)
    assert row["jwks_url"] == url and row["key_ids"] == []
    assert (
        invoke(
            *args[:3], "other", *args[4:], "--scopes", "system/*.read", "--jwks-url", "http://x.example/j"
        ).exit_code
        != 0
    )
    moved = invoke(
        "clients", "set-keys", "--name", "by-url", "--jwks-url", "https://keys.example.nhs.uk/v2.json"
    )
    assert moved.exit_code == 0 and "v2.json" in moved.stdout
