"""The AuditEvent API and /audit/verify on SQLite and PostgreSQL: exact filters, snapshot paging, tamper checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from consent.chain import Kind
from consent.model import Authority, OptOutKind, Purpose, Requester, RequesterKind
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.disclosure import Ask
from gateway.store.audit import read_head
from gateway.store.schema import audit_log
from mappings.validate import validate

A, B, C = "9990000018", "9990000026", "9990000034"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
PROVIDER = Requester(RequesterKind.PROVIDER, "RXX01", "epr-1")
ANALYST = Requester(RequesterKind.ANALYST, "RYY02", "analytics-1")
AUDITOR = Principal("ig-1", "IG board", "IGB01", Role.IG_AUDITOR, frozenset({"system/AuditEvent.read"}))
ADMIN = Principal("admin-1", "Operators", "CONCORD", Role.ADMIN, frozenset({"system/*.read"}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, value: str) -> None:
        self.now = datetime.fromisoformat(value)


@dataclass(frozen=True)
class Logged:
    seq: int
    kind: str
    nhs: str
    org: str
    decision: str | None


@pytest.fixture
async def logged(app: FastAPI, services: Services) -> list[Logged]:
    """Seven entries in November and December 2026; the API's own searches are then logged in 2027."""
    clock = Clock()
    services.register.clock = clock
    services.disclosure.clock = clock
    operator = Requester(RequesterKind.OPERATOR, services.settings.organisation_ods, "cli:test")

    async def view(requester: Requester, purpose: str, number: str) -> None:
        async def nothing(_number: str) -> list[tuple[str, str, bytes]]:
            return []

        await services.disclosure.person(Ask(requester, purpose, "view", "r"), number, nothing)

    clock.at("2026-11-01T09:00:00+00:00")
    await services.register.opt_out(A, OptOutKind.LOCAL, Authority.LETTER, operator, "r1")
    clock.at("2026-11-01T10:00:00+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, A)  # deny
    clock.at("2026-11-01T23:59:59.999999+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, B)  # permit
    clock.at("2026-11-15T12:00:00+00:00")
    await services.register.withdraw(A, None, Authority.LETTER, operator, "r4")
    clock.at("2026-11-30T08:00:00+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, A)  # permit
    clock.at("2026-12-01T00:00:00+00:00")
    await view(ANALYST, Purpose.RESEARCH, C)  # permit
    clock.at("2026-12-02T09:00:00+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, B)  # permit
    clock.at("2027-01-01T00:00:00+00:00")
    cc, d, op = Kind.CONSENT_CHANGE, Kind.DISCLOSURE, operator.ods_code
    rows = [
        (cc, A, op, None),
        (d, A, "RXX01", "deny"),
        (d, B, "RXX01", "permit"),
        (cc, A, op, None),
        (d, A, "RXX01", "permit"),
        (d, C, "RYY02", "permit"),
        (d, B, "RXX01", "permit"),
    ]
    return [Logged(i, *row) for i, row in enumerate(rows, start=1)]


def auth(app: FastAPI, principal: Principal) -> dict[str, str]:
    token, _ = app.state.tokens.issue(principal)
    return {"Authorization": f"Bearer {token}"}


def seqs(bundle: dict[str, Any]) -> list[int]:
    return [int(e["resource"]["id"].removeprefix("log-")) for e in bundle.get("entry", ())]


async def search(
    client: httpx.AsyncClient, app: FastAPI, query: str, principal: Principal = AUDITOR
) -> dict[str, Any]:
    response = await client.get(f"/fhir/AuditEvent?{query}", headers=auth(app, principal))
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["type"] == "searchset"
    for entry in bundle.get("entry", ()):
        validate(entry["resource"])
    return bundle


SEARCHES: dict[str, tuple[str, list[int]]] = {
    "patient": (f"patient.identifier={NHS}|{A}", [1, 2, 4, 5]),
    "patient-modifier": (f"patient:identifier={A}", [1, 2, 4, 5]),
    "agent": ("agent=RXX01", [2, 3, 5, 7]),
    "agent-identifier": ("agent.identifier=https://fhir.nhs.uk/Id/ods-organization-code|RYY02", [6]),
    "client": ("altid=analytics-1", [6]),
    "november": ("date=ge2026-11-01&date=le2026-11-30", [1, 2, 3, 4, 5]),
    "a-day": ("date=2026-11-01", [1, 2, 3]),
    "after-a-day": ("date=gt2026-11-01", [4, 5, 6, 7]),
    "before-a-day": ("date=lt2026-12-01", [1, 2, 3, 4, 5]),
    "instants": ("date=ge2026-11-01T10:00:00Z&date=lt2026-11-30T08:00:00Z", [2, 3, 4]),
    "deny": ("outcome=4", [2]),
    "success": ("outcome=0&date=lt2027-01-01", [1, 3, 4, 5, 6, 7]),
    "both-outcomes": ("outcome=0,4&date=lt2027-01-01", [1, 2, 3, 4, 5, 6, 7]),
    # a repeated parameter is AND (a comma OR): no event has two outcomes
    "outcome-and-outcome": ("outcome=0&outcome=4&date=lt2027-01-01", []),
    "either-and-deny": ("outcome=0,4&outcome=4&date=lt2027-01-01", [2]),
    "change-and-create": ("subtype=opt-out,withdraw&action=C", [1]),
    "consent-changes": ("subtype=opt-out,withdraw", [1, 4]),
    "creates": ("action=C", [1]),
    "disclosures": ("type=110106&date=lt2027-01-01", [2, 3, 5, 6, 7]),
    "combined": (f"patient.identifier={A}&agent=RXX01&outcome=0&date=ge2026-11-01&date=le2026-11-30", [5]),
    "nothing": (f"patient.identifier={C}&agent=RXX01", []),
}


@pytest.mark.parametrize("name", SEARCHES)
async def test_each_filter_returns_exactly_its_events(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged], name: str
) -> None:
    query, positions = SEARCHES[name]
    bundle = await search(client, app, f"{query}&_count=50")
    assert seqs(bundle) == [logged[p - 1].seq for p in positions]
    for entry in bundle.get("entry", ()):
        event, expected = entry["resource"], logged[int(entry["resource"]["id"][4:]) - 1]
        patient = [e for e in event["entity"] if e.get("what", {}).get("type") == "Patient"]
        assert patient[0]["what"]["identifier"]["value"] == expected.nhs
        assert event["agent"][0]["who"]["identifier"]["value"] == expected.org
        assert event["outcome"] == ("4" if expected.decision == "deny" else "0")
        assert entry["fullUrl"].endswith(f"/fhir/AuditEvent/{event['id']}")


async def test_every_search_is_itself_logged(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged]
) -> None:
    await search(client, app, f"patient.identifier={A}")
    await search(client, app, "agent=RXX01", ADMIN)
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(audit_log).where(audit_log.c.seq > len(logged)))).mappings().all()
    assert [(r["action"], r["nhs_number"], r["client_id"], r["decision"], r["at"][:4]) for r in rows] == [
        ("audit-search", A, "ig-1", "permit", "2027"),
        ("audit-search", None, "admin-1", "permit", "2027"),
    ]
    # the IG board's own look-ups of a person are part of that person's trail
    again = await search(client, app, f"patient.identifier={A}&subtype=audit-search")
    assert seqs(again) == [len(logged) + 1]


