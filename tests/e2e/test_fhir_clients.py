"""Off-the-shelf FHIR clients against a real server: fhirclient (SMART on FHIR) and fhirpy.

The store is seeded with the command line (``concord ingest``, ``concord consent opt-out``);
the API runs under uvicorn in a background thread on a free port; the clients search by
NHS number, search CarePlans by subject (following ``next`` links), and read by id.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fhirclient.models.bundle import Bundle
from fhirclient.models.careplan import CarePlan
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRServer
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from fhirpy.base.searchset import Raw

from gateway.api.app import create_app
from gateway.publish.oauth import client_assertion, key_id_for
from gateway.settings import Settings
from mappings.ids import IdMaker

pytestmark = pytest.mark.slow

ID_KEY = "0123456789abcdef0123456789abcdef"
SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ALICE = "9990000018"
OPTED_OUT = "9990000026"
CSV = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,"
    "address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,"
    "plan_start,plan_end,activities,recorded_at\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP2,FRAILTY,Proactive care plan,COMPLETE,2023-01-01,2024-01-01,,2023-01-01T09:00:00+00:00\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP3,LTC-HF,Heart failure plan,ACTIVE,2024-06-01,,,2024-06-01T09:00:00+00:00\n"
    "Y90001,GP2,9990000026,01,Mr,Patel,Noah,1938-10-31,M,25 Mill Lane,,Upminster,RM9 2YB,0208 733 4374,,"
    "GP2-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
)


@dataclass
class Served:
    base: str
    token: str
    ids: IdMaker


def concord(data_dir: Path, *args: str) -> str:
    env = {**os.environ, "CONCORD_DATA_DIR": str(data_dir), "CONCORD_ID_KEY": ID_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def token_by_client_credentials(base: str, client_id: str, key_pem: bytes) -> str:
    """What a community EPR does: a signed assertion traded at /token (SMART Backend Services)."""
    assertion = client_assertion(client_id, f"{base}/token", key_pem, key_id_for(key_pem), "ES384")
    response = httpx.post(
        f"{base}/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": "system/Patient.read system/CarePlan.read",
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fhir-clients")
    data = root / "data"
    (root / "gp.csv").write_text(CSV)
    concord(data, "ingest", "--source", "gp", str(root / "gp.csv"))
    concord(data, "consent", "opt-out", OPTED_OUT, "--authority", "letter")
    key_file = root / "epr.key"
    client_id = concord(
        data,
        "clients",
        "add",
        "--name",
        "epr-a",
        "--ods-code",
        "RAT",
        "--role",
        "provider",
        "--scopes",
        "system/Patient.read system/CarePlan.read",
        "--generate-key",
        str(key_file),
    )

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=data, id_key=ID_KEY, public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    token = token_by_client_credentials(f"http://127.0.0.1:{port}", client_id, key_file.read_bytes())
    try:
        yield Served(f"http://127.0.0.1:{port}/fhir", token, IdMaker(ID_KEY.encode()))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def fhirclient_server(served: Served) -> FHIRServer:
    server = FHIRServer(None, base_uri=served.base + "/")
    server.session.headers["Authorization"] = f"Bearer {served.token}"
    return server


def test_fhirclient_reads_the_capability_statement(served: Served) -> None:
    server = fhirclient_server(served)
    server.get_capability()
    statement = server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    assert {r.type for r in statement.rest[0].resource} >= {"Patient", "CarePlan"}
    assert statement.rest[0].security.service[0].coding[0].code == "SMART-on-FHIR"


def test_fhirclient_searches_and_reads(served: Served) -> None:
    server = fhirclient_server(served)
    found = list(Patient.where(struct={"identifier": f"{SYSTEM}|{ALICE}"}).perform_resources_iter(server))
    assert [p.id for p in found] == [served.ids.patient(ALICE)]
    assert found[0].name[0].family == "Davies"

    search = CarePlan.where(struct={"subject:identifier": f"{SYSTEM}|{ALICE}", "_count": "1"})
    bundles = list(search.perform_iter(server))  # follows the next links
    assert len(bundles) == 3 and all(isinstance(b, Bundle) and b.total == 3 for b in bundles)
    plans = [e.resource for b in bundles for e in b.entry]
    assert {p.title for p in plans} == {"Diabetes plan", "Proactive care plan", "Heart failure plan"}
    assert {p.subject.reference for p in plans} == {f"Patient/{served.ids.patient(ALICE)}"}

    patient = Patient.read(served.ids.patient(ALICE), server)
    assert patient.birthDate.isostring == "1944-07-30"
    plan = CarePlan.read(plans[0].id, server)
    assert plan.status in ("active", "completed")


def test_fhirclient_sees_an_opted_out_person_as_unknown(served: Served) -> None:
    server = fhirclient_server(served)
    assert list(Patient.where(struct={"identifier": OPTED_OUT}).perform_resources_iter(server)) == []
    with pytest.raises(Exception, match="404"):
        Patient.read(served.ids.patient(OPTED_OUT), server)


async def test_fhirpy_searches_and_reads(served: Served) -> None:
    client = AsyncFHIRClient(served.base, authorization=f"Bearer {served.token}")
    patients = await client.resources("Patient").search(identifier=f"{SYSTEM}|{ALICE}").fetch()
    assert [p["id"] for p in patients] == [served.ids.patient(ALICE)]

    plans = (
        await client.resources("CarePlan").search(Raw(**{"subject:identifier": ALICE})).limit(1).fetch_all()
    )
    assert len(plans) == 3  # three pages, one plan each
    active = (
        await client.resources("CarePlan")
        .search(patient=f"Patient/{served.ids.patient(ALICE)}")
        .search(status="active")
        .fetch()
    )
    assert sorted(p["title"] for p in active) == ["Diabetes plan", "Heart failure plan"]

    patient = await client.reference("Patient", served.ids.patient(ALICE)).to_resource()
    assert patient["birthDate"] == "1944-07-30"
    assert await client.resources("Patient").search(identifier=OPTED_OUT).fetch() == []
    with pytest.raises(ResourceNotFound):
        await client.reference("Patient", served.ids.patient(OPTED_OUT)).to_resource()
    await asyncio.sleep(0)
