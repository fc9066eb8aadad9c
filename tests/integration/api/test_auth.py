"""SMART Backend Services at ``POST /token``, on both stores: every check, the replay stores, the CLI.

Keys are made with cryptography, assertions signed with PyJWT, the app driven in process
(httpx.ASGITransport, lifespan running). A probe route added to the test app only shows an issued
token opens an endpoint through ``gateway.api.deps.require``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from reachable import POSTGRES_URL, REDIS_URL, need_service
from redis.asyncio import Redis
from smart_clients import AUD, Registered, form, invoke, probe_app, refused, register, serving
from sqlalchemy import func, select

from gateway.api.assertion import public_jwk
from gateway.api.principal import Role
from gateway.api.replay import ReplayUnavailable, SqlReplayStore
from gateway.bootstrap import Services
from gateway.settings import Settings
from gateway.store import clients as registry
from gateway.store.schema import used_jtis


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(probe_app(services=services)) as c:
        yield c


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384", "RS512"])
async def test_a_signed_assertion_gets_a_token_that_opens_a_scoped_endpoint(
    services: Services,
    client: httpx.AsyncClient,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    alg: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caller = await register(services, ec_key if alg == "ES384" else rsa_key, alg)
    assertion = caller.assertion()
    with caplog.at_level(logging.DEBUG):
        response = await client.post("/token", data=form(assertion))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert 0 < body["expires_in"] <= 300
    # Both are covered by the registered system/*.read, and granted as requested.
    assert body["scope"] == "system/Patient.read system/CarePlan.read"
    assert assertion not in caplog.text

    principal = client.app.state.tokens.verify(body["access_token"])  # type: ignore[attr-defined]
    assert principal.client_id == caller.client_id
    assert principal.scopes == {"system/Patient.read", "system/CarePlan.read"}
    assert principal.role is Role.PROVIDER

    opened = await client.get("/_probe", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert opened.status_code == 200
    assert opened.json() == {"client": caller.client_id, "ods": "RX1"}
    assert (await client.get("/_probe")).status_code == 401


async def test_a_token_carries_only_the_scopes_granted(
    services: Services, client: httpx.AsyncClient, provider: Registered
) -> None:
    data = form(provider.assertion(), scope="system/CarePlan.read system/Patient.write system/Consent.write")
    body = (await client.post("/token", data=data)).json()
    assert body["scope"] == "system/CarePlan.read system/Consent.write"  # Patient.write dropped
    closed = await client.get("/_probe", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert closed.status_code == 403
    assert closed.json()["resourceType"] == "OperationOutcome"


async def test_smart_configuration_is_served_at_both_paths(client: httpx.AsyncClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        response = await client.get(path)
        assert response.status_code == 200
        config = response.json()
        assert config["token_endpoint"] == AUD
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384", "RS512"]
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["capabilities"] == ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
        assert "system/Patient.read" in config["scopes_supported"]
        assert "system/*.rs" in config["scopes_supported"]


# --- the failure catalogue --------------------------------------------------------------------


async def test_missing_assertion_is_no_client_authentication(client: httpx.AsyncClient) -> None:
    # RFC 6749 §5.2: "no client authentication included" is invalid_client.
    assert "client_assertion" in await refused(client, form(None), "invalid_client")
    data = form(None, client_assertion_type=None)
    assert "no client authentication" in await refused(client, data, "invalid_client")


async def test_malformed_jwt(client: httpx.AsyncClient) -> None:
    await refused(client, form("not-a-jwt"), "invalid_client")
    await refused(client, form("e30.e30.e30.e30"), "invalid_client")
    await refused(client, form("bm90IGpzb24.e30.c2ln"), "invalid_client")


async def test_expired(client: httpx.AsyncClient, provider: Registered) -> None:
    now = int(time.time())
    assert "expired" in await refused(
        client, form(provider.assertion(exp=now - 1, iat=now - 200)), "invalid_client"
    )


async def test_exp_more_than_five_minutes_ahead(client: httpx.AsyncClient, provider: Registered) -> None:
    description = await refused(
        client, form(provider.assertion(exp=int(time.time()) + 600)), "invalid_client"
    )
    assert "300 seconds" in description


async def test_exp_missing(client: httpx.AsyncClient, provider: Registered) -> None:
    await refused(client, form(provider.assertion(exp=None)), "invalid_client")


async def test_not_yet_valid(client: httpx.AsyncClient, provider: Registered) -> None:
    now = int(time.time())
    assert "nbf" in await refused(client, form(provider.assertion(nbf=now + 120)), "invalid_client")
    assert "iat" in await refused(client, form(provider.assertion(iat=now + 120)), "invalid_client")


async def test_wrong_audience(client: httpx.AsyncClient, provider: Registered) -> None:
    for aud in ("http://127.0.0.1:8080/token/", "http://127.0.0.1:8080/fhir", "https://127.0.0.1:8080/token"):
        assert "aud" in await refused(client, form(provider.assertion(aud=aud)), "invalid_client")


async def test_iss_differs_from_sub(client: httpx.AsyncClient, provider: Registered) -> None:
    await refused(client, form(provider.assertion(iss="someone-else")), "invalid_client")
    await refused(client, form(provider.assertion(sub="someone-else")), "invalid_client")


async def test_unknown_client(client: httpx.AsyncClient, provider: Registered) -> None:
    stranger = "nobody-registered-this-id"
    assertion = provider.assertion(iss=stranger, sub=stranger)
    assert "not registered" in await refused(client, form(assertion), "invalid_client")


async def test_disabled_client_is_refused_at_once(
    services: Services, client: httpx.AsyncClient, provider: Registered
) -> None:
    assert (await client.post("/token", data=form(provider.assertion()))).status_code == 200
    async with services.engine.begin() as conn:
        assert await registry.disable(conn, provider.name, datetime.now(UTC))
    assert "disabled" in await refused(client, form(provider.assertion()), "invalid_client")


async def test_replayed_jti(client: httpx.AsyncClient, provider: Registered) -> None:
    assertion = provider.assertion()
    assert (await client.post("/token", data=form(assertion))).status_code == 200
    assert "used already" in await refused(client, form(assertion), "invalid_client")
    # The same jti in a new, otherwise valid assertion is a replay too.
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    await refused(client, form(provider.assertion(jti=jti)), "invalid_client")


async def test_jti_missing(client: httpx.AsyncClient, provider: Registered) -> None:
    assert "jti" in await refused(client, form(provider.assertion(jti=None)), "invalid_client")


async def test_unknown_kid(client: httpx.AsyncClient, provider: Registered) -> None:
    assertion = provider.assertion(headers={"kid": "not-a-registered-kid"})
    assert "kid" in await refused(client, form(assertion), "invalid_client")
    no_kid = jwt.encode(
        jwt.decode(provider.assertion(), options={"verify_signature": False}), provider.key, algorithm="ES384"
    )
    assert "kid" in await refused(client, form(no_kid), "invalid_client")


async def test_a_key_of_another_client_does_not_verify(
    services: Services, client: httpx.AsyncClient, provider: Registered
) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    forged = Registered(provider.client_id, provider.name, other, provider.kid, "ES384").assertion()
    assert "signature" in await refused(client, form(forged), "invalid_client")


async def test_alg_none(client: httpx.AsyncClient, provider: Registered) -> None:
    claims = jwt.decode(provider.assertion(), options={"verify_signature": False})
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": provider.kid})
    assert "alg" in await refused(client, form(unsigned), "invalid_client")


async def test_hs256_signed_with_the_public_key_pem(
    services: Services, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    caller = await register(services, rsa_key, "RS384")
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(caller.assertion(), options={"verify_signature": False})
    # PyJWT itself refuses to HMAC with a PEM; build the classic key-confusion forgery by hand.
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": caller.kid}))
    payload = jwt.utils.base64url_encode(orjson.dumps(claims))
    signing_input = header + b"." + payload
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(signing_input, pem)
    forged = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    assert "alg" in await refused(client, form(forged), "invalid_client")


async def test_rs256_is_not_accepted(
    services: Services, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    caller = await register(services, rsa_key, "RS384")
    assert "alg" in await refused(client, form(caller.assertion(alg="RS256")), "invalid_client")


async def test_an_rsa_alg_with_an_ec_kid_is_refused(
    services: Services, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey, provider: Registered
) -> None:
    claims = jwt.decode(provider.assertion(), options={"verify_signature": False})
    crossed = jwt.encode(claims, rsa_key, algorithm="RS384", headers={"kid": provider.kid})
    await refused(client, form(crossed), "invalid_client")


async def test_wrong_grant_type(client: httpx.AsyncClient, provider: Registered) -> None:
    await refused(
        client, form(provider.assertion(), grant_type="authorization_code"), "unsupported_grant_type"
    )
    await refused(client, form(provider.assertion(), grant_type=None), "invalid_request")


async def test_wrong_assertion_type(client: httpx.AsyncClient, provider: Registered) -> None:
    data = form(provider.assertion(), client_assertion_type="urn:ietf:params:oauth:grant-type:jwt-bearer")
    await refused(client, data, "invalid_request")


async def test_scope_not_registered(client: httpx.AsyncClient, provider: Registered) -> None:
    data = form(provider.assertion(), scope="system/Patient.write system/*.*")
    assert "registered" in await refused(client, data, "invalid_scope")
    await refused(client, form(provider.assertion(), scope=None), "invalid_scope")


async def test_the_body_must_be_a_form_with_each_parameter_once(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    response = await client.post("/token", json=form(provider.assertion()))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    body = httpx.QueryParams(form(provider.assertion())).add("scope", "system/CarePlan.read")
    response = await client.post(
        "/token", content=str(body), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.json() == {"error": "invalid_request", "error_description": "a parameter is repeated"}


async def test_no_assertion_in_logs_on_refusal(
    client: httpx.AsyncClient, provider: Registered, caplog: pytest.LogCaptureFixture
) -> None:
    assertion = provider.assertion(aud="https://elsewhere.example/token")
    with caplog.at_level(logging.DEBUG):
        await refused(client, form(assertion), "invalid_client")
    assert "invalid_client" in caplog.text
    assert assertion not in caplog.text
    assert assertion.split(".")[1] not in caplog.text


class DownReplayStore:
    """A replay store that cannot record anything (Redis and the store both down)."""

    async def claim(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        raise ReplayUnavailable("down")

    async def close(self) -> None:
        pass


async def test_no_token_when_the_jti_cannot_be_recorded(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    app: FastAPI = client.app  # type: ignore[attr-defined]
    real, app.state.replay = app.state.replay, DownReplayStore()
    try:
        response = await client.post("/token", data=form(provider.assertion()))
    finally:
        app.state.replay = real
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"] == "temporarily_unavailable"


# --- the replay stores ------------------------------------------------------------------------


async def _used_rows(services: Services) -> int:
    async with services.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(used_jtis))).scalar_one())


async def test_sql_replay_store_accepts_a_jti_once_until_it_expires(services: Services) -> None:
    store = SqlReplayStore(services.engine)
    now = time.time()
    assert await store.claim("c1", "j1", now + 60, now)
    assert not await store.claim("c1", "j1", now + 60, now + 1)
    assert await store.claim("c2", "j1", now + 60, now)  # per client
    # Once its assertion has expired, the jti may be used again (its old row is removed first).
    assert await store.claim("c1", "j1", now + 200, now + 61)
    assert not await store.claim("c1", "j1", now + 200, now + 62)


async def test_sql_replay_store_purges_expired_rows(services: Services) -> None:
    store = SqlReplayStore(services.engine)
    now = time.time()
    for i in range(5):
        assert await store.claim("c", f"old-{i}", now + 10, now)
    assert await _used_rows(services) == 5
    assert await store.claim("c", "new", now + 300, now + 120)  # a minute since the last purge
    assert await _used_rows(services) == 1


@pytest.fixture
async def redis_client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """The app with Redis configured (real server, a prefix of this test's own)."""
    need_service("Redis", "127.0.0.1", 6379)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    settings = services.settings.model_copy(update={"redis_url": REDIS_URL, "redis_prefix": prefix})
    app = probe_app(settings, services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def test_redis_replay_store_refuses_a_replay(
    services: Services, redis_client: httpx.AsyncClient, provider: Registered
) -> None:
    assertion = provider.assertion()
    assert (await redis_client.post("/token", data=form(assertion))).status_code == 200
    store = redis_client.app.state.replay  # type: ignore[attr-defined]
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    key = store.key(provider.client_id, jti)
    assert key.startswith(f"{store.prefix}")
    assert store.prefix.endswith("jti:")
    ttl = await store.redis.ttl(key)
    assert 0 < ttl <= 241
    assert await _used_rows(services) == 1  # the store holds it too: Redis is never the only copy
    assert "used already" in await refused(redis_client, form(assertion), "invalid_client")


async def test_a_flushed_redis_does_not_reopen_a_jti(
    services: Services, redis_client: httpx.AsyncClient, provider: Registered
) -> None:
    assertion = provider.assertion()
    assert (await redis_client.post("/token", data=form(assertion))).status_code == 200
    store = redis_client.app.state.replay  # type: ignore[attr-defined]
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    await store.redis.delete(store.key(provider.client_id, jti))
    await refused(redis_client, form(assertion), "invalid_client")


async def test_redis_down_falls_back_to_the_store(
    services: Services, provider: Registered, caplog: pytest.LogCaptureFixture
) -> None:
    settings = services.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = probe_app(settings, services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assertion = provider.assertion()
            assert (await c.post("/token", data=form(assertion))).status_code == 200
            await refused(c, form(assertion), "invalid_client")
    assert "Redis unavailable" in caplog.text


# --- the command line -------------------------------------------------------------------------


def test_cli_registers_a_client_and_mints_a_token_the_app_accepts(cli_env: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "demo.pem"
    added = invoke(
        "clients", "add", "--name", "demo", "--ods-code", "rx1", "--role", "provider",
        "--scopes", "system/Patient.read system/CarePlan.read", "--generate-key", str(key_file),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    client_id = added.stdout.strip()
    assert len(client_id) == 32
    assert key_file.stat().st_mode & 0o777 == 0o600

    listed = invoke("clients", "list", "--json")
    assert listed.exit_code == 0
    (row,) = orjson.loads(listed.stdout)
    assert row["client_id"] == client_id and row["ods_code"] == "RX1" and row["disabled_at"] is None
    assert "PRIVATE" not in listed.stdout and '"x"' not in listed.stdout
    plain = invoke("clients", "list")
    assert "demo" in plain.stdout and client_id in plain.stdout

    minted = invoke("token", "--client", "demo")
    assert minted.exit_code == 0, minted.output
    token = minted.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    narrow = invoke("token", "--client", "demo", "--scopes", "system/CarePlan.read").stdout.strip()
    assert invoke("token", "--client", "demo", "--scopes", "system/Patient.write").exit_code != 0

    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signer = Registered(client_id, "demo", private, row["key_ids"][0], "ES384")
    settings = Settings(data_dir=cli_env)

    async def use() -> tuple[int, int, int]:
        app = probe_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                minted_ok = (await c.get("/_probe", headers={"Authorization": f"Bearer {token}"})).status_code
                narrow_no = (
                    await c.get("/_probe", headers={"Authorization": f"Bearer {narrow}"})
                ).status_code
                exchanged = (await c.post("/token", data=form(signer.assertion()))).status_code
        return minted_ok, narrow_no, exchanged

    assert asyncio.run(use()) == (200, 403, 200)

    assert invoke("clients", "disable", "demo").exit_code == 0
    assert invoke("token", "--client", "demo").exit_code != 0
    assert orjson.loads(invoke("clients", "list", "--json").stdout)[0]["disabled_at"] is not None


def test_cli_add_refuses_private_keys_and_keys_without_kid(cli_env: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [{**private, "kid": "k1"}]}))
    args = ["clients", "add", "--name", "x", "--ods-code", "RX1", "--role", "provider"]
    args += ["--scopes", "system/*.read"]
    result = invoke(*args, "--jwks", str(jwks))
    assert result.exit_code != 0
    assert "private key" in result.output
    public = public_jwk(key.public_key(), "ES384")
    del public["kid"]
    jwks.write_bytes(orjson.dumps({"keys": [public]}))
    result = invoke(*args, "--jwks", str(jwks))
    assert result.exit_code != 0
    assert "kid" in result.output
    assert invoke(*args, "--generate-key", str(tmp_path / "k.pem"), "--source", "gp").exit_code != 0


def test_cli_token_refuses_outside_the_embedded_default(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORD_DATABASE_URL", POSTGRES_URL)
    result = invoke("token", "--client", "demo")
    assert result.exit_code != 0
    assert "embedded default" in result.output
    assert "POST /token" in result.output
    assert not (cli_env / "concord.db").exists()
    assert os.environ["CONCORD_DATABASE_URL"] == POSTGRES_URL
