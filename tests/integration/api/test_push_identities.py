"""``POST /fhir`` (tests/unit/adapters/test_fhir_identities.py for the adapter's side):
a UK Core Patient whose verification status is v3-NullFlavor ``NI`` is stored, and two entries that
write one resource are answered as held back instead of both as written over each other."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import text

from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store.resources import count_by_type

ASSET = (
    Path(__file__).resolve().parents[2] / "assets" / "ukcore-push" / "patient-nullflavor-status-bundle.json"
)
NHS = "https://fhir.nhs.uk/Id/nhs-number"
REASON = "https://fhir.concord.health/CodeSystem/quarantine-reason"
EPR = Principal("epr-push", "Borough EPR", "Y90002", Role.SOURCE, frozenset({"system/*.write"}), "fhir")
READER = Principal("gp-read", "Practice", "Y90001", Role.PROVIDER, frozenset({"system/*.read"}), None)


def auth(app: FastAPI, principal: Principal) -> dict[str, str]:
    token, _ = app.state.tokens.issue(principal)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


def asset() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ASSET.read_text())
    return data


async def push(app: FastAPI, client: httpx.AsyncClient, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/fhir", content=json.dumps(bundle), headers=auth(app, EPR))
    assert response.status_code == 200, response.text
    answer = response.json()
    get_fhir_model_class("Bundle").model_validate(answer)
    return [e["response"] for e in answer["entry"]]


async def test_a_patient_with_no_information_status_is_stored_and_reads_back_valid(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    statuses = [r["status"] for r in await push(app, client, asset())]
    assert statuses == ["201 Created", "201 Created"]
    found = await client.get(
        "/fhir/Patient", params={"identifier": f"{NHS}|9990001006"}, headers=auth(app, READER)
    )
    assert found.status_code == 200, found.text
    [shared] = [e["resource"] for e in found.json()["entry"] if e["resource"]["resourceType"] == "Patient"]
    get_fhir_model_class("Patient").model_validate(shared)
    # NI is no status: none is carried; the other UK Core extensions are.
    assert "extension" not in shared["identifier"][0]
    urls = {e["url"] for e in shared.get("extension", [])}
    assert "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory" in urls


@pytest.mark.parametrize("kind", ["transaction", "batch"])
async def test_two_entries_writing_one_care_plan_are_held_back_not_overwritten(
    app: FastAPI, client: httpx.AsyncClient, services: Services, kind: str
) -> None:
    bundle = asset()
    bundle["type"] = kind
    second = copy.deepcopy(bundle["entry"][1])
    second["fullUrl"] = "urn:uuid:6f1c3f0e-6c55-4f0e-9a43-0000000000a3"
    second["resource"]["title"] = "Another title"
    bundle["entry"].append(second)
    responses = await push(app, client, bundle)
    assert [r["status"] for r in responses] == ["422 Unprocessable Entity"] * 3
    for response in responses:
        assert "location" not in response
        [issue] = response["outcome"]["issue"]
        assert issue["details"]["coding"] == [{"system": REASON, "code": "fhir-duplicate-resource"}]
        assert "9990001006" not in json.dumps(response)
    async with services.engine.connect() as conn:
        assert (await count_by_type(conn)).get("CarePlan", 0) == 0


async def test_two_patient_entries_that_are_one_record_are_held_back(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    bundle = asset()
    again = copy.deepcopy(bundle["entry"][0])
    again["fullUrl"] = "urn:uuid:6f1c3f0e-6c55-4f0e-9a43-0000000000a4"
    again["resource"]["name"][0]["family"] = "Other"
    again["resource"]["extension"] = []
    bundle["entry"].insert(1, again)
    bundle["entry"][2]["resource"]["subject"] = {"reference": f"Patient?identifier={NHS}|9990001006"}
    responses = await push(app, client, bundle)
    # The plan names the person by NHS number, which both Patient entries carry: never guessed.
    codes = [r["outcome"]["issue"][0]["details"]["coding"][0]["code"] for r in responses]
    assert codes == ["fhir-duplicate-resource", "fhir-duplicate-resource", "fhir-unresolved-reference"]
    async with services.engine.connect() as conn:
        assert (await count_by_type(conn)).get("Patient", 0) == 0


async def test_a_pushed_update_is_applied_whatever_its_bundle_timestamp(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """A FHIR push is an explicit write: a revoke sent with an earlier Bundle.timestamp than the
    plan's was answered 200 at the old version while the plan stayed active."""
    bundle = asset()
    bundle["timestamp"] = "2026-03-02T09:30:00+00:00"
    first = await push(app, client, bundle)
    bundle["timestamp"] = "2026-03-01T09:30:00+00:00"
    bundle["entry"][1]["resource"]["status"] = "revoked"
    second = await push(app, client, bundle)
    assert second[1]["etag"] != first[1]["etag"]
    async with services.engine.connect() as conn:
        [(status,)] = (
            await conn.execute(text("SELECT status FROM resources WHERE resource_type = 'CarePlan'"))
        ).all()
    assert status == "revoked"


async def test_two_patient_entries_with_one_id_and_two_nhs_numbers_are_held_back(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """PUT Patient/x twice with different NHS numbers: both were stored, one sender record under two people."""
    bundle = asset()
    patient = bundle["entry"][0]
    patient["resource"]["id"] = "epr-42"
    patient["request"] = {"method": "PUT", "url": "Patient/epr-42"}
    other = copy.deepcopy(patient)
    other["fullUrl"] = "urn:uuid:6f1c3f0e-6c55-4f0e-9a43-0000000000a5"
    other["resource"]["identifier"][0]["value"] = "9990000018"
    bundle["entry"] = [patient, other]
    responses = await push(app, client, bundle)
    codes = [r["outcome"]["issue"][0]["details"]["coding"][0]["code"] for r in responses]
    assert codes == ["fhir-duplicate-resource", "fhir-duplicate-resource"]
    async with services.engine.connect() as conn:
        assert (await count_by_type(conn)).get("Patient", 0) == 0
