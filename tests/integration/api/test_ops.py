"""Operations: health and readiness, metrics without patient data, body limits, gzip, request ids, access log.

Runs on both stores (the ``services`` fixture). Test-only routes are added to the app
to read a body, name the caller, and fail.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request, Response
from reachable import REDIS_URL, need_service
from sqlalchemy.ext.asyncio import create_async_engine

from consent.chain import Entry
from consent.model import Purpose, Requester, RequesterKind
from gateway.api.app import create_app
from gateway.api.metrics import CountingAppender, Metrics
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services, bootstrap
from gateway.disclosure import Ask
from gateway.settings import Settings

NHS_NUMBER = "9990000018"
PATH_ID = "f00dfeed0123456789abcdef"
LIMIT = 100_000
QUERY = f"identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS_NUMBER}"


@dataclass
class Seen:
    """What the echo route read: a body that was refused must never have been read whole."""

    bodies: list[int]


def add_test_routes(app: FastAPI, seen: Seen) -> None:
    async def echo(request: Request) -> Response:
        body = await request.body()
        seen.bodies.append(len(body))
        return Response(
            orjson.dumps({"length": len(body), "encoding": request.headers.get("content-encoding")}),
            media_type="application/json",
        )

    async def who(request: Request) -> Response:
        request.state.principal = Principal(
            "client-7", "Test EPR", "RAT01", Role.PROVIDER, frozenset({"system/Patient.read"})
        )
        return Response(b"{}", media_type="application/json")

    async def boom() -> Response:
        raise RuntimeError("boom")

    app.add_api_route("/test/echo", echo, methods=["POST"])
    app.add_api_route("/test/who/{rid}", who)
    app.add_api_route("/test/boom", boom)


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    seen: Seen


async def serve(services: Services, settings: Settings | None = None) -> AsyncIterator[Api]:
    app = create_app(settings or services.settings.model_copy(update={"max_body_bytes": LIMIT}), services)
    seen = Seen([])
    add_test_routes(app, seen)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(app, client, seen)


@pytest.fixture
async def api(services: Services) -> AsyncIterator[Api]:
    """On both stores: for what touches the store."""
    async for made in serve(services):
        yield made


@pytest.fixture
async def shell(sqlite_settings: Settings) -> AsyncIterator[Api]:
    """On the embedded store only: for the middleware, which never touches the store."""
    built = await bootstrap(sqlite_settings)
    try:
        async for made in serve(built):
            yield made
    finally:
        await built.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def outcome_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    code: str = body["issue"][0]["code"]
    return code


# --- health and readiness -------------------------------------------------------------------------


async def test_healthz_is_ok(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_store(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"store": "ok"}}


async def test_readyz_is_503_naming_the_store_when_it_is_unreachable(api: Api, services: Services) -> None:
    port = closed_port()
    dead = create_async_engine(f"postgresql+asyncpg://postgres:secret@127.0.0.1:{port}/test")
    live, services.engine = services.engine, dead
    try:
        response = await api.client.get("/readyz")
    finally:
        services.engine = live
        await dead.dispose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"store": "unavailable"}}
    assert str(port) not in response.text and "secret" not in response.text


async def test_readyz_pings_redis_when_configured(store_settings: Settings) -> None:
    need_service("Redis", "127.0.0.1", 6379)
    built = await bootstrap(store_settings.model_copy(update={"redis_url": REDIS_URL}))
    try:
        async for made in serve(built):
            response = await made.client.get("/readyz")
            assert response.status_code == 200
            assert response.json() == {"status": "ok", "checks": {"store": "ok", "redis": "ok"}}
    finally:
        await built.close()


async def test_readyz_is_503_when_redis_is_configured_but_unreachable(store_settings: Settings) -> None:
    port = closed_port()
    built = await bootstrap(store_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
    try:
        async for made in serve(built):
            response = await made.client.get("/readyz")
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.json() == {
                "status": "unavailable",
                "checks": {"store": "ok", "redis": "unavailable"},
            }
            assert str(port) not in response.text and "redis://" not in response.text
    finally:
        await built.close()


# --- metrics --------------------------------------------------------------------------------------


async def test_metrics_count_requests_and_decisions_and_never_hold_patient_data(
    api: Api, services: Services
) -> None:
    # Requests carrying an NHS number in the query string and ids in paths, matched or not.
    await api.client.get(f"/fhir/Patient?{QUERY}")
    await api.client.get(f"/fhir/Patient/{NHS_NUMBER}")
    await api.client.get(f"/fhir/Patient/{PATH_ID}?_format=json")
    await api.client.get(f"/test/who/{PATH_ID}?{QUERY}")
    await api.client.get(f"/no/such/{NHS_NUMBER}?{QUERY}")
    await api.client.request("BREW", f"/test/who/{PATH_ID}")
    # A real decision through the app's disclosure: logged, then counted.
    ask = Ask(Requester(RequesterKind.PROVIDER, "RAT01", "client-7"), Purpose.DIRECT_CARE.value, "read", "r1")

    async def nothing(_nhs: str) -> list[tuple[str, str, bytes]]:
        return []

    decided = await services.disclosure.person(ask, NHS_NUMBER, nothing)

    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "concord_http_requests_total",
        "concord_http_request_duration_seconds",
        "concord_http_requests_in_flight",
        "concord_http_requests_rejected_total",
        "concord_consent_decisions_total",
        "concord_audit_entries_appended_total",
        "concord_audit_append_failures_total",
    ):
        assert f"# TYPE {name} " in text, name
    assert 'concord_http_requests_total{method="GET",route="/test/who/{rid}",status="2xx"} 1.0' in text
    assert 'route="<unmatched>",status="4xx"}' in text
    assert 'method="OTHER"' in text
    verdict, reason = decided.decision.verdict.value, decided.decision.reason.value
    assert f'concord_consent_decisions_total{{reason="{reason}",verdict="{verdict}"}} 1.0' in text
    assert 'concord_audit_entries_appended_total{kind="disclosure"} 1.0' in text
    # No label holds a path, an id, a query or an NHS number.
    assert NHS_NUMBER not in text and PATH_ID not in text
    assert "identifier" not in text and "nhs-number" not in text and "/no/such" not in text
    # Every route label is a template: literal segments without digits, or {parameters}.
    for route in re.findall(r'route="([^"]*)"', text):
        assert re.fullmatch(r"<unmatched>|(/([A-Za-z_$.-]+|\{[A-Za-z_]+\}))+", route), route


async def test_metrics_speak_openmetrics_when_asked(shell: Api) -> None:
    plain = await shell.client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = await shell.client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert 'concord_http_requests_total{method="GET",route="/metrics",status="2xx"} 1.0' in response.text


async def test_a_failed_append_is_counted_and_raised() -> None:
    class Broken:
        async def append(self, entries: Sequence[Entry]) -> None:
            raise OSError("disk full")

    metrics = Metrics()
    with pytest.raises(OSError):
        await CountingAppender(Broken(), metrics).append([])
    assert b"concord_audit_append_failures_total 1.0" in metrics.exposition()[0]


# --- request bodies -------------------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_is_refused_before_anything_is_read(shell: Api) -> None:
    response = await shell.client.post(
        "/fhir/Patient", content=b"x" * (LIMIT + 1), headers={"X-Request-ID": "r-1"}
    )
    assert response.status_code == 413
    assert outcome_code(response) == "too-long"
    assert response.headers["x-request-id"] == "r-1"
    response = await shell.client.post("/test/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert shell.seen.bodies == []
    response = await shell.client.post("/test/echo", content=b"x" * LIMIT)
    assert response.status_code == 200 and response.json()["length"] == LIMIT
    metrics = (await shell.client.get("/metrics")).text
    assert 'concord_http_requests_rejected_total{reason="too-large"} 2.0' in metrics


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * size


async def test_a_streamed_body_is_cut_off_once_over_the_limit(shell: Api) -> None:
    response = await shell.client.post("/test/echo", content=chunks(20, LIMIT // 10))
    assert response.status_code == 413
    assert outcome_code(response) == "too-long"
    assert shell.seen.bodies == []  # the app never held the body
    response = await shell.client.post("/test/echo", content=chunks(10, LIMIT // 10))
    assert response.status_code == 200 and response.json()["length"] == LIMIT


async def test_gzip_request_bodies_are_inflated_for_the_app(shell: Api) -> None:
    body = orjson.dumps({"resourceType": "Patient", "id": "x" * 500})
    response = await shell.client.post(
        "/test/echo", content=gzip.compress(body), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200
    assert response.json() == {"length": len(body), "encoding": None}
    # Two members, as gzip allows, arriving in small pieces.
    two = gzip.compress(b"a" * 300) + gzip.compress(b"b" * 300)
    pieces = [two[i : i + 7] for i in range(0, len(two), 7)]

    async def stream() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    response = await shell.client.post("/test/echo", content=stream(), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json()["length"] == 600


async def test_a_gzip_bomb_is_refused_at_the_limit(shell: Api) -> None:
    bomb = gzip.compress(b"\0" * (200 * LIMIT))
    assert len(bomb) < LIMIT
    response = await shell.client.post("/test/echo", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert outcome_code(response) == "too-long"
    assert shell.seen.bodies == []


async def test_bad_or_unsupported_encodings_are_refused(shell: Api) -> None:
    response = await shell.client.post(
        "/test/echo", content=b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 400 and outcome_code(response) == "invalid"
    truncated = gzip.compress(b"z" * 5000)[:-12]
    response = await shell.client.post("/test/echo", content=truncated, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and outcome_code(response) == "invalid"
    response = await shell.client.post("/test/echo", content=b"x", headers={"Content-Encoding": "br"})
    assert response.status_code == 415 and outcome_code(response) == "not-supported"
    assert shell.seen.bodies == []


# --- responses ------------------------------------------------------------------------------------


async def test_large_responses_are_gzipped_for_callers_that_accept_it(shell: Api) -> None:
    await shell.client.get("/healthz")
    response = await shell.client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "concord_http_requests_total" in response.text  # httpx inflated it
    response = await shell.client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in response.headers
    small = await shell.client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    for refused in (
        "gzip;q=0",
        "gzip; q=0.000, identity",
        "x-gzip;q=0, gzip;q=0",
    ):  # RFC 9110: not acceptable
        response = await shell.client.get("/metrics", headers={"Accept-Encoding": refused})
        assert "content-encoding" not in response.headers, refused
        assert response.headers["vary"] == "Accept-Encoding"
    weighted = await shell.client.get("/metrics", headers={"Accept-Encoding": "br, gzip;q=0.2"})
    assert weighted.headers["content-encoding"] == "gzip"


async def test_request_ids_are_honoured_when_usable_else_replaced(shell: Api) -> None:
    for sent, kept in [
        ("abc-123", True),
        ("A.b_C-9" * 9 + "x", True),  # 64 characters
        ("x" * 65, False),
        ("has space", False),
        ("a/b", False),
        ("", False),
    ]:
        response = await shell.client.get("/healthz", headers={"X-Request-ID": sent})
        echoed = response.headers["x-request-id"]
        assert echoed == sent if kept else re.fullmatch(r"[0-9a-f]{32}", echoed), sent
    response = await shell.client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_an_unhandled_error_is_a_500_outcome_with_the_request_id(shell: Api) -> None:
    response = await shell.client.get("/test/boom", headers={"X-Request-ID": "fail-1"})
    assert response.status_code == 500
    assert outcome_code(response) == "exception"
    assert response.headers["x-request-id"] == "fail-1"
    assert "fail-1" in response.json()["issue"][0]["diagnostics"]


# --- access log -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelled",
    ["999+000+0018", "999_000_0018", "999%2B000%2B0018", "999%5F000%5F0018", "999%252B000%252B0018",
     "999,000;0018", "999%20000%2D0018", "999/000/0018", "999~000!0018"],
)  # fmt: skip
async def test_an_unmatched_path_is_logged_with_any_spelling_of_an_nhs_number_redacted(
    shell: Api, caplog: pytest.LogCaptureFixture, spelled: str
) -> None:
    caplog.set_level(logging.INFO, logger="concord.access")
    await shell.client.get(f"/fhir/Foo/{spelled}", headers={"X-Request-ID": "spelled"})
    (record,) = [r for r in caplog.records if r.name == "concord.access"]
    line = json.loads(record.getMessage())
    assert line["route"] == "/fhir/Foo/[redacted]"
    assert not any(c.isdigit() for c in record.getMessage().split('"route"')[1].split(",")[0])


async def test_the_access_log_is_one_json_line_per_request_without_query_strings(
    shell: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="concord.access")
    await shell.client.get(f"/test/who/{PATH_ID}?{QUERY}", headers={"X-Request-ID": "log-1"})
    await shell.client.get(f"/fhir/Patient?{QUERY}", headers={"X-Request-ID": "log-2"})
    await shell.client.get(f"/no/such/{NHS_NUMBER}/999 000 0018?{QUERY}", headers={"X-Request-ID": "log-3"})
    await shell.client.post("/test/echo", content=chunks(20, LIMIT // 10), headers={"X-Request-ID": "log-4"})
    await shell.client.head(f"/test/who/{PATH_ID}", headers={"X-Request-ID": "log-5"})
    records = [r for r in caplog.records if r.name == "concord.access"]
    assert len(records) == 5
    lines = {line["request_id"]: line for line in (json.loads(r.getMessage()) for r in records)}
    who = lines["log-1"]
    assert set(who) == {
        "time",
        "request_id",
        "method",
        "route",
        "status",
        "duration_ms",
        "bytes",
        "client_id",
    }
    assert who["route"] == "/test/who/{rid}"
    assert who["method"] == "GET" and who["status"] == 200 and who["client_id"] == "client-7"
    assert who["duration_ms"] >= 0 and who["bytes"] == 2
    assert lines["log-2"]["client_id"] is None
    assert lines["log-3"]["route"] == "/no/such/[redacted]"  # a "/" may separate digit groups too
    assert lines["log-4"]["status"] == 413
    head = lines["log-5"]  # answered as a GET, logged as what it was, with no body sent
    assert (head["method"], head["route"], head["status"], head["bytes"]) == (
        "HEAD",
        "/test/who/{rid}",
        200,
        0,
    )
    for record in records:
        message = record.getMessage()
        assert "?" not in message and "identifier" not in message
        assert NHS_NUMBER not in message and PATH_ID not in message
