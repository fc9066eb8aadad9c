"""``POST /token`` beyond the assertion itself, on both stores: how the client authenticates, the
parameters, the scopes, when a jti is used up, what the log says, and the refusals the request
layer makes at /token before the endpoint runs.
"""

from __future__ import annotations

import base64
import gzip
import logging
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from smart_clients import Registered, check_oauth_error, form, probe_app, refused, register, serving

from gateway.bootstrap import Services


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(probe_app(services=services)) as c:
        yield c


async def opens_the_probe(client: httpx.AsyncClient, token_answer: httpx.Response) -> bool:
    assert token_answer.status_code == 200, token_answer.text
    token = token_answer.json()["access_token"]
    return (await client.get("/_probe", headers={"Authorization": f"Bearer {token}"})).status_code == 200


# --- client_id -------------------------------------------------------------------------------------


async def test_a_client_id_must_be_the_assertions_iss(
    services: Services, client: httpx.AsyncClient, provider: Registered
) -> None:
    other = await register(services, ec.generate_private_key(ec.SECP384R1()), "ES384")
    # Signed by the provider, sent in the name of another registered client: refused.
    data = form(provider.assertion(), client_id=other.client_id)
    assert "client_id" in await refused(client, data, "invalid_client")
    assert "client_id" in await refused(client, form(provider.assertion(), client_id="x"), "invalid_client")
    # The provider's own id is fine, and so is none (or an empty one: RFC 6749 §3.1, as not sent).
    assert (
        await client.post("/token", data=form(provider.assertion(), client_id=provider.client_id))
    ).is_success
    assert (await client.post("/token", data=form(provider.assertion(), client_id=""))).is_success


# --- one way to authenticate ------------------------------------------------------------------------


async def test_http_basic_alone_is_401_invalid_client_with_a_basic_challenge(
    client: httpx.AsyncClient,
) -> None:
    basic = "Basic " + base64.b64encode(b"some-client:some-secret").decode()
    data = {"grant_type": "client_credentials", "scope": "system/Patient.read"}
    response = await client.post("/token", data=data, headers={"Authorization": basic})
    check_oauth_error(response, "invalid_client", 401)
    assert response.headers["www-authenticate"] == 'Basic realm="concord token endpoint"'
    other = await client.post("/token", data=data, headers={"Authorization": "Digest username=x"})
    check_oauth_error(other, "invalid_client", 401)
    assert other.headers["www-authenticate"].startswith("Digest realm=")


async def test_two_ways_of_authenticating_are_invalid_request(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}
    response = await client.post("/token", data=form(provider.assertion()), headers=basic)
    assert "more than one way" in check_oauth_error(response, "invalid_request")
    data = form(provider.assertion(), client_secret="s3cret")
    assert "more than one way" in await refused(client, data, "invalid_request")


async def test_no_client_authentication_or_a_client_secret_is_invalid_client(
    client: httpx.AsyncClient,
) -> None:
    bare = {"grant_type": "client_credentials", "scope": "system/Patient.read"}
    assert "no client authentication" in await refused(client, bare, "invalid_client")
    assert "client_secret" in await refused(client, {**bare, "client_secret": "s"}, "invalid_client")


# --- parameters without a value ---------------------------------------------------------------------


