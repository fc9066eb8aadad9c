"""The Consent API on SQLite and PostgreSQL: record, withdraw, search; role rules; every read is logged."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from consent.chain import Kind
from consent.model import Purpose, Reason, Requester, RequesterKind
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store.audit import read_head
from gateway.store.schema import audit_log
from mappings.validate import validate

A, B, C = "9990000018", "9990000026", "9990000034"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
EXT = "https://fhir.concord.health/StructureDefinition"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
FHIR_JSON = "application/fhir+json"

PROVIDER = Principal("epr-1", "Community EPR", "RXX01", Role.PROVIDER, frozenset({"system/Consent.write"}))
SOURCE = Principal("council", "Council", "Z9A01", Role.SOURCE, frozenset({"system/Consent.*"}), "social-care")
ADMIN = Principal("admin-1", "Operators", "CONCORD", Role.ADMIN, frozenset({"system/Consent.*"}))
AUDITOR = Principal("ig-1", "IG board", "IGB01", Role.IG_AUDITOR, frozenset({"system/Consent.read"}))
CARE = Requester(RequesterKind.PROVIDER, "RXX01", "epr-1")


def auth(app: FastAPI, principal: Principal) -> dict[str, str]:
    token, _ = app.state.tokens.issue(principal)
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def opt_out(number: str = A, purposes: tuple[str, ...] = ("TREAT",), **extra: Any) -> dict[str, Any]:
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": NHS, "value": number}},
        "provision": {"type": "deny", "purpose": [{"system": ACT_REASON, "code": p} for p in purposes]},
    }
    consent.update(extra)
    return consent


async def log_since(services: Services, after: int) -> list[dict[str, Any]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq))
        return [dict(r) for r in rows.mappings()]


async def head(services: Services) -> int:
    async with services.engine.connect() as conn:
        return (await read_head(conn)).seq


async def test_an_opt_out_recorded_through_the_api_denies_and_its_withdrawal_permits_again(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    assert (await services.decider.decide(A, Purpose.DIRECT_CARE, CARE)).permitted
    created = await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, PROVIDER))
    assert created.status_code == 201, created.text
    consent = created.json()
    validate(consent)
    assert consent["status"] == "active"
    assert created.headers["location"].endswith(f"/fhir/Consent/{consent['id']}/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    kinds = {e["url"].rsplit("/", 1)[1]: e.get("valueCoding", {}).get("code") for e in consent["extension"]}
    assert kinds["opt-out-kind"] == "local-scr"
    assert kinds["opt-out-authority"] == "portal"  # the API's default
    decision = await services.decider.decide(A, Purpose.DIRECT_CARE, CARE)
    assert (decision.permitted, decision.reason, decision.consent_id) == (
        False,
        Reason.LOCAL_OPT_OUT,
        consent["id"],
    )

    withdrawn_body = {**consent, "status": "inactive"}
    withdrawn = await client.put(
        f"/fhir/Consent/{consent['id']}", content=orjson.dumps(withdrawn_body), headers=auth(app, PROVIDER)
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "inactive"
    assert withdrawn.json()["meta"]["versionId"] == "2"
    assert "end" in withdrawn.json()["provision"]["period"]
    validate(withdrawn.json())
    assert (await services.decider.decide(A, Purpose.DIRECT_CARE, CARE)).permitted
    # sending the withdrawal again changes nothing
    again = await client.put(
        f"/fhir/Consent/{consent['id']}", content=orjson.dumps(withdrawn.json()), headers=auth(app, PROVIDER)
    )
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"


async def test_a_repeat_while_one_is_in_force_returns_it_and_is_logged_as_a_read(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    first = await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, ADMIN))
    assert first.status_code == 201
    mark = await head(services)
    second = await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, SOURCE))
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert "location" not in second.headers
    rows = await log_since(services, mark)
    assert [(r["kind"], r["action"], r["nhs_number"], r["client_id"], r["decision"]) for r in rows] == [
        (Kind.DISCLOSURE, "consent-read", A, "council", "permit")
    ]
    assert orjson.loads(rows[0]["detail"]) == {"returned": [f"Consent/{first.json()['id']}"]}


async def test_a_national_opt_out_is_read_from_the_extension_or_the_purposes(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    by_purpose = await client.post(
        "/fhir/Consent", content=orjson.dumps(opt_out(B, ("HRESCH", "HOPERAT"))), headers=auth(app, PROVIDER)
    )
    assert by_purpose.status_code == 201
    extension = [
        {"url": f"{EXT}/opt-out-kind", "valueCoding": {"code": "national"}},
        {"url": f"{EXT}/opt-out-authority", "valueCoding": {"code": "letter"}},
    ]
    body = opt_out(C, extension=extension)
    del body["provision"]["purpose"]
    by_extension = await client.post("/fhir/Consent", content=orjson.dumps(body), headers=auth(app, PROVIDER))
    assert by_extension.status_code == 201
    for number in (B, C):
        assert (await services.decider.decide(number, Purpose.DIRECT_CARE, CARE)).permitted
        analyst = Requester(RequesterKind.ANALYST, "RYY02", "analytics-1")
        denied = await services.decider.decide(number, Purpose.RESEARCH, analyst)
        assert denied.reason is Reason.NATIONAL_OPT_OUT
    facts = await services.register.facts(C)
    assert [o.authority.value for o in facts.opt_outs] == ["letter"]


@pytest.mark.parametrize(
    ("change", "diagnostic"),
    [
        (
            lambda c: c.pop("patient"),
            "Consent.patient.identifier with system https://fhir.nhs.uk/Id/nhs-number is required",
        ),
        (
            lambda c: c["patient"]["identifier"].update(value="9990000019"),
            "not a valid NHS number (nhs-number-check-digit)",
        ),
        (
            lambda c: c["patient"]["identifier"].update(value="99900"),
            "not a valid NHS number (nhs-number-format)",
        ),
        (lambda c: c["provision"].update(type="permit"), "Consent.provision.type must be deny"),
        (lambda c: c["scope"]["coding"][0].update(code="research"), "Consent.scope must be patient-privacy"),
        (lambda c: c.update(status="draft"), "Consent.status must be active"),
        (lambda c: c.update(resourceType="Patient"), "must be a FHIR Consent"),
        (lambda c: c["provision"].pop("purpose"), "the opt-out kind is required"),
        (
            lambda c: c["provision"]["purpose"][0].update(code="ETREAT"),
            "only TREAT, HRESCH, HOPERAT and PUBHLTH",
        ),
        (
            lambda c: c.update(
                extension=[{"url": f"{EXT}/opt-out-authority", "valueCoding": {"code": "gp-extract"}}]
            ),
            "gp-extract is set by the gateway's own imports",
        ),
        (
            lambda c: c.update(
                extension=[{"url": f"{EXT}/opt-out-kind", "valueCoding": {"code": "national"}}]
            ),
            "contradicts provision.purpose",
        ),
    ],
)
async def test_an_invalid_consent_is_refused_with_a_specific_diagnostic(
    app: FastAPI, client: httpx.AsyncClient, services: Services, change: Any, diagnostic: str
) -> None:
    body = copy.deepcopy(opt_out())
    change(body)
    mark = await head(services)
    response = await client.post("/fhir/Consent", content=orjson.dumps(body), headers=auth(app, PROVIDER))
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert diagnostic in issue["diagnostics"]
    assert "999000" not in response.text  # the NHS number (valid or not) is never echoed
    assert await log_since(services, mark) == []  # nothing recorded, nothing logged


async def test_a_withdrawal_may_change_nothing_but_the_status(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    consent = (
        await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, PROVIDER))
    ).json()
    url = f"/fhir/Consent/{consent['id']}"
    changed = {**consent, "status": "inactive", "dateTime": "2020-01-01T00:00:00Z"}
    response = await client.put(url, content=orjson.dumps(changed), headers=auth(app, PROVIDER))
    assert response.status_code == 422
    assert response.json()["issue"][0]["code"] == "not-supported"
    assert "Consent.dateTime differs" in response.json()["issue"][0]["diagnostics"]
    rejected = {**consent, "status": "rejected"}
    assert (
        await client.put(url, content=orjson.dumps(rejected), headers=auth(app, PROVIDER))
    ).status_code == 422
    # another person's number, or an unknown id: the same 404
    other = copy.deepcopy(consent)
    other["patient"]["identifier"]["value"] = B
    other["status"] = "inactive"
    assert (
        await client.put(url, content=orjson.dumps(other), headers=auth(app, PROVIDER))
    ).status_code == 404
    unknown = {**consent, "id": "f" * 32, "status": "inactive"}
    response = await client.put(
        f"/fhir/Consent/{'f' * 32}", content=orjson.dumps(unknown), headers=auth(app, PROVIDER)
    )
    assert response.status_code == 404
    assert all(o.active for o in (await services.register.facts(A)).opt_outs)
    # a withdrawal may say on whose authority it was made
    withdrawal = [
        {
            "url": f"{EXT}/opt-out-withdrawal",
            "extension": [{"url": "authority", "valueCoding": {"code": "telephone"}}],
        }
    ]
    body = {**consent, "status": "inactive", "extension": [*consent["extension"], *withdrawal]}
    response = await client.put(url, content=orjson.dumps(body), headers=auth(app, PROVIDER))
    assert response.status_code == 200, response.text
    facts = await services.register.facts(A)
    assert [o.withdrawal_authority.value if o.withdrawal_authority else None for o in facts.opt_outs] == [
        "telephone"
    ]


async def test_search_returns_every_consent_as_it_stands_and_logs_the_read(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    local = (
        await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, ADMIN))
    ).json()
    await client.put(
        f"/fhir/Consent/{local['id']}",
        content=orjson.dumps({**local, "status": "inactive"}),
        headers=auth(app, ADMIN),
    )
    national = await client.post(
        "/fhir/Consent", content=orjson.dumps(opt_out(A, ("PUBHLTH",))), headers=auth(app, ADMIN)
    )
    mark = await head(services)
    for param in ("patient.identifier", "patient:identifier"):
        response = await client.get(f"/fhir/Consent?{param}={NHS}|{A}", headers=auth(app, AUDITOR))
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert (bundle["type"], bundle["total"]) == ("searchset", 2)
        resources = [e["resource"] for e in bundle["entry"]]
        assert [(r["id"], r["status"], r["meta"]["versionId"]) for r in resources] == [
            (local["id"], "inactive", "2"),
            (national.json()["id"], "active", "1"),
        ]
        for resource in resources:
            validate(resource)
    rows = await log_since(services, mark)
    assert [(r["action"], r["nhs_number"], r["client_id"], r["requester_kind"]) for r in rows] == [
        ("consent-search", A, "ig-1", "ig-auditor")
    ] * 2
    assert orjson.loads(rows[0]["detail"])["returned"] == [
        f"Consent/{local['id']}",
        f"Consent/{national.json()['id']}",
    ]
    # a person with no Consents: an empty searchset, and the look-up is still logged
    empty = await client.get(f"/fhir/Consent?patient.identifier={B}", headers=auth(app, ADMIN))
    assert (empty.status_code, empty.json()["total"], "entry" in empty.json()) == (200, 0, False)
    assert [r["nhs_number"] for r in await log_since(services, mark)][-1] == B
    # the search names one person, by a valid NHS number, never echoed
    bad = await client.get("/fhir/Consent?patient.identifier=9990000019", headers=auth(app, AUDITOR))
    assert bad.status_code == 400 and "9990000019" not in bad.text
    assert (await client.get("/fhir/Consent", headers=auth(app, AUDITOR))).status_code == 400


@pytest.mark.parametrize(
    ("principal", "method"),
    [
        (AUDITOR, "POST"),  # the IG board reads, never records
        (Principal("ig-2", "IG", "IGB01", Role.IG_AUDITOR, frozenset({"system/Consent.*"})), "POST"),
        (
            Principal("p", "EPR", "RXX01", Role.PROVIDER, frozenset({"system/Consent.*"})),
            "GET",
        ),  # providers do not search
        (
            Principal("s", "Council", "Z9A01", Role.SOURCE, frozenset({"system/Consent.*"}), "social-care"),
            "GET",
        ),
        (
            Principal("p2", "EPR", "RXX01", Role.PROVIDER, frozenset({"system/Patient.read"})),
            "POST",
        ),  # no scope
        (
            Principal("a2", "Ops", "CONCORD", Role.ADMIN, frozenset({"system/Consent.write"})),
            "GET",
        ),  # no scope
    ],
)
async def test_the_role_and_scope_rules(
    app: FastAPI, client: httpx.AsyncClient, services: Services, principal: Principal, method: str
) -> None:
    if method == "POST":
        response = await client.post(
            "/fhir/Consent", content=orjson.dumps(opt_out()), headers=auth(app, principal)
        )
    else:
        response = await client.get(f"/fhir/Consent?patient.identifier={A}", headers=auth(app, principal))
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    # A role refusal carries RFC 6750's challenge as a scope refusal does.
    assert response.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert await services.register.resources(A) == []
    assert await head(services) == 0


async def test_a_consent_must_be_sent_as_json(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = {**auth(app, PROVIDER), "Content-Type": "application/xml"}
    response = await client.post("/fhir/Consent", content=orjson.dumps(opt_out()), headers=headers)
    assert response.status_code == 415
    not_json = await client.post("/fhir/Consent", content=b"{", headers=auth(app, PROVIDER))
    assert (not_json.status_code, not_json.json()["issue"][0]["code"]) == (400, "structure")
    assert await services.register.resources(A) == []


@pytest.mark.parametrize("body", [b"[]", b"[null, null]", b"1", b'"x"', b"null"])
async def test_a_body_that_is_not_an_object_is_a_400_not_a_500(
    client: httpx.AsyncClient, app: FastAPI, body: bytes
) -> None:
    token, _ = app.state.tokens.issue(ADMIN)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    for method, path in (("PUT", "/fhir/Consent/0"), ("POST", "/fhir/Consent")):
        response = await client.request(method, path, content=body, headers=headers)
        assert response.status_code == 400, (method, response.text)
