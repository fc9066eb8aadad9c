"""The stub HIE over real HTTP (aiohttp TestServer): transactions, reads, state, and every fault kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from gateway.cli import cli
from gateway.hie_stub import Faults, make_app
from gateway.hie_stub.faults import FaultInjector, FaultPlanError
from gateway.hie_stub.server import REQUEST_IDS_KEPT, Stats
from gateway.hie_stub.store import Store, content_digest
from mappings.nhs_number import check_digit

NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR = {"Content-Type": "application/fhir+json"}


def nhs_number(n: int) -> str:
    """The n-th valid NHS number of the 999 test range (n=1: 9990000018)."""
    while True:
        nine = f"999{n:06d}"
        digit = check_digit(nine)
        if digit is not None:
            return f"{nine}{digit}"
        n += 1


def patient(number: str = "9990000018", rid: str | None = None, family: str = "Davies") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]},
        "identifier": [{"system": NHS, "value": number}],
        "name": [{"family": family, "given": ["Amelia"]}],
        "gender": "female",
        "birthDate": "1944-07-30",
    }
    if rid is not None:
        resource["id"] = rid
    return resource


def careplan(rid: str, subject: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": rid,
        "status": status,
        "intent": "plan",
        "title": "Diabetes plan",
        "subject": {"reference": subject},
    }


def provenance(rid: str, *targets: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": rid,
        "target": [{"reference": t} for t in targets],
        "recorded": "2026-01-01T00:00:00+00:00",
        "agent": [
            {
                "who": {
                    "identifier": {
                        "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                        "value": "Y90001",
                    }
                }
            }
        ],
    }


def put(resource: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    url = url or f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def by_nhs(number: str) -> str:
    return f"Patient?identifier={NHS}|{number}"


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


@asynccontextmanager
async def stub(faults: Faults | None = None, data: Path | None = None) -> AsyncIterator[TestClient]:
    async with TestServer(make_app(faults, data)) as server, TestClient(server) as client:
        yield client


async def send(
    client: TestClient, *entries: dict[str, Any], headers: dict[str, str] = FHIR
) -> tuple[int, dict[str, Any]]:
    async with client.post("/fhir", json=bundle(*entries), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def state(client: TestClient) -> dict[str, Any]:
    async with client.get("/_stub/state") as resp:
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


async def set_faults(client: TestClient, **plan: Any) -> None:
    async with client.post("/_stub/faults", json=plan) as resp:
        assert resp.status == 200, await resp.text()


def statuses(response: dict[str, Any]) -> list[str]:
    return [e["response"]["status"] for e in response["entry"]]


# --- transactions --------------------------------------------------------------------------------


async def test_put_by_id_creates_and_bumps_the_version_only_on_change() -> None:
    async with stub() as client:
        status, body = await send(client, put(patient(rid="p1")), put(careplan("c1", "Patient/p1")))
        assert status == 200 and body["type"] == "transaction-response"
        assert statuses(body) == ["201 Created", "201 Created"]
        assert body["entry"][0]["response"]["location"] == "Patient/p1/_history/1"
        assert body["entry"][0]["response"]["etag"] == 'W/"1"'

        _, again = await send(client, put(patient(rid="p1")))
        assert statuses(again) == ["200 OK"] and again["entry"][0]["response"]["etag"] == 'W/"1"'

        _, changed = await send(client, put(patient(rid="p1", family="Jones")))
        assert changed["entry"][0]["response"]["etag"] == 'W/"2"'
        async with client.get("/fhir/Patient/p1") as resp:
            stored = await resp.json(content_type=None)
            assert resp.headers["ETag"] == 'W/"2"'
        assert stored["meta"]["versionId"] == "2" and stored["meta"]["lastUpdated"]
        assert stored["name"][0]["family"] == "Jones" and stored["meta"]["profile"]
        assert (await state(client))["resources"] == {"CarePlan": {"c1": "1"}, "Patient": {"p1": "2"}}


async def test_conditional_put_creates_then_updates_the_one_match() -> None:
    async with stub() as client:
        _, created = await send(client, put(patient(), by_nhs("9990000018")))
        assert statuses(created) == ["201 Created"]
        location = created["entry"][0]["response"]["location"]
        pid = location.split("/")[1]

        _, same = await send(client, put(patient(), by_nhs("9990000018")))
        assert same["entry"][0]["response"]["location"] == location  # unchanged: still version 1

        _, changed = await send(client, put(patient(family="Jones"), by_nhs("9990000018")))
        assert changed["entry"][0]["response"]["location"] == f"Patient/{pid}/_history/2"

        _, with_id = await send(client, put(patient(nhs_number(2), rid="given-id"), by_nhs(nhs_number(2))))
        assert with_id["entry"][0]["response"]["location"] == "Patient/given-id/_history/1"
        assert (await state(client))["counts"] == {"Patient": 2}


async def test_conditional_put_with_two_matches_is_412_and_stores_nothing() -> None:
    async with stub() as client:
        await send(client, put(patient(rid="a")), put(patient(rid="b")))
        status, outcome = await send(
            client, put(careplan("c1", "Patient/a")), put(patient(), by_nhs("9990000018"))
        )
        assert status == 412
        assert outcome["issue"][0]["code"] == "multiple-matches"
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[1]"]
        assert (await state(client))["counts"] == {"Patient": 2}


async def test_delete_and_conditional_delete() -> None:
    async with stub() as client:
        await send(client, put(patient(rid="p1")), put(patient(nhs_number(2), rid="p2")))
        _, deleted = await send(
            client,
            {"request": {"method": "DELETE", "url": "Patient/p1"}},
            {"request": {"method": "DELETE", "url": by_nhs(nhs_number(2))}},
            {"request": {"method": "DELETE", "url": by_nhs(nhs_number(3))}},  # no match: still fine
        )
        assert statuses(deleted) == ["204 No Content"] * 3
        assert (await state(client))["counts"] == {}
        async with client.get("/fhir/Patient/p1") as resp:
            assert resp.status == 410
        _, recreated = await send(client, put(patient(rid="p1")))
        assert recreated["entry"][0]["response"]["location"] == "Patient/p1/_history/2"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (careplan("c1", "Patient/p1", status="bogus"), "code-not-in-value-set"),
        ({**patient(rid="p2"), "birthDate": "not a date"}, "fhir-invalid"),
    ],
)
async def test_an_invalid_entry_fails_the_whole_transaction(bad: dict[str, Any], reason: str) -> None:
    async with stub() as client:
        status, outcome = await send(client, put(patient(rid="p1")), put(bad))
        assert status == 400 and outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[1]"]
        assert reason in outcome["issue"][0]["diagnostics"]
        assert "9990000018" not in str(outcome)
        assert (await state(client))["counts"] == {}


async def test_entries_run_in_transaction_order_and_urn_uuids_resolve() -> None:
    async with stub() as client:
        status, body = await send(
            client,
            {"request": {"method": "GET", "url": "Patient/p1"}},
            put(careplan("c1", "urn:uuid:0b7e0c52-0000-4000-8000-000000000001")),
            {
                "fullUrl": "urn:uuid:0b7e0c52-0000-4000-8000-000000000001",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            put(patient(nhs_number(2), rid="p1")),
        )
        assert status == 200
        assert statuses(body) == ["200 OK", "201 Created", "201 Created", "201 Created"]
        assert body["entry"][0]["resource"]["id"] == "p1"  # the GET ran after the PUT
        new_id = body["entry"][2]["response"]["location"].split("/")[1]
        async with client.get("/fhir/CarePlan/c1") as resp:
            assert (await resp.json(content_type=None))["subject"]["reference"] == f"Patient/{new_id}"


async def test_if_match_if_none_exist_and_return_representation() -> None:
    async with stub() as client:
        await send(client, put(patient(rid="p1")))
        stale = {
            "resource": patient(rid="p1", family="Jones"),
            "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"7"'},
        }
        status, outcome = await send(client, stale)
        assert status == 412 and outcome["issue"][0]["expression"] == ["Bundle.entry[0]"]
        create = {
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={NHS}|9990000018"},
        }
        _, body = await send(client, create, headers={**FHIR, "Prefer": "return=representation"})
        assert statuses(body) == ["200 OK"] and body["entry"][0]["resource"]["id"] == "p1"
        assert (await state(client))["counts"] == {"Patient": 1}


async def test_malformed_requests() -> None:
    async with stub() as client:
        async with client.post("/fhir", data=b"{", headers=FHIR) as resp:
            assert resp.status == 400
        async with client.post("/fhir", data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        for request in ({"method": "PATCH", "url": "Patient/p1"}, {"method": "GET", "url": "Patinet/p1"}):
            status, _ = await send(client, {"request": request})
            assert status == 400
        status, _ = await send(client, put(patient(), "Patient/not an id"))
        assert status == 400
        async with client.post(
            "/fhir", json={"resourceType": "Bundle", "type": "batch"}, headers=FHIR
        ) as resp:
            assert resp.status == 400


async def test_concurrent_conditional_puts_create_one_patient() -> None:
    async with stub() as client:
        results = await asyncio.gather(
            *(send(client, put(patient(), by_nhs("9990000018"))) for _ in range(20))
        )
        assert {status for status, _ in results} == {200}
        assert sum(statuses(b) == ["201 Created"] for _, b in results) == 1
        assert (await state(client))["counts"] == {"Patient": 1}


# --- reads and searches --------------------------------------------------------------------------


async def test_reads_and_searches() -> None:
    async with stub() as client:
        await send(
            client,
            put(patient(rid="p1")),
            put(patient(nhs_number(2), rid="p2")),
            put(careplan("c1", "Patient/p1")),
            put(careplan("c2", "Patient/p2")),
            put(provenance("v1", "Patient/p1", "CarePlan/c1")),
        )

        async def ids(url: str) -> list[str]:
            async with client.get(url) as resp:
                assert resp.status == 200 and resp.content_type == "application/fhir+json"
                found = await resp.json(content_type=None)
                assert found["type"] == "searchset" and found["total"] == len(found["entry"])
                return [e["resource"]["id"] for e in found["entry"]]

        assert await ids(f"/fhir/Patient?identifier={NHS}|9990000018") == ["p1"]
        assert await ids("/fhir/Patient?identifier=9990000018") == ["p1"]
        assert await ids("/fhir/Patient") == ["p1", "p2"]
        assert await ids("/fhir/Patient?_id=p2") == ["p2"]
        assert await ids("/fhir/CarePlan?subject=Patient/p1") == ["c1"]
        assert await ids("/fhir/CarePlan?patient=p2") == ["c2"]
        assert await ids("/fhir/Provenance?patient=Patient/p1") == ["v1"]
        assert await ids("/fhir/CarePlan?patient=p1,p2") == ["c1", "c2"]
        async with client.get("/fhir/Patient?family=Davies") as resp:
            assert resp.status == 400
        async with client.get("/fhir/Patient/nobody") as resp:
            assert resp.status == 404
        async with client.get("/fhir/Patinet/p1") as resp:
            assert resp.status == 404
        async with client.get("/fhir/metadata") as resp:
            assert (await resp.json(content_type=None))["resourceType"] == "CapabilityStatement"


# --- state, request ids, persistence -------------------------------------------------------------


async def test_state_counts_requests_and_deliveries_per_request_id() -> None:
    async with stub() as client:
        for rid in ("delivery-1", "delivery-1", "delivery-2"):  # the first one retried with its id
            async with client.post(
                "/fhir", json=bundle(put(patient(rid="p1"))), headers={**FHIR, "X-Request-ID": rid}
            ) as resp:
                assert resp.headers["X-Request-ID"] == rid
        seen = await state(client)
        assert seen["request_ids"] == {"delivery-1": 2, "delivery-2": 1}
        assert seen["requests"] == 3 and seen["counts"] == {"Patient": 1}
        async with client.post("/_stub/reset") as resp:
            assert resp.status == 204
        assert (await state(client))["request_ids"] == {}


async def test_digests_name_each_resources_content_whatever_its_id_meta_or_key_order() -> None:
    async with stub() as client:
        first = patient(nhs_number(1), rid="p1")
        second = patient(nhs_number(2), rid="p2", family="Okafor")
        status, _ = await send(client, put(first), put(second), put(careplan("c1", "Patient/p1")))
        assert status == 200
        async with client.get("/_stub/digests/Patient") as resp:
            assert resp.status == 200
            digests = await resp.json()
        assert [d[0] for d in digests] == ["p1", "p2"]
        assert digests[0][2] == [f"{NHS}|{nhs_number(1)}"]
        # The same content sent in another key order, under another id, with other meta: same digest.
        shuffled = {k: first[k] for k in reversed(list(first))} | {
            "id": "elsewhere",
            "meta": {"versionId": "9"},
        }
        assert content_digest(shuffled) == digests[0][1]
        assert digests[0][1] != digests[1][1]
        assert content_digest({**first, "gender": "male"}) != digests[0][1]
        async with client.get("/_stub/digests/CarePlan") as resp:
            assert [d[0] for d in await resp.json()] == ["c1"]
        async with client.get("/_stub/digests/NotAType") as resp:
            assert resp.status == 404


async def test_brief_state_leaves_out_resources_and_request_ids() -> None:
    async with stub() as client:
        await send(client, put(patient(rid="p1")))
        async with client.get("/_stub/state?brief") as resp:
            brief = await resp.json()
        assert brief["counts"] == {"Patient": 1} and brief["transactions"] == 1
        assert "resources" not in brief and "request_ids" not in brief


async def test_what_a_read_returns_can_be_changed_without_changing_the_store() -> None:
    store = Store()
    txn = store.begin()
    txn.put("Patient", "p1", patient(rid="p1"))
    txn.commit()
    got = store.get("Patient", "p1")
    assert got is not None
    changed = got.resource
    changed["gender"] = "male"
    again = store.get("Patient", "p1")
    assert again is not None and again.resource["gender"] == "female"


def test_request_ids_are_bounded() -> None:
    stats = Stats()
    for n in range(REQUEST_IDS_KEPT + 5):
        stats.delivered(f"r{n}")
    stats.delivered("r10")
    assert len(stats.request_ids) == REQUEST_IDS_KEPT
    assert "r0" not in stats.request_ids and stats.request_ids["r10"] == 2


async def test_snapshot_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "hie.json"
    async with stub(data=data) as client:
        await send(client, put(patient(rid="p1")), {"request": {"method": "DELETE", "url": "Patient/p0"}})
        await send(client, put(patient(rid="p1", family="Jones")))
    assert data.exists()
    async with stub(data=data) as client:
        assert (await state(client))["resources"] == {"Patient": {"p1": "2"}}


# --- faults --------------------------------------------------------------------------------------


async def test_error_fault_is_500_and_stores_nothing() -> None:
    async with stub(Faults(error_rate=1.0)) as client:
        status, outcome = await send(client, put(patient(rid="p1")))
        assert status == 500 and outcome["resourceType"] == "OperationOutcome"
        seen = await state(client)
        assert seen["counts"] == {} and seen["faults"]["error"] == 1


async def test_throttle_fault_is_429_with_retry_after() -> None:
    async with stub(Faults(throttle_rate=1.0, retry_after=3)) as client:
        async with client.post("/fhir", json=bundle(put(patient(rid="p1"))), headers=FHIR) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "3"
        assert (await state(client))["counts"] == {}


async def test_delay_fault_answers_late_and_applies_the_transaction() -> None:
    async with stub(Faults(delay_rate=1.0, delay_seconds=0.3)) as client:
        started = time.monotonic()
        status, _ = await send(client, put(patient(rid="p1")))
        assert status == 200 and time.monotonic() - started >= 0.3


async def test_hang_fault_sends_headers_then_stalls_the_body() -> None:
    async with stub(Faults(hang_rate=1.0, delay_seconds=5.0)) as client:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(sock_read=0.3)
        async with client.post(
            "/fhir", json=bundle(put(patient(rid="p1"))), headers=FHIR, timeout=timeout
        ) as resp:
            assert resp.status == 200  # the headers came at once
            with pytest.raises(asyncio.TimeoutError):  # aiohttp.ServerTimeoutError is one
                await resp.read()
        assert time.monotonic() - started < 2
        # The HIE did the work although the client never saw the answer: a retry must be idempotent.
        assert (await state(client))["resources"] == {"Patient": {"p1": "1"}}


async def test_reset_fault_is_a_connection_error_for_the_client() -> None:
    async with stub(Faults(reset_rate=1.0)) as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(client, put(patient(rid="p1")))
        seen = await state(client)
        assert seen["counts"] == {} and seen["faults"]["reset"] == 1


async def test_fail_entry_fault_names_one_entry_and_stores_nothing() -> None:
    async with stub(Faults(fail_entry_rate=1.0, seed=7)) as client:
        status, outcome = await send(client, put(patient(rid="p1")), put(careplan("c1", "Patient/p1")))
        assert status == 400
        assert outcome["issue"][0]["expression"][0] in ("Bundle.entry[0]", "Bundle.entry[1]")
        assert (await state(client))["counts"] == {}


async def test_down_refuses_the_next_requests_then_recovers() -> None:
    async with stub(Faults(down_requests=2)) as client:
        assert [(await send(client, put(patient(rid="p1"))))[0] for _ in range(3)] == [503, 503, 200]
        await set_faults(client, down_seconds=30)
        async with client.get("/fhir/Patient/p1") as resp:  # down covers reads too
            assert resp.status == 503 and 0 < int(resp.headers["Retry-After"]) <= 30
        assert (await state(client))["faults"]["down"] == 3


async def test_a_seed_makes_the_fault_schedule_repeatable() -> None:
    async with stub() as client:
        runs = []
        for _ in range(2):
            await set_faults(client, error_rate=0.3, throttle_rate=0.2, seed=11)
            runs.append([(await send(client, put(patient(rid="p1"))))[0] for _ in range(20)])
        assert runs[0] == runs[1] and {500, 429, 200} <= set(runs[0])


def test_fault_plans_are_checked() -> None:
    with pytest.raises(FaultPlanError):
        Faults(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(FaultPlanError):
        Faults.from_json({"error_rat": 0.1})
    assert FaultInjector(Faults()).draw() is None


async def test_invalid_plan_over_http_is_400_and_keeps_the_old_one() -> None:
    async with stub(Faults(error_rate=1.0)) as client:
        async with client.post("/_stub/faults", json={"throttle_rate": 2}) as resp:
            assert resp.status == 400
        assert (await state(client))["fault_plan"]["error_rate"] == 1.0


def test_cli_help_and_bad_plan() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["hie-stub", "--help"])
    assert result.exit_code == 0 and "--fail-entry-rate" in result.output
    result = runner.invoke(cli, ["hie-stub", "--error-rate", "0.7", "--reset-rate", "0.7"])
    assert result.exit_code == 2 and "at most 1" in result.output