async def test_a_parameter_without_a_value_counts_as_not_sent(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    assert "grant_type is required" in await refused(
        client, form(provider.assertion(), grant_type=""), "invalid_request"
    )
    assert "client_assertion" in await refused(
        client, form(provider.assertion(), client_assertion_type=""), "invalid_request"
    )
    await refused(client, form(""), "invalid_client")
    await refused(client, form(provider.assertion(), scope=""), "invalid_scope")
    body = httpx.QueryParams(form(provider.assertion())).add("unused", "")
    response = await client.post(
        "/token", content=str(body), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200, response.text


# --- scopes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("malformed", ["system/Patient", "system/.read", "system/Patient.", "Patient.read"])
async def test_a_malformed_scope_is_invalid_scope(
    client: httpx.AsyncClient, provider: Registered, malformed: str
) -> None:
    data = form(provider.assertion(), scope=f"system/CarePlan.read {malformed}")
    assert "SMART system scope" in await refused(client, data, "invalid_scope")


async def test_a_scope_for_a_type_not_served_is_not_granted(
    services: Services, client: httpx.AsyncClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    caller = await register(services, ec_key, "ES384", scopes=("system/*.read", "system/Observation.read"))
    response = await client.post(
        "/token", data=form(caller.assertion(), scope="system/Observation.read system/CarePlan.read")
    )
    assert response.json()["scope"] == "system/CarePlan.read"
    await refused(client, form(caller.assertion(), scope="system/Observation.read"), "invalid_scope")


async def test_smart_v2_scopes_are_granted_as_their_v1_equivalents(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    response = await client.post("/token", data=form(provider.assertion(), scope="system/Patient.rs"))
    assert response.json()["scope"] == "system/Patient.rs"
    assert await opens_the_probe(client, response)
    # Read without search opens no route: not granted (a token for it would be 403 everywhere).
    for narrow in ("system/Patient.r", "system/Patient.s", "system/Consent.cu"):
        await refused(client, form(provider.assertion(), scope=narrow), "invalid_scope")
    mixed = await client.post(
        "/token", data=form(provider.assertion(), scope="system/Patient.r system/Patient.rs")
    )
    assert mixed.json()["scope"] == "system/Patient.rs"
    assert await opens_the_probe(client, mixed)
    await refused(client, form(provider.assertion(), scope="system/Patient.cud"), "invalid_scope")


# --- when a jti is used up --------------------------------------------------------------------------


async def test_an_assertion_refused_for_its_scopes_cannot_be_replayed(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    assertion = provider.assertion()
    await refused(client, form(assertion, scope="system/Patient.write"), "invalid_scope")
    await refused(client, form(assertion, scope="system/Patient.malformed"), "invalid_client")
    assert "used already" in await refused(client, form(assertion), "invalid_client")


async def test_a_jti_with_a_nul_is_invalid_client_on_either_store(
    client: httpx.AsyncClient, provider: Registered
) -> None:
    for jti in ("abc\x00def", "line\nbreak"):
        assert "control" in await refused(client, form(provider.assertion(jti=jti)), "invalid_client")
    nul = provider.client_id + "\x00"
    await refused(client, form(provider.assertion(iss=nul, sub=nul)), "invalid_client")


async def test_a_header_naming_a_key_is_refused(client: httpx.AsyncClient, provider: Registered) -> None:
    for header in ({"x5u": "https://attacker.example/c"}, {"x5c": ["MIIB"]}):
        assertion = provider.assertion(headers=header)
        assert "names a key" in await refused(client, form(assertion), "invalid_client")
    # The provider registered its JWK Set, not a URL: no jku matches its registration.
    assertion = provider.assertion(headers={"jku": "https://attacker.example/jwks.json"})
    assert "jku" in await refused(client, form(assertion), "invalid_client")


# --- the log ----------------------------------------------------------------------------------------


async def test_a_refusal_is_logged_with_the_client_id_once_it_is_a_registered_one(
    client: httpx.AsyncClient, provider: Registered, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.api.routes.token")
    expired = provider.assertion(exp=1_000_000, iat=999_000)
    await refused(client, form(expired), "invalid_client")
    await refused(client, form(provider.assertion(), scope="system/Patient.write"), "invalid_scope")
    stranger = "not-a-registered-client\nforged log line"
    unknown = provider.assertion(iss=stranger, sub=stranger)
    await refused(client, form(unknown), "invalid_client")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.api.routes.token"]
    refusals = [line for line in lines if line.startswith("token refused")]
    assert len(refusals) == 3
    assert all(provider.client_id in line for line in refusals[:2])
    assert "invalid_scope" in refusals[1]
    assert "forged" not in refusals[2] and refusals[2].endswith("client -")
    assert expired not in caplog.text and expired.split(".")[1] not in caplog.text
    assert unknown.split(".")[1] not in caplog.text


# --- refusals before the endpoint runs --------------------------------------------------------------


async def test_another_method_at_the_token_endpoint_is_an_oauth_error(client: httpx.AsyncClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, "/token")
        assert "POST" in check_oauth_error(response, "invalid_request", 405)
        assert "POST" in response.headers["allow"]


async def test_the_request_layers_refusals_at_the_token_endpoint_are_oauth_errors(
    client: httpx.AsyncClient, provider: Registered, services: Services
) -> None:
    body = str(httpx.QueryParams(form(provider.assertion()))).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    encoded = await client.post("/token", content=body, headers={**headers, "content-encoding": "br"})
    check_oauth_error(encoded, "invalid_request", 415)
    limit = services.settings.max_body_bytes
    big = await client.post("/token", content=b"a=" + b"b" * limit, headers=headers)
    check_oauth_error(big, "invalid_request", 413)
    bomb = gzip.compress(b"a=" + b"b" * (limit + 10))
    inflated = await client.post("/token", content=bomb, headers={**headers, "content-encoding": "gzip"})
    check_oauth_error(inflated, "invalid_request", 413)
    bad_length = await asgi_post(client, "/token", [(b"content-length", b"12x")])
    assert bad_length.status == 400 and bad_length.headers[b"cache-control"] == b"no-store"
    assert bad_length.headers[b"pragma"] == b"no-cache"
    assert bad_length.headers[b"content-type"] == b"application/json"
    assert bad_length.json == {
        "error": "invalid_request",
        "error_description": "the Content-Length header is not a number",
    }
    # Elsewhere the same refusals stay OperationOutcomes.
    elsewhere = await client.post("/fhir", content=b"{}", headers={"content-encoding": "br"})
    assert elsewhere.status_code == 415 and elsewhere.json()["resourceType"] == "OperationOutcome"


class RawAnswer:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> object:
        return orjson.loads(self.body)


async def asgi_post(client: httpx.AsyncClient, path: str, headers: list[tuple[bytes, bytes]]) -> RawAnswer:
    """A POST straight to the app, with headers httpx would not send (a Content-Length not a number)."""
    app = client.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    return RawAnswer(start["status"], dict(start["headers"]), body)  # type: ignore[arg-type, call-overload]
