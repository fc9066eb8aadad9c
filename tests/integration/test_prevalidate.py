"""Validation in worker processes saves work and changes nothing: same outcome, invalid still refused."""

from __future__ import annotations

import io
import random

import orjson
from support import TEST_ID_KEY, make_mapper

from adapters.fhir import FhirBundleAdapter
from adapters.gp import GpAdapter
from gateway.bootstrap import bootstrap
from gateway.prevalidate import Prevalidator, _start_worker, validated_hashes
from gateway.settings import Settings
from gateway.store.resources import stream_type
from gateway.store.versioning import content_hash
from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population
from mappings.mapper import contribution_resource


def gp_extract() -> str:
    out = io.StringIO()
    write_gp(population(300, 5), out, random.Random(5), DefectPlan(0.1, 5))
    return out.getvalue()


def bundle(birth_date: str, nhs_number: str) -> bytes:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}],
        "birthDate": birth_date,
    }
    entry = {"fullUrl": "urn:uuid:1", "resource": patient, "request": {"method": "POST", "url": "Patient"}}
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})


async def ingest(settings: Settings, text: str, workers: int) -> tuple[dict[str, object], list[bytes]]:
    services = await bootstrap(settings)
    services.ingestor.prevalidator = Prevalidator(TEST_ID_KEY, workers) if workers else None
    try:
        report = await services.ingestor.run("gp", GpAdapter().read(io.StringIO(text)), "gp.csv")
        async with services.engine.connect() as conn:
            stored = [c for t in ("Patient", "CarePlan", "Provenance") async for c in stream_type(conn, t)]
    finally:
        if services.ingestor.prevalidator:
            services.ingestor.prevalidator.close()
        await services.close()
    outcome = {k: v for k, v in report.as_dict().items() if k != "run_id"}
    return outcome, [content_hash(orjson.loads(c)) for c in stored]


async def test_workers_give_the_same_store_and_report(tmp_path) -> None:
    text = gp_extract()
    settings = {"id_key": TEST_ID_KEY.decode(), "ingest_batch_size": 40}
    alone = await ingest(Settings(data_dir=tmp_path / "one", **settings), text, workers=0)
    helped = await ingest(Settings(data_dir=tmp_path / "two", **settings), text, workers=2)
    assert alone == helped
    assert alone[0]["quarantined"] > 0 and alone[0]["accepted"] > 250


def test_a_worker_vouches_only_for_content_that_passed() -> None:
    _start_worker(TEST_ID_KEY)
    good, bad = (
        next(iter(FhirBundleAdapter().read(io.BytesIO(bundle(d, "9990000018")))))
        for d in ("1950-01-02", "1950-13-45")
    )
    mapper = make_mapper()
    good_hash, bad_hash = (content_hash(contribution_resource(mapper.map(r))) for r in (good, bad))
    passed = set(validated_hashes([good, bad]))
    assert good_hash in passed
    assert bad_hash not in passed


async def test_invalid_content_is_still_quarantined_with_workers(sqlite_settings: Settings) -> None:
    services = await bootstrap(sqlite_settings)
    services.ingestor.prevalidator = Prevalidator(TEST_ID_KEY, 1)
    try:
        items = FhirBundleAdapter().read(io.BytesIO(bundle("1950-13-45", "9990000018")))
        report = await services.ingestor.run("fhir", items, "bundle.json")
    finally:
        services.ingestor.prevalidator.close()
        await services.close()
    assert report.accepted == 0
    assert dict(report.quarantined) == {"fhir-invalid": 1}
