"""Pushing records through the API on SQLite and PostgreSQL: same pipeline as the CLI, idempotent, source-bound."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from reachable import POSTGRES_URL
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.fhir import FhirBundleAdapter
from gateway.api.app import create_app
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services, bootstrap
from gateway.settings import Settings
from gateway.store import quarantine
from gateway.store.resources import count_by_type
from gateway.store.schema import idempotency_keys, resource_history

FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures"
UKCORE = FIXTURES / "ukcore-examples" / "json"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
A, B = "9990000018", "9990000026"
FHIR_JSON = "application/fhir+json"

EPR = Principal("epr-push", "Borough EPR", "Y90002", Role.SOURCE, frozenset({"system/*.write"}), "fhir")
COUNCIL = Principal(
    "council-push",
    "Synthetic Borough Council",
    "Z9A01",
    Role.SOURCE,
    frozenset({"system/Patient.write", "system/CarePlan.write"}),
    "social-care",
)


def auth(app: FastAPI, principal: Principal, **headers: str) -> dict[str, str]:
    token, _ = app.state.tokens.issue(principal)
    return {"Authorization": f"Bearer {token}", **headers}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((UKCORE / name).read_text())
    return data


def patient(number: str = A) -> dict[str, Any]:
    """The UK Core example patient, with a test-range NHS number."""
    resource = load("UKCore-Patient-RichardSmith-Example.json")
    resource["identifier"][0]["value"] = number
    return resource


def bundle(*entries: dict[str, Any], kind: str = "transaction") -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


def entry(resource: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource.get('id', '')}"},
    }


def mixed_bundle() -> bytes:
    """Patient A with a care plan; an Observation; a Patient with no NHS number; a Provenance."""
    plan = load("UKCore-CarePlan-WellnessPlan-Example.json")
    nameless = {"resourceType": "Patient", "id": "no-number", "name": [{"family": "Nobody"}]}
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "weight"}}
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": "Patient/UKCore-Patient-RichardSmith-Example"}],
        "recorded": "2026-03-01T09:30:00+00:00",
        "agent": [{"who": {"display": "EPR"}}],
    }
    return bundle(
        entry(patient(), 0), entry(plan, 1), entry(observation, 2), entry(nameless, 3), entry(provenance, 4)
    )


async def stored_counts(services: Services) -> tuple[dict[str, int], int]:
    async with services.engine.connect() as conn:
        versions = (await conn.execute(select(func.count()).select_from(resource_history))).scalar_one()
        return await count_by_type(conn), int(versions)


async def test_a_bundle_is_ingested_with_an_entry_by_entry_answer(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/fhir", content=mixed_bundle(), headers=auth(app, EPR, **{"Content-Type": FHIR_JSON})
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == [
        "201 Created",
        "201 Created",
        "422 Unprocessable Entity",
        "422 Unprocessable Entity",
        "200 OK",
    ]
    patient_response, plan_response, observation, nameless, provenance = (
        e["response"] for e in body["entry"]
    )
    assert patient_response["location"].startswith("Patient/")
    assert plan_response["location"].startswith("CarePlan/") and plan_response["location"].endswith(
        "/_history/1"
    )
    assert plan_response["etag"] == 'W/"1"'
    reasons = [r["outcome"]["issue"][0]["details"]["coding"][0]["code"] for r in (observation, nameless)]
    assert reasons == ["fhir-unsupported-resource", "nhs-number-missing"]
    assert observation["outcome"]["resourceType"] == "OperationOutcome"
    assert provenance["outcome"]["issue"][0]["severity"] == "information"
    assert A not in response.text  # the answer names resources by id, never by NHS number
    # the same pipeline as the CLI: stored, and the bad entries quarantined for replay
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {"Patient": 1, "CarePlan": 1, "Provenance": 2}
        held = await quarantine.listing(conn, source="fhir")
    assert sorted(q.reason for q in held) == ["fhir-unsupported-resource", "nhs-number-missing"]
    assert {q.run_id for q in held} == {int(response.headers["x-ingest-run"])}


async def test_a_repeat_without_a_key_creates_nothing_new(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = auth(app, EPR, **{"Content-Type": FHIR_JSON})
    first = await client.post("/fhir", content=mixed_bundle(), headers=headers)
    before = await stored_counts(services)
    again = await client.post("/fhir", content=mixed_bundle(), headers=headers)
    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert await stored_counts(services) == before
    # processed again: the accepted entries are now "200 OK" (unchanged), at the same versions
    assert [e["response"]["status"] for e in again.json()["entry"]][:2] == ["200 OK", "200 OK"]
    assert (
        again.json()["entry"][1]["response"]["location"] == first.json()["entry"][1]["response"]["location"]
    )
    async with services.engine.connect() as conn:
        assert len(await quarantine.listing(conn, source="fhir")) == 2  # the same two, not four


async def test_a_repeat_with_a_key_gets_the_first_answer(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = auth(app, EPR, **{"Content-Type": FHIR_JSON, "Idempotency-Key": "push-0001"})
    first = await client.post("/fhir", content=mixed_bundle(), headers=headers)
    assert first.status_code == 200
    before = await stored_counts(services)
    again = await client.post("/fhir", content=mixed_bundle(), headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the stored answer: still "201 Created"
    assert again.headers["x-ingest-run"] == first.headers["x-ingest-run"]
    assert await stored_counts(services) == before
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(idempotency_keys))).mappings().all()
    assert [(r["client_id"], r["key"], r["status"]) for r in rows] == [("epr-push", "push-0001", 200)]


async def test_a_key_reused_with_another_body_is_a_conflict(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = auth(app, EPR, **{"Content-Type": FHIR_JSON, "Idempotency-Key": "push-0002"})
    assert (await client.post("/fhir", content=mixed_bundle(), headers=headers)).status_code == 200
    before = await stored_counts(services)
    other = bundle(entry(patient(B), 0))
    response = await client.post("/fhir", content=other, headers=headers)
    assert response.status_code == 409
    assert response.json()["issue"][0]["code"] == "conflict"
    assert await stored_counts(services) == before
    # keys are per client: another client may use the same key for its own request
    other_client = Principal("epr-2", "Other EPR", "Y90003", Role.SOURCE, EPR.scopes, "fhir")
    headers2 = auth(app, other_client, **{"Content-Type": FHIR_JSON, "Idempotency-Key": "push-0002"})
    assert (await client.post("/fhir", content=other, headers=headers2)).status_code == 200


async def test_an_unreadable_body_is_refused_and_nothing_is_stored(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = auth(app, EPR, **{"Content-Type": FHIR_JSON, "Idempotency-Key": "bad-1"})
    for body, expected in [
        (b"{not json", "not JSON"),
        (b'{"resourceType": "Patient"}', "Bundle"),
        (json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode(), "transaction"),
        (mixed_bundle().replace(b'"type": ', b'"type": "batch", "type": ', 1), "names 'type' twice"),
    ]:
        headers["Idempotency-Key"] = f"bad-{len(body)}"
        response = await client.post("/fhir", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert expected in response.json()["issue"][0]["diagnostics"]
    assert await stored_counts(services) == ({}, 0)
    wrong_type = await client.post(
        "/fhir", content=mixed_bundle(), headers=auth(app, EPR, **{"Content-Type": "text/csv"})
    )
    assert wrong_type.status_code == 415


@pytest.mark.parametrize(
    ("principal", "message"),
    [
        (Principal("p", "Provider", "RXX01", Role.PROVIDER, frozenset({"system/*.write"})), "source system"),
        (Principal("a", "Admin", "CONCORD", Role.ADMIN, frozenset({"system/*.write"})), "source system"),
        (COUNCIL, "fhir records"),
        (Principal("gp", "GP", "Y90001", Role.SOURCE, frozenset({"system/*.write"}), "gp"), "fhir records"),
        (Principal("r", "EPR", "Y90002", Role.SOURCE, frozenset({"system/*.read"}), "fhir"), "scope"),
        (
            Principal("c", "EPR", "Y90002", Role.SOURCE, frozenset({"system/CarePlan.write"}), "fhir"),
            "Patient.write",
        ),
    ],
)
async def test_only_a_fhir_source_client_with_write_scopes_may_post_a_bundle(
    app: FastAPI, client: httpx.AsyncClient, services: Services, principal: Principal, message: str
) -> None:
    response = await client.post(
        "/fhir", content=mixed_bundle(), headers=auth(app, principal, **{"Content-Type": FHIR_JSON})
    )
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    assert message in response.json()["issue"][0]["diagnostics"]
    # RFC 6750 §3: every refusal of the token's privileges carries the challenge; a role or source
    # refusal names no scope (none would open the route to this client).
    challenge = response.headers["www-authenticate"]
    if "scope" in message or "write" in message.split()[-1]:
        assert challenge.startswith('Bearer error="insufficient_scope", scope="')
    else:
        assert challenge == 'Bearer error="insufficient_scope"'
    assert await stored_counts(services) == ({}, 0)


async def test_a_bundle_of_care_plans_needs_only_careplan_write(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    plans_only = Principal("c", "EPR", "Y90002", Role.SOURCE, frozenset({"system/CarePlan.write"}), "fhir")
    plan = copy.deepcopy(load("UKCore-CarePlan-WellnessPlan-Example.json"))
    plan["subject"] = {"identifier": {"system": NHS, "value": B}}
    response = await client.post(
        "/fhir",
        content=bundle(entry(plan, 0), kind="batch"),
        headers=auth(app, plans_only, **{"Content-Type": FHIR_JSON}),
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "batch-response"
    assert response.json()["entry"][0]["response"]["status"] == "201 Created"


def social_care_export(council: str = "Z9A01") -> bytes:
    return json.dumps(
        {
            "export": {"council_ods": council, "generated_at": "2026-11-01T02:00:00Z"},
            "cases": [
                {
                    "person_id": 7000123,
                    "person": {"nhs_number": B, "forenames": "Piotr", "surname": "Nowak", "gender": "Male"},
                    "care_and_support_plans": [
                        {
                            "plan_id": "CSP-1",
                            "plan_type": "CSP",
                            "status": "ACTIVE",
                            "start_date": "2026-03-01",
                        }
                    ],
                },
                {"person_id": 7000124, "person": {"forenames": "Dorothy"}, "care_and_support_plans": []},
            ],
        }
    ).encode()


async def test_a_council_pushes_its_export_and_gets_the_report(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    headers = auth(app, COUNCIL, **{"Content-Type": "application/json", "Idempotency-Key": "sc-1"})
    response = await client.post("/ingest/social-care", content=social_care_export(), headers=headers)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["records"], report["accepted"], report["new"], report["quarantined"]) == (2, 1, 1, 1)
    assert report["quarantined_records"] == [
        {
            "location": "case 2",
            "reason": "nhs-number-missing",
            "field": "person.nhs_number",
            "detail": "person.nhs_number is required",
        }
    ]
    async with services.engine.connect() as conn:
        assert (await count_by_type(conn))["CarePlan"] == 1
    before = await stored_counts(services)
    again = await client.post("/ingest/social-care", content=social_care_export(), headers=headers)
    assert again.content == response.content and again.headers["idempotent-replayed"] == "true"
    assert await stored_counts(services) == before


async def test_a_council_cannot_replace_another_councils_plan_that_shares_its_ids(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    neighbour = Principal(
        "neighbour-push", "Neighbouring Council", "Z9B02", Role.SOURCE, COUNCIL.scopes, "social-care"
    )
    json_type = {"Content-Type": "application/json"}
    for who in (COUNCIL, neighbour):
        export = social_care_export(who.ods_code)
        response = await client.post(
            "/ingest/social-care", content=export, headers=auth(app, who, **json_type)
        )
        assert response.status_code == 200, response.text
        assert response.json()["new"] == 1  # the same person and plan ids, but the neighbour's own record
    async with services.engine.connect() as conn:
        assert (await count_by_type(conn))["CarePlan"] == 2
        authors = (
            await conn.execute(
                text("SELECT version_id, content FROM resources WHERE resource_type = 'CarePlan' ORDER BY id")
            )
        ).all()
    assert sorted(json.loads(c)["author"]["identifier"]["value"] for _, c in authors) == ["Z9A01", "Z9B02"]
    assert [v for v, _ in authors] == [1, 1]  # neither was replaced


async def test_social_care_is_for_the_councils_own_client_and_own_cases(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    json_type = {"Content-Type": "application/json"}
    # a FHIR source client cannot use the council's endpoint, nor the council the FHIR one
    response = await client.post(
        "/ingest/social-care", content=social_care_export(), headers=auth(app, EPR, **json_type)
    )
    assert response.status_code == 403
    response = await client.post("/fhir", content=mixed_bundle(), headers=auth(app, COUNCIL, **json_type))
    assert response.status_code == 403
    # a council sends its own cases only
    response = await client.post(
        "/ingest/social-care", content=social_care_export("Z9B02"), headers=auth(app, COUNCIL, **json_type)
    )
    assert response.status_code == 403
    assert "council_ods" in response.json()["issue"][0]["diagnostics"]
    # an export that breaks off is refused whole: nothing of it is stored
    broken = social_care_export()[:-40]
    response = await client.post(
        "/ingest/social-care", content=broken, headers=auth(app, COUNCIL, **json_type)
    )
    assert response.status_code == 400
    assert await stored_counts(services) == ({}, 0)


async def test_idempotency_keys_expire_and_abandoned_claims_are_taken_over(services: Services) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.store import idempotency
    from gateway.store.idempotency import Claimed, KeyInUse, KeyReused, Stored

    engine, t0 = services.engine, datetime(2026, 11, 1, 9, tzinfo=UTC)
    held = await idempotency.claim(engine, "c1", "k", "hash-1", t0)
    assert isinstance(held, Claimed)
    with pytest.raises(KeyInUse):  # the same request, still being processed
        await idempotency.claim(engine, "c1", "k", "hash-1", t0 + timedelta(minutes=1))
    # its process died: after 15 minutes the claim is taken over
    taken = await idempotency.claim(engine, "c1", "k", "hash-1", t0 + timedelta(minutes=16))
    assert isinstance(taken, Claimed)
    answer = Stored(200, "application/fhir+json", {"X-Ingest-Run": "3"}, b'{"resourceType":"Bundle"}')
    await idempotency.finish(engine, taken, answer)
    assert await idempotency.claim(engine, "c1", "k", "hash-1", t0 + timedelta(hours=1)) == answer
    with pytest.raises(KeyReused):
        await idempotency.claim(engine, "c1", "k", "hash-2", t0 + timedelta(hours=1))
    # after 24 hours the key is free for any request
    assert isinstance(await idempotency.claim(engine, "c1", "k", "hash-2", t0 + timedelta(hours=25)), Claimed)
    # a released key is processed afresh; purge removes expired keys
    released = await idempotency.claim(engine, "c1", "k2", "hash-3", t0)
    assert isinstance(released, Claimed)
    await idempotency.release(engine, released)
    assert isinstance(await idempotency.claim(engine, "c1", "k2", "hash-4", t0), Claimed)
    assert await idempotency.purge(engine, t0 + timedelta(days=2)) == 1  # k2; k was re-claimed at +25h


async def test_an_idempotency_key_must_be_usable(app: FastAPI, client: httpx.AsyncClient) -> None:
    for key in ("", "x" * 129, "with space", "tab\there"):
        headers = auth(app, EPR, **{"Content-Type": FHIR_JSON})
        response = await client.post(
            "/fhir", content=mixed_bundle(), headers={**headers, "Idempotency-Key": key}
        )
        assert response.status_code == 400, key


# A store that refuses connections is an outage, answered 503 with Retry-After, never a 500: the
# gateway connects as a role of its own, whose connection limit the test takes away (what "too many
# clients" looks like to a busy region); the push can be retried as it is.
@pytest.fixture
async def limited_role(postgres_settings: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """A login role owning the test's schema, whose connection limit the test can take away."""
    role = f"concord_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        await conn.execute(text(f'GRANT ALL ON SCHEMA "{postgres_settings.database_schema}" TO "{role}"'))
    host = POSTGRES_URL.split("@", 1)[1]
    try:
        yield role, postgres_settings.model_copy(update={"database_url": f"postgresql://{role}@{host}"})
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP SCHEMA "{postgres_settings.database_schema}" CASCADE'))
            await conn.execute(text(f'CREATE SCHEMA "{postgres_settings.database_schema}"'))
            await conn.execute(text(f'DROP OWNED BY "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await admin.dispose()


async def test_a_push_when_the_store_refuses_connections_is_503_transient(
    limited_role: tuple[str, Settings],
) -> None:
    role, settings = limited_role
    services = await bootstrap(settings)
    app = create_app(services=services)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                headers = auth(app, COUNCIL, **{"Content-Type": "application/json"})
                accepted = await client.post(
                    "/ingest/social-care", content=social_care_export(), headers=headers
                )
                assert accepted.status_code == 200, accepted.text

                admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
                async with admin.connect() as conn:
                    await conn.execute(text(f'ALTER ROLE "{role}" CONNECTION LIMIT 0'))
                await admin.dispose()
                await services.engine.dispose()  # what it held open goes; new connections are refused

                refused = await client.post(
                    "/ingest/social-care", content=social_care_export(), headers=headers
                )
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
                outcome = refused.json()
                assert outcome["resourceType"] == "OperationOutcome"
                assert outcome["issue"][0]["code"] == "transient"
                metrics = (await client.get("/metrics")).text
                assert "concord_store_unavailable_total 1.0" in metrics
    finally:
        await services.close(sign=False)


# --- what a push refuses as asked, rather than ignore (FHIR R4 http.html, bundle.html) ---------------


def push_headers(app: FastAPI, **extra: str) -> dict[str, str]:
    return auth(app, EPR, **{"Content-Type": FHIR_JSON, **extra})


def outcome_code(response: dict[str, Any]) -> str:
    return str(response["outcome"]["issue"][0]["details"]["coding"][0]["code"])


def a_plan(**extra: Any) -> dict[str, Any]:
    plan = copy.deepcopy(load("UKCore-CarePlan-WellnessPlan-Example.json"))
    plan.update(extra)
    return plan


async def stored_plans(services: Services) -> list[dict[str, Any]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT content FROM resources WHERE resource_type = 'CarePlan' ORDER BY id")
        )
        return [json.loads(c) for (c,) in rows.all()]


async def test_a_modifier_extension_is_refused_not_dropped(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    plan = a_plan()
    plan["activity"][0]["detail"]["modifierExtension"] = [
        {"url": "https://ehr.example.nhs.uk/fhir/StructureDefinition/do-not-share", "valueBoolean": True}
    ]
    other = patient(B)
    other["id"] = "someone-else"
    response = await client.post(
        "/fhir",
        content=bundle(entry(patient(), 0), entry(plan, 1), entry(other, 2)),
        headers=push_headers(app),
    )
    assert response.status_code == 200, response.text
    first, second, third = (e["response"] for e in response.json()["entry"])
    for answer in (first, second):  # the person's whole record: their Patient and plan
        assert answer["status"] == "422 Unprocessable Entity"
        assert outcome_code(answer) == "fhir-modifier-extension"
        issue = answer["outcome"]["issue"][0]
        assert (issue["code"], issue["expression"]) == (
            "extension",
            ["resource.activity[0].detail.modifierExtension"],
        )
        assert "do-not-share" not in issue["diagnostics"]
    assert third["status"] == "201 Created"
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {"Patient": 1, "Provenance": 1}  # the other person only


async def test_a_restricted_patient_is_not_taken_into_the_shared_record(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """PDS labels a person whose address may not be shared R: the label was dropped and all shared."""
    restricted = patient()
    restricted["meta"] = {
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
    }
    response = await client.post(
        "/fhir", content=bundle(entry(restricted, 0), entry(a_plan(), 1)), headers=push_headers(app)
    )
    assert response.status_code == 200, response.text
    for answer in (e["response"] for e in response.json()["entry"]):
        assert answer["status"] == "422 Unprocessable Entity"
        assert outcome_code(answer) == "fhir-security-label"
        issue = answer["outcome"]["issue"][0]
        assert (issue["code"], issue["expression"]) == ("not-supported", ["resource.meta.security"])
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {}


async def test_a_conditional_update_whose_criteria_disagree_with_the_body_is_refused(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """PUT Patient?identifier=…|A with a body carrying B: was stored under B."""
    body = patient(B)
    wrong = {"resource": body, "request": {"method": "PUT", "url": f"Patient?identifier={NHS}|{A}"}}
    response = await client.post("/fhir", content=bundle(wrong), headers=push_headers(app))
    [answer] = (e["response"] for e in response.json()["entry"])
    assert answer["status"] == "400 Bad Request"
    assert outcome_code(answer) == "fhir-conditional-mismatch"
    assert answer["outcome"]["issue"][0]["code"] == "invalid"
    assert A not in response.text and B not in response.text
    assert await stored_counts(services) == ({}, 0)
    right = {"resource": body, "request": {"method": "PUT", "url": f"Patient?identifier={NHS}%7C{B}"}}
    response = await client.post("/fhir", content=bundle(right), headers=push_headers(app))
    assert response.json()["entry"][0]["response"]["status"] == "201 Created"


async def test_conditional_creates_and_reads_are_refused_not_ignored(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    for name, value in (
        ("ifNoneExist", f"identifier={NHS}|{A}"),
        ("ifNoneMatch", 'W/"1"'),
        ("ifModifiedSince", "2026-01-01T00:00:00Z"),
    ):
        sent = {"resource": patient(), "request": {"method": "POST", "url": "Patient", name: value}}
        response = await client.post(
            "/fhir", content=bundle(sent, entry(a_plan(), 1)), headers=push_headers(app)
        )
        for answer in (e["response"] for e in response.json()["entry"]):
            assert answer["status"] == "400 Bad Request", name
            assert outcome_code(answer) == "fhir-conditional-not-supported"
            assert answer["outcome"]["issue"][0]["code"] == "not-supported"
            assert answer["outcome"]["issue"][0]["expression"] == [f"request.{name}"]
    assert await stored_counts(services) == ({}, 0)


async def test_if_match_on_a_care_plan_is_checked_against_its_stored_version(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    plan = a_plan(id="cp-1")

    def update(tag: str, title: str) -> bytes:
        changed = {**plan, "title": title}
        put = {"resource": changed, "request": {"method": "PUT", "url": "CarePlan/cp-1", "ifMatch": tag}}
        return bundle(entry(patient(), 0), put)

    response = await client.post("/fhir", content=update('W/"1"', "first"), headers=push_headers(app))
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["412 Precondition Failed"] * 2  # not stored yet: nothing to match
    assert outcome_code(response.json()["entry"][1]["response"]) == "fhir-precondition-failed"
    assert await stored_counts(services) == ({}, 0)
    created = await client.post(
        "/fhir", content=bundle(entry(patient(), 0), entry(plan, 1)), headers=push_headers(app)
    )
    etag = created.json()["entry"][1]["response"]["etag"]
    assert etag == 'W/"1"'
    response = await client.post("/fhir", content=update(etag, "second"), headers=push_headers(app))
    assert response.json()["entry"][1]["response"]["etag"] == 'W/"2"'
    response = await client.post("/fhir", content=update(etag, "third"), headers=push_headers(app))
    assert response.json()["entry"][1]["response"]["status"] == "412 Precondition Failed"  # now at 2
    assert [p.get("title") for p in await stored_plans(services)] == ["second"]


async def test_bundle_invariants_are_kept(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    twice = entry(patient(B), 0)
    response = await client.post(
        "/fhir", content=bundle(entry(patient(), 0), twice), headers=push_headers(app)
    )
    assert response.status_code == 400  # bdl-7: two entries with one fullUrl
    assert "same fullUrl" in response.json()["issue"][0]["diagnostics"]
    response = await client.post(
        "/fhir", content=bundle(entry(patient(), 0), kind="collection"), headers=push_headers(app)
    )
    assert response.status_code == 400  # only a transaction or batch is processed
    assert "transaction or batch" in response.json()["issue"][0]["diagnostics"]
    assert await stored_counts(services) == ({}, 0)
    no_request = {"resource": patient(B)}
    lower = {"resource": patient(A), "request": {"method": "put", "url": "Patient"}}
    response = await client.post(
        "/fhir", content=bundle(no_request, lower, kind="batch"), headers=push_headers(app)
    )
    answers = [e["response"] for e in response.json()["entry"]]
    assert [(a["status"], outcome_code(a), a["outcome"]["issue"][0]["expression"]) for a in answers] == [
        ("422 Unprocessable Entity", "fhir-invalid-entry", ["request"]),
        ("422 Unprocessable Entity", "fhir-invalid-entry", ["request.method"]),
    ]


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({"Content-Type": "application/fhir+json; fhirVersion=3.0"}, "", 415),
        ({"Content-Type": "application/fhir+json; charset=utf-8; fhirVersion=4.0"}, "", 200),
        ({"Accept": "application/fhir+xml"}, "", 406),
        ({"Accept": "application/fhir+json; fhirVersion=3.0"}, "", 406),
        ({}, "?_format=xml", 406),
        ({"Accept": "application/fhir+json"}, "?_format=json", 200),
    ],
)
async def test_a_push_negotiates_content_as_the_read_api_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    services: Services,
    headers: dict[str, str],
    query: str,
    status: int,
) -> None:
    response = await client.post(
        f"/fhir{query}", content=bundle(entry(patient(), 0)), headers=push_headers(app, **headers)
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert response.json()["issue"][0]["code"] == "not-supported"
        assert await stored_counts(services) == ({}, 0)


async def test_prefer_return_operation_outcome_gives_every_entry_an_outcome(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/fhir", content=mixed_bundle(), headers=push_headers(app, Prefer="return=OperationOutcome")
    )
    assert response.headers["preference-applied"] == "return=OperationOutcome"
    answers = [e["response"] for e in response.json()["entry"]]
    assert all(a["outcome"]["resourceType"] == "OperationOutcome" for a in answers)
    assert answers[0]["outcome"]["issue"][0]["severity"] == "information"
    assert all(set(e) == {"response"} for e in response.json()["entry"])  # outcomes, never resources
    minimal = await client.post(
        "/fhir", content=mixed_bundle(), headers=push_headers(app, Prefer="return=minimal")
    )
    assert minimal.headers["preference-applied"] == "return=minimal"
    assert "outcome" not in minimal.json()["entry"][0]["response"]
    # representation is not honoured (a Patient's would be the shared Patient): answered minimal, and not claimed
    representation = await client.post(
        "/fhir", content=mixed_bundle(), headers=push_headers(app, Prefer="return=representation")
    )
    assert "preference-applied" not in representation.headers
    assert all("resource" not in e for e in representation.json()["entry"])


async def test_references_between_entries_are_stored_as_the_ids_given_here(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    first = a_plan(id="cp-1")
    practitioner = {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Ward"}]}
    second = a_plan(
        id="cp-2",
        basedOn=[{"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}],
        contained=[practitioner],
        author={"reference": "#pr1"},
    )
    second_entry = {
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
        "resource": second,
        "request": {"method": "POST", "url": "CarePlan"},
    }
    response = await client.post(
        "/fhir", content=bundle(entry(patient(), 0), entry(first, 1), second_entry), headers=push_headers(app)
    )
    locations = [e["response"]["location"] for e in response.json()["entry"]]
    first_id = locations[1].split("/")[1]
    stored = {p["id"]: p for p in await stored_plans(services)}
    assert stored[locations[2].split("/")[1]]["basedOn"] == [{"reference": f"CarePlan/{first_id}"}]
    assert stored[locations[2].split("/")[1]]["author"] == {"reference": "#pr1"}
    assert stored[locations[2].split("/")[1]]["contained"] == [practitioner]


async def test_a_council_ods_code_in_lower_case_updates_the_same_plans(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    council = Principal("e09-push", "A Borough", "E09000031", Role.SOURCE, COUNCIL.scopes, "social-care")
    json_type = {"Content-Type": "application/json"}
    for ods in ("E09000031", "e09000031"):
        response = await client.post(
            "/ingest/social-care", content=social_care_export(ods), headers=auth(app, council, **json_type)
        )
        assert response.status_code == 200, response.text
    assert response.json()["unchanged"] == 1  # the same case, not a second copy
    [plan] = await stored_plans(services)
    assert plan["identifier"][0]["system"].endswith("/social-care-care-plan/E09000031")


async def test_metadata_declares_no_conditional_update(client: httpx.AsyncClient) -> None:
    """A conditional URL is checked against the body, then the body's record is updated: no search is
    made, so ``conditionalUpdate`` (which promises one) is not declared (docs/api-write.md)."""
    rest = (await client.get("/fhir/metadata")).json()["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "CarePlan", "Consent"} <= set(by_type)
    for declared in by_type.values():
        assert "conditionalUpdate" not in declared and "conditionalCreate" not in declared
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}


async def test_a_bundle_nested_too_deep_is_refused_whole(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """Was a 500: orjson writes at most 255 levels (and Python recursion has its limit too)."""
    deep: Any = {"url": "https://example.org/x", "valueString": "x"}
    for _ in range(300):
        deep = {"url": "https://example.org/x", "extension": [deep]}
    body = patient()
    body["extension"] = [deep]
    response = await client.post("/fhir", content=bundle(entry(body, 0)), headers=push_headers(app))
    assert response.status_code == 400, response.text
    assert "deeper than" in response.json()["issue"][0]["diagnostics"]
    assert await stored_counts(services) == ({}, 0)


async def test_a_record_held_back_with_an_if_match_replays(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """The precondition was the push's: a replay (a CLI adapter that compares no versions) neither
    checks it again nor refuses it (was quarantined again as fhir-conditional-not-supported)."""
    plan = a_plan(id="cp-1")
    put = {"resource": plan, "request": {"method": "PUT", "url": "CarePlan/cp-1", "ifMatch": 'W/"1"'}}
    response = await client.post("/fhir", content=bundle(entry(patient(), 0), put), headers=push_headers(app))
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["412 Precondition Failed"] * 2
    async with services.engine.connect() as conn:
        [held] = await quarantine.listing(conn, source="fhir")
    assert held.reason == "fhir-precondition-failed"
    replayed = await services.ingestor.replay([held.id], {"fhir": FhirBundleAdapter()})
    assert (replayed.accepted, replayed.quarantined_total) == (1, 0)
    assert len(await stored_plans(services)) == 1
    async with services.engine.connect() as conn:
        assert await quarantine.listing(conn, source="fhir") == []