async def test_pages_follow_next_links_over_a_snapshot(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged]
) -> None:
    first = await search(client, app, "_count=3")
    assert seqs(first) == [1, 2, 3]
    seen = seqs(first)
    bundle = first
    while True:
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        parts = urlsplit(following[0])
        assert parts.path == "/fhir/AuditEvent"
        bundle = await search(client, app, parts.query)
        seen += seqs(bundle)
    # the seven entries as of the first page, not the searches logged while paging
    assert seen == [entry.seq for entry in logged]


async def test_the_self_link_carries_the_page_size_applied(
    app: FastAPI,
    client: httpx.AsyncClient,
    services: Services,
    logged: list[Logged],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services.settings, "max_page_size", 2)
    first = await search(client, app, "agent=RXX01&_count=500&colour=red")
    assert len(first["entry"]) == 3  # two events and the outcome reporting colour
    self_link = next(link["url"] for link in first["link"] if link["relation"] == "self")
    assert parse_qsl(urlsplit(self_link).query) == [("agent", "RXX01"), ("_count", "2")]
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = await search(client, app, urlsplit(url).query)
    assert seqs(second) == [5, 7]
    again = next(link["url"] for link in second["link"] if link["relation"] == "self")
    assert urlsplit(again).query == urlsplit(url).query


