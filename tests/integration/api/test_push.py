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
