"""A region's topology on the PostgreSQL and Redis services: 2 API processes, 2 publishers, the HIE stub.

About 2,000 synthetic people are ingested with ``concord ingest`` while the publishers run. Then:

- two source clients push the same new person at the same moment, each through both API
  processes: one Patient for the NHS number, each source's CarePlan once;
- an opt-out posted to API process A is honoured by process B on its very next request (B had
  just answered for the person, so its Redis-cached permit is warm), and the publishers retract
  the person from the HIE;
- at the end every shareable person is at the HIE exactly once at the latest content, nobody
  opted out is there, the outbox is drained and ``concord audit verify`` passes.

Each run has its own PostgreSQL schema and Redis prefix (``topology.region``), removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from reachable import POSTGRES_URL, REDIS_URL, need_service
from sqlalchemy import func, select
from topology import NHS, Region, end_state, opt_out, region, wait_drained

from gateway.store.schema import resource_history, resources
from gateway.synth.population import nhs_numbers

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

PEOPLE = 2000
#: Liveness bounds only (a loaded machine may be slow; nothing here measures speed).
PATIENCE = 300
FHIR_JSON = "application/fhir+json"
#: Far beyond the synthetic population (which takes the 999 range from its start).
NEW_PERSON = next(nhs_numbers(start=800_000))


def fhir_push(number: str) -> bytes:
    """A partner EPR's transaction Bundle: the person and one care plan."""
    patient = {
        "resourceType": "Patient",
        "id": "epr-1",
        "identifier": [{"system": NHS, "value": number}],
        "name": [{"family": "Okafor", "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1951-03-14",
    }
    plan = {
        "resourceType": "CarePlan",
        "id": "epr-plan-1",
        "status": "active",
        "intent": "plan",
        "title": "Falls prevention",
        "subject": {"reference": "Patient/epr-1"},
    }
    entries = [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": patient},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002", "resource": plan},
    ]
    for e in entries:
        resource: Any = e["resource"]
        e["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def council_push(number: str) -> bytes:
    """The council's social care export for the same person."""
    return json.dumps(
        {
            "export": {"council_ods": "Z9A01", "generated_at": "2026-11-01T02:00:00Z"},
            "cases": [
                {
                    "person_id": 7000123,
                    "person": {"nhs_number": number, "forenames": "Ada", "surname": "Okafor"},
                    "care_and_support_plans": [
                        {
                            "plan_id": "CSP-1",
                            "plan_type": "CSP",
                            "status": "ACTIVE",
                            "start_date": "2026-03-01",
                        }
                    ],
                }
            ],
        }
    ).encode()


def search(base: str, token: str, rtype: str, number: str) -> httpx.Response:
    param = "identifier" if rtype == "Patient" else "subject:identifier"
    return httpx.get(
        f"{base}/fhir/{rtype}",
        params={param: f"{NHS}|{number}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def found(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [
        e["resource"]
        for e in response.json().get("entry", [])
        if e.get("search", {}).get("mode") != "outcome"
    ]


async def stub_patients(region: Region, number: str) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{region.hie}/Patient", params={"identifier": f"{NHS}|{number}"})
        return int(answer.json()["total"])


async def until(condition: Callable[[], Awaitable[object]], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} within {seconds} s"
        await asyncio.sleep(0.2)


async def test_two_api_processes_and_two_publishers_share_one_region(tmp_path: Path) -> None:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    need_service("Redis", "127.0.0.1", 6379)
    fast = {
        "CONCORD_PUBLISH_POLL_SECONDS": "0.2",
        "CONCORD_PUBLISH_BACKOFF_SECONDS": "0.05",
        "CONCORD_PUBLISH_BACKOFF_CAP_SECONDS": "0.5",
        "CONCORD_PUBLISH_LEASE_SECONDS": "5",
        "CONCORD_HIE_READ_TIMEOUT": "5",
    }
    stub_faults = ("--error-rate", "0.03", "--throttle-rate", "0.02", "--retry-after", "0", "--seed", "7")
    async with region(
        tmp_path, postgres_url=POSTGRES_URL, redis_url=REDIS_URL, stub_options=stub_faults, extra_env=fast
    ) as topology:
        a, b = topology.apis
        extracts = tmp_path / "extracts"
        made = topology.cli(
            "synth", "--people", str(PEOPLE), "--seed", "5", "--sources", "gp", "--out", str(extracts)
        )
        assert made.returncode == 0, made.stderr
        ingested = topology.cli("ingest", "--source", "gp", "--json", str(extracts / "gp.csv"))
        assert ingested.returncode in (0, 1), ingested.stderr
        assert json.loads(ingested.stdout)["accepted"] > PEOPLE * 0.9

        epr = topology.add_client(
            "epr", "Y90002", "source", "system/Patient.write system/CarePlan.write", source="fhir"
        )
        council = topology.add_client(
            "council", "Z9A01", "source", "system/Patient.write system/CarePlan.write", source="social-care"
        )
        provider = topology.add_client(
            "provider", "RAT", "provider", "system/Patient.read system/CarePlan.read system/Consent.write"
        )
        epr_token, council_token = topology.token(epr), topology.token(council, api=b)
        reader = topology.token(provider)
        assert found(search(b, reader, "Patient", NEW_PERSON)) == [], "the new person is new"

        # (a) the same new person from two sources, each through both processes, all at once
        async with httpx.AsyncClient(timeout=120) as client:

            async def push(base: str, path: str, token: str, body: bytes, kind: str) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}", "Content-Type": kind}
                return await client.post(f"{base}{path}", content=body, headers=headers)

            answers = await asyncio.gather(
                push(a, "/fhir", epr_token, fhir_push(NEW_PERSON), FHIR_JSON),
                push(b, "/fhir", epr_token, fhir_push(NEW_PERSON), FHIR_JSON),
                push(a, "/ingest/social-care", council_token, council_push(NEW_PERSON), "application/json"),
                push(b, "/ingest/social-care", council_token, council_push(NEW_PERSON), "application/json"),
            )
        for answer in answers:
            assert answer.status_code == 200, answer.text
        for base in (a, b):
            patients = found(search(base, reader, "Patient", NEW_PERSON))
            assert len(patients) == 1, "one Patient for the NHS number"
            plans = found(search(base, reader, "CarePlan", NEW_PERSON))
            assert [p.get("title") for p in plans].count("Falls prevention") == 1
            assert len(plans) == 2 and len({p["id"] for p in plans}) == 2, "each source's plan once"
        engine = topology.engine()
        try:
            async with engine.connect() as conn:
                per_type: dict[str, int] = dict(
                    (
                        await conn.execute(
                            select(resources.c.resource_type, func.count())
                            .where(resources.c.nhs_number == NEW_PERSON)
                            .group_by(resources.c.resource_type)
                        )
                    ).all()
                )
                plan_versions = (
                    await conn.execute(
                        select(func.max(resource_history.c.version_id)).where(
                            resource_history.c.resource_type == "CarePlan",
                            resource_history.c.id.in_([p["id"] for p in plans]),
                        )
                    )
                ).scalar_one()
            assert per_type["Patient"] == 1 and per_type["CarePlan"] == 2
            assert plan_versions == 1, "a repeated push stores no new version"

            # (b) an opt-out through A, honoured by B on its very next request
            await until(
                lambda: stub_patients(topology, NEW_PERSON), PATIENCE, "the new person reached the HIE"
            )
            assert len(found(search(b, reader, "Patient", NEW_PERSON))) == 1  # B's cached permit is warm
            recorded = httpx.post(
                f"{a}/fhir/Consent",
                content=json.dumps(opt_out(NEW_PERSON)),
                headers={"Authorization": f"Bearer {reader}", "Content-Type": FHIR_JSON},
                timeout=30,
            )
            assert recorded.status_code == 201, recorded.text
            assert found(search(b, reader, "Patient", NEW_PERSON)) == [], "B honours the opt-out at once"
            assert found(search(b, reader, "CarePlan", NEW_PERSON)) == []
            read = httpx.get(
                f"{b}/fhir/Patient/{patients[0]['id']}",
                headers={"Authorization": f"Bearer {reader}"},
                timeout=30,
            )
            assert read.status_code == 404

            async def retracted() -> bool:
                return await stub_patients(topology, NEW_PERSON) == 0

            await until(retracted, PATIENCE, "the publishers retracted the person")

            # (c) the end state
            await wait_drained(topology, engine, PATIENCE)
            state = await end_state(topology, engine)
        finally:
            await engine.dispose()
        assert state.problems == []
        assert state.people > PEOPLE * 0.9 and state.shareable > PEOPLE * 0.8
        assert state.opted_out >= 1
        assert state.at_hie["Patient"] == state.shareable
        topology.check_running()
        assert set(topology.stop_all().values()) == {0}, "every process stops cleanly on SIGTERM"
        verified = topology.cli("audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["intact"] is True