async def test_a_page_token_is_bound_to_its_client_and_search(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged]
) -> None:
    first = await search(client, app, "agent=RXX01&_count=2")
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    query = urlsplit(url).query
    assert seqs(await search(client, app, query)) == [5, 7]
    other = await client.get(f"/fhir/AuditEvent?{query}", headers=auth(app, ADMIN))
    assert other.status_code == 400
    params = dict(parse_qsl(query))
    after, upto, mac = params["_page_token"].split(".")
    assert (after, upto) == ("3", "7")
    edited = ".".join(["1", upto, mac])
    for changed in ({**params, "agent": "RYY02"}, {**params, "_page_token": edited}):
        response = await client.get("/fhir/AuditEvent", params=changed, headers=auth(app, AUDITOR))
        assert response.status_code == 400
        assert response.json()["issue"][0]["diagnostics"] == "the page token is not valid for this search"


@pytest.mark.parametrize(
    "query",
    [
        "patient.identifier=9990000019",
        "date=2026-13-01",
        "date=eq2026-11-01T10:00:00Z",
        "outcome=8",
        "agent=R X",
        "_count=x",
    ],
)
async def test_invalid_searches_are_refused(
    app: FastAPI, client: httpx.AsyncClient, services: Services, query: str
) -> None:
    response = await client.get(f"/fhir/AuditEvent?{query}", headers=auth(app, AUDITOR))
    assert response.status_code == 400
    assert "9990000019" not in response.text
    async with services.engine.connect() as conn:
        assert (await read_head(conn)).seq == 0  # refused before anything was read or logged


async def test_unknown_parameters_are_reported_or_refused(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged]
) -> None:
    lenient = await search(client, app, "entity-role=1&_count=1")
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"
    assert "entity-role" in lenient["entry"][-1]["resource"]["issue"][0]["diagnostics"]
    strict = await client.get(
        "/fhir/AuditEvent?entity-role=1", headers={**auth(app, AUDITOR), "Prefer": "handling=strict"}
    )
    assert strict.status_code == 400


@pytest.mark.parametrize(
    "principal",
    [
        Principal("p", "EPR", "RXX01", Role.PROVIDER, frozenset({"system/*.read"})),
        Principal("s", "Council", "Z9A01", Role.SOURCE, frozenset({"system/*.read"}), "social-care"),
        Principal("ig-2", "IG", "IGB01", Role.IG_AUDITOR, frozenset({"system/Consent.read"})),
    ],
)
async def test_only_the_ig_board_and_admins_read_the_log(
    app: FastAPI, client: httpx.AsyncClient, principal: Principal
) -> None:
    for path in ("/fhir/AuditEvent", "/audit/verify"):
        response = await client.get(path, headers=auth(app, principal))
        assert response.status_code == 403, path
        assert response.json()["issue"][0]["code"] == "forbidden"
        challenge = response.headers["www-authenticate"]  # RFC 6750 §3, as for a missing scope
        assert challenge.startswith('Bearer error="insufficient_scope"'), path


async def test_verify_reports_an_intact_log_then_names_the_tampered_entry(
    app: FastAPI, client: httpx.AsyncClient, services: Services, logged: list[Logged]
) -> None:
    await services.log.checkpoint()
    await view_once(services)
    response = await client.get("/audit/verify", headers=auth(app, AUDITOR))
    assert response.status_code == 200
    report = response.json()
    assert report["intact"] is True and report["problem"] is None
    assert (report["entries"], report["checkpoints"], report["unsigned_entries"]) == (8, 1, 1)
    checkpoint = report["last_checkpoint"]
    assert checkpoint["seq"] == 7 and checkpoint["key_id"] == services.log.key_id
    assert set(checkpoint) == {"seq", "entry_hash", "signed_at", "key_id"}
    assert report["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert report["seconds"] >= 0
    async with services.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_log SET org_ods = 'RZZ99' WHERE seq = 3"))
    tampered = (await client.get("/audit/verify", headers=auth(app, ADMIN))).json()
    assert tampered["intact"] is False
    assert (tampered["problem"]["seq"], tampered["problem"]["code"]) == (3, "altered")


async def view_once(services: Services) -> None:
    async def nothing(_number: str) -> list[tuple[str, str, bytes]]:
        return []

    await services.disclosure.person(Ask(PROVIDER, Purpose.DIRECT_CARE, "view", "r9"), B, nothing)
