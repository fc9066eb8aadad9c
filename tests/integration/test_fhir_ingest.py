"""A pushed FHIR Bundle through the ingest path on SQLite and PostgreSQL: stored once, re-posting changes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import plan_containing_stu3

from adapters.fhir import FhirBundleAdapter
from adapters.gp import GpAdapter
from gateway.bootstrap import Services
from gateway.cli import cli
from gateway.report import EXIT_FAILED, IngestReport
from gateway.store import quarantine
from gateway.store.resources import count_by_type

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
UKCORE = FIXTURES / "ukcore-examples" / "json"
R4 = FIXTURES / "r4-examples"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
GP_ROWS = """practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,plan_start,plan_end,activities,recorded_at
Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00
"""


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def transaction(*resources: dict[str, Any], uuid_prefix: str = "00000000") -> bytes:
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid_prefix}-0000-4000-8000-{n:012d}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r.get('id', '')}"},
        }
        for n, r in enumerate(resources)
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "meta": {"source": "https://fhir.nhs.uk/Id/ods-organization-code|Y90002"},
        "timestamp": "2026-03-01T09:30:00+00:00",
        "entry": entries,
    }
    return json.dumps(bundle).encode()


async def ingest(services: Services, body: bytes) -> IngestReport:
    items = FhirBundleAdapter().read(io.BytesIO(body))
    return await services.ingestor.run("fhir", items, "bundle.json")


async def test_bundle_is_stored_once_and_reposting_changes_nothing(services: Services) -> None:
    patient = load(UKCORE / "UKCore-Patient-RichardSmith-Example.json")
    plan = load(UKCORE / "UKCore-CarePlan-WellnessPlan-Example.json")
    first = await ingest(services, transaction(patient, plan))
    assert (first.records, first.new, first.quarantined_total) == (1, 1, 0)
    second = await ingest(services, transaction(patient, plan))
    assert (second.new, second.changed, second.unchanged, second.quarantined_total) == (0, 0, 1, 0)
    # the sender mints fresh urn:uuids for every post: still the same person and plan
    third = await ingest(services, transaction(plan, patient, uuid_prefix="11111111"))
    assert (third.new, third.changed, third.unchanged) == (0, 0, 1)
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {"Patient": 1, "CarePlan": 1, "Provenance": 2}


async def test_fhir_and_gp_share_one_patient(services: Services) -> None:
    await services.ingestor.run("gp", GpAdapter().read(io.StringIO(GP_ROWS)), "gp.csv")
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": NHS, "value": "9990000018"}]}
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "title": "Falls prevention",
        "subject": {"reference": "Patient/p1"},
    }
    report = await ingest(services, transaction(patient, plan))
    assert (report.new, report.quarantined_total) == (1, 0)
    async with services.engine.connect() as conn:
        # one shared Patient; a CarePlan from each source; Provenance per source per resource
        assert await count_by_type(conn) == {"Patient": 1, "CarePlan": 2, "Provenance": 4}


async def test_records_that_cannot_be_stored_are_quarantined(services: Services) -> None:
    body = transaction(
        load(R4 / "Patient-example.json"),  # international example: no NHS number
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "weight"}},
    )
    report = await ingest(services, body)
    assert report.accepted == 0
    assert dict(report.quarantined) == {"nhs-number-missing": 1, "fhir-unsupported-resource": 1}
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {}


async def test_a_care_plan_containing_a_type_r4_lacks_is_quarantined_and_the_rest_stored(
    services: Services,
) -> None:
    """An STU3 ProcedureRequest inside a plan: that person's record is held, the other stored."""
    good = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": NHS, "value": "9990000018"}]}
    other = {"resourceType": "Patient", "id": "p2", "identifier": [{"system": NHS, "value": "9990000026"}]}
    plan = plan_containing_stu3("cp2", "Patient/p2")
    report = await ingest(services, transaction(good, other, plan))
    assert (report.records, report.accepted, dict(report.quarantined)) == (2, 1, {"fhir-invalid": 1})
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {"Patient": 1, "Provenance": 1}
        (held,) = await quarantine.listing(conn)
    assert (held.location, held.detail) == (
        "entry 1",
        "contained.0: ProcedureRequest is not a FHIR R4 resource type",
    )


def test_a_bundle_nested_too_deep_is_a_file_refused_by_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was an uncaught TypeError from the JSON encoder (255 levels at most): now the file is refused."""
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path / "data"))
    deep: Any = {"url": "https://example.org/x", "valueString": "x"}
    for _ in range(150):
        deep = {"url": "https://example.org/x", "extension": [deep]}
    patient = {**load(UKCORE / "UKCore-Patient-RichardSmith-Example.json"), "extension": [deep]}
    path = tmp_path / "deep.json"
    path.write_bytes(transaction(patient))
    result = CliRunner().invoke(cli, ["ingest", "--source", "fhir", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == EXIT_FAILED
    assert "cannot be read" in result.output and "deeper than" in result.output
