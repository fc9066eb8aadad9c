"""A push is never lost because of one person: what one record's data breaks is answered for that
record (422, quarantined), and the rest of the Bundle is stored. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from support import plan_containing_stu3

from adapters.acute import AcuteAdapter
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store import people, quarantine
from gateway.store.resources import read_current

NHS = "https://fhir.nhs.uk/Id/nhs-number"
A, B = "9990000018", "9990000026"
FHIR_JSON = "application/fhir+json"
EPR = Principal("epr-push", "Borough EPR", "Y90002", Role.SOURCE, frozenset({"system/*.write"}), "fhir")
#: An acute A08 for A with PID-29 (time of death) and PID-30 (death indicator): deceasedDateTime.
DEATH = (
    "MSH|^~\\&|PAS|R9Z01|CONCORD|ICB|20260401120000||ADT^A08|C1|P|2.5\r"
    "EVN|A08|20260401120000\r"
    f"PID|1||H1^^^R9Z01^MR~{A}^^^NHS^NH||Smith^Ann||19500102|F" + "|" * 21 + "20260301101500|Y\r"
).encode()


def headers(app: FastAPI) -> dict[str, str]:
    token, _ = app.state.tokens.issue(EPR)
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def patient(number: str, pid: str, **elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": NHS, "value": number}],
        **elements,
    }


def transaction(*resources: dict[str, Any]) -> bytes:
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for n, r in enumerate(resources)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def answers(response: httpx.Response) -> list[tuple[str, str | None]]:
    """(status, quarantine reason) of each entry."""
    out = []
    for e in response.json()["entry"]:
        outcome = e["response"].get("outcome")
        reason = outcome["issue"][0]["details"]["coding"][0]["code"] if outcome else None
        out.append((e["response"]["status"], reason))
    return out


async def shared(services: Services, number: str) -> dict[str, Any]:
    async with services.engine.connect() as conn:
        stored = await read_current(conn, "Patient", services.mapper.ids.patient(number))
    return orjson.loads(stored) if stored else {}


async def test_a_push_saying_not_deceased_after_an_acute_death_is_stored_whole(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(DEATH)), "death.hl7")
    body = transaction(patient(A, "a", deceasedBoolean=False), patient(B, "b", gender="male"))
    response = await client.post("/fhir", content=body, headers=headers(app))
    assert response.status_code == 200, response.text
    assert answers(response) == [("201 Created", None), ("201 Created", None)]
    merged = await shared(services, A)
    assert merged["deceasedDateTime"] == "2026-03-01T10:15:00+00:00" and "deceasedBoolean" not in merged
    assert (await shared(services, B))["gender"] == "male"


async def test_a_contained_resource_of_an_unknown_type_holds_only_its_record(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    plan = plan_containing_stu3("cp", "Patient/b")
    body = transaction(patient(A, "a"), patient(B, "b"), plan)
    response = await client.post("/fhir", content=body, headers=headers(app))
    assert response.status_code == 200, response.text
    assert answers(response) == [
        ("201 Created", None),
        ("422 Unprocessable Entity", "fhir-invalid"),
        ("422 Unprocessable Entity", "fhir-invalid"),
    ]
    diagnostics = response.json()["entry"][2]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "contained.0: ProcedureRequest is not a FHIR R4 resource type" in diagnostics
    assert await shared(services, A) != {}
    assert await shared(services, B) == {}


async def test_a_person_whose_merged_patient_will_not_validate_is_answered_like_anyone_else(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """A contribution stored under laxer rules makes A's merge invalid. The push is answered as if
    it were not there (what another organisation holds must not change the answer): both entries
    are stored; A's shared Patient is not written."""
    old = {"identifier": [{"system": NHS, "value": A}], "gender": "x"}
    async with services.engine.begin() as conn:
        await people.save_contributions(
            conn, [people.StoredContribution("gp", "G-OLD", A, "Y90001", None, "", "old", old)]
        )
    response = await client.post(
        "/fhir", content=transaction(patient(A, "a"), patient(B, "b")), headers=headers(app)
    )
    assert response.status_code == 200, response.text
    assert answers(response) == [("201 Created", None), ("201 Created", None)]
    async with services.engine.connect() as conn:
        assert await quarantine.listing(conn, source="fhir") == []
    assert await shared(services, A) == {}
    assert await shared(services, B) != {}
