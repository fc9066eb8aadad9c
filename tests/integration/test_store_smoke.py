"""The store on SQLite and PostgreSQL: a GP extract in, the same extract again changes nothing."""

from __future__ import annotations

import io

from adapters.gp import GpAdapter
from gateway.bootstrap import Services
from gateway.store.resources import count_by_type

ROWS = """practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,plan_start,plan_end,activities,recorded_at
Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00
"""


async def test_reingest_changes_nothing(services: Services) -> None:
    first = await services.ingestor.run("gp", GpAdapter().read(io.StringIO(ROWS)), "gp.csv")
    second = await services.ingestor.run("gp", GpAdapter().read(io.StringIO(ROWS)), "gp.csv")
    assert (first.new, first.quarantined_total) == (1, 0)
    assert (second.new, second.changed, second.unchanged) == (0, 0, 1)
    async with services.engine.connect() as conn:
        assert await count_by_type(conn) == {"Patient": 1, "CarePlan": 1, "Provenance": 2}


FHIR_PUSH = b"""{"resourceType": "Bundle", "type": "transaction", "entry": [
 {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "p1",
   "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
   "birthDate": "1944-07-30"}, "request": {"method": "POST", "url": "Patient"}}]}"""


async def test_a_second_source_leaves_the_first_sources_provenance_alone(services: Services) -> None:
    from adapters.fhir import FhirBundleAdapter
    from gateway.store.resources import history

    await services.ingestor.run("gp", GpAdapter().read(io.StringIO(ROWS)), "gp.csv")
    report = await services.ingestor.run("fhir", FhirBundleAdapter().read(io.BytesIO(FHIR_PUSH)), "b.json")
    assert report.accepted == 1
    ids = services.mapper.ids
    patient = ids.patient("9990000018")
    gp_provenance = ids.make("Provenance", "gp", f"Patient/{patient}")
    async with services.engine.connect() as conn:
        assert len(await history(conn, "Provenance", gp_provenance)) == 1
        # GP holds every element the push sends, and the GP wins: the shared Patient is unchanged.
        assert len(await history(conn, "Patient", patient)) == 1
