"""What ingest leaves in the store, on SQLite and PostgreSQL: versions and outbox, replay, conflicts, merges."""

from __future__ import annotations

import io

import orjson
from sqlalchemy import func, select

from adapters.acute import AcuteAdapter
from adapters.fhir import FhirBundleAdapter
from adapters.gp import COLUMNS, GpAdapter
from gateway.bootstrap import Services
from gateway.ingest import MERGED_PATIENT_INVALID, Ingestor
from gateway.report import IngestReport
from gateway.store import people, quarantine
from gateway.store.resources import history, read_current
from gateway.store.schema import conflicts, contributions, outbox, resource_history, resources
from mappings.engine import Engine
from mappings.mapper import Mapper
from mappings.specs import load_specs
from mappings.terminology import Concept, ConceptMapTable, load_tables

NHS = "9990000018"


def gp_row(**cells: str) -> str:
    values = dict.fromkeys(COLUMNS, "")
    values.update(
        practice_ods="Y90001",
        gp_patient_id="GP1",
        nhs_number=NHS,
        nhs_number_status="01",
        family_name="Davies",
        given_names="Amelia",
        date_of_birth="1944-07-30",
        sex="F",
        plan_id="GP1-CP1",
        plan_type="LTC-DM",
        plan_status="ACTIVE",
        plan_start="2024-05-04",
        activities="HBA1C|SCHEDULED|2025-01-01",
        recorded_at="2024-05-04T09:00:00+00:00",
    )
    values.update(cells)
    return ",".join(COLUMNS) + "\n" + ",".join(values[c] for c in COLUMNS) + "\n"


async def ingest_gp(services: Services, text: str) -> IngestReport:
    return await services.ingestor.run("gp", GpAdapter().read(io.StringIO(text)), "gp.csv")


async def test_a_changed_record_makes_a_new_version_with_history_and_one_outbox_row_each(
    services: Services,
) -> None:
    await ingest_gp(services, gp_row())
    report = await ingest_gp(services, gp_row(family_name="Davies-Okafor"))
    assert (report.changed, report.new, report.unchanged) == (1, 0, 0)
    patient_id = services.mapper.ids.patient(NHS)
    async with services.engine.connect() as conn:
        versions = [orjson.loads(v) for v in await history(conn, "Patient", patient_id)]
        current = orjson.loads(await read_current(conn, "Patient", patient_id) or b"{}")
        versions_written = (
            await conn.execute(select(func.count()).select_from(resource_history))
        ).scalar_one()
        queued = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert [v["meta"]["versionId"] for v in versions] == ["2", "1"]
    assert [v["name"][0]["family"] for v in versions] == ["Davies-Okafor", "Davies"]
    assert current == versions[0]
    assert versions[0]["meta"]["lastUpdated"] >= versions[1]["meta"]["lastUpdated"]
    assert queued == versions_written  # every version written queued exactly one publication


async def test_a_quarantined_record_replays_once_its_map_is_fixed(services: Services) -> None:
    first = await ingest_gp(services, gp_row(plan_status="PENDING-REVIEW"))
    assert dict(first.quarantined) == {"unknown-code": 1}
    async with services.engine.connect() as conn:
        (held,) = await quarantine.listing(conn)
    adapters = {"gp": GpAdapter()}

    again = await services.ingestor.replay([held.id], adapters)
    assert dict(again.quarantined) == {"unknown-code": 1}
    async with services.engine.connect() as conn:
        assert [q.status for q in await quarantine.listing(conn, status=None)] == ["open"]

    tables = dict(load_tables())
    status = tables["careplan-status"]
    tables["careplan-status"] = ConceptMapTable(
        status.id,
        status.title,
        status.source_system,
        {**status.entries, "PENDING-REVIEW": Concept("http://hl7.org/fhir/request-status", "draft", "Draft")},
    )
    fixed = Ingestor(services.engine, Mapper(load_specs(), Engine(tables), services.mapper.ids))
    replayed = await fixed.replay([held.id], adapters)
    assert (replayed.accepted, replayed.quarantined_total) == (1, 0)
    async with services.engine.connect() as conn:
        assert [q.status for q in await quarantine.listing(conn, status=None)] == ["replayed"]
        assert await quarantine.listing(conn) == []


async def test_a_message_over_the_size_limit_stays_quarantined_for_that_reason_on_replay(
    services: Services,
) -> None:
    """Only its start is held, so a replay cannot read it: the reason stays, not hl7-no-pid."""
    big = adt("A08", f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F", "ZU1|" + "x" * 5000)
    report = await services.ingestor.run(
        "acute", AcuteAdapter(max_message_bytes=2000).read(io.BytesIO(big)), "big.hl7"
    )
    assert dict(report.quarantined) == {"hl7-message-too-large": 1}
    async with services.engine.connect() as conn:
        (held,) = await quarantine.listing(conn)
    again = await services.ingestor.replay([held.id], {"acute": AcuteAdapter()})
    assert dict(again.quarantined) == {"hl7-message-too-large": 1}
    async with services.engine.connect() as conn:
        (still,) = await quarantine.listing(conn)
    assert (still.id, still.reason, still.status) == (held.id, "hl7-message-too-large", "open")


async def test_a_patient_held_back_as_a_duplicate_stays_quarantined_on_replay(services: Services) -> None:
    """Each held-back entry keeps only its own Patient: replayed alone, both would be stored, the
    second over the first, the loss the hold-back prevents."""

    def patient(family: str) -> dict[str, object]:
        return {
            "resourceType": "Patient",
            "id": "epr-42",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
            "name": [{"family": family}],
        }

    data = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": patient("Smith")}, {"resource": patient("Jones")}],
        }
    )
    report = await services.ingestor.run("fhir", FhirBundleAdapter().read(io.BytesIO(data)), "p.json")
    assert dict(report.quarantined) == {"fhir-duplicate-resource": 2}
    async with services.engine.connect() as conn:
        held = await quarantine.listing(conn)
    again = await services.ingestor.replay([h.id for h in held], {"fhir": FhirBundleAdapter()})
    assert (again.accepted, dict(again.quarantined)) == (0, {"fhir-duplicate-resource": 2})
    async with services.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(contributions))).scalar_one()
    assert stored == 0


async def test_two_dates_of_birth_are_reported_not_resolved(services: Services) -> None:
    await ingest_gp(services, gp_row())
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
        "birthDate": "1944-03-07",
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": patient}],
    }
    report = await services.ingestor.run(
        "fhir", FhirBundleAdapter().read(io.BytesIO(orjson.dumps(bundle))), "b.json"
    )
    assert dict(report.conflicts) == {"birthDate": 1}
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(conflicts.c.element, conflicts.c.sources))).all()
        shared = orjson.loads(await read_current(conn, "Patient", services.mapper.ids.patient(NHS)) or b"{}")
    assert [tuple(r) for r in rows] == [("birthDate", "fhir,gp")]
    assert shared["birthDate"] == "1944-07-30"  # the GP's, by precedence; the other is only reported


def adt(event: str, pid: str, *more: str, facility: str = "R9Z01", at: str = "20260401120000") -> bytes:
    msh = f"MSH|^~\\&|PAS|{facility}|CONCORD|ICB|{at}||ADT^{event}|C{event}|P|2.5"
    return "\r".join([msh, f"EVN|{event}|{at}", pid, *more]).encode() + b"\r"


async def test_an_hl7_merge_retires_the_old_hospital_number(services: Services) -> None:
    old = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F"
    new = f"PID|1||H2^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F"
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A01", old))), "a.hl7")
    report = await services.ingestor.run(
        "acute", AcuteAdapter().read(io.BytesIO(adt("A40", new, "MRG|H1^^^R9Z01^MR"))), "b.hl7"
    )
    assert report.accepted == 1
    async with services.engine.connect() as conn:
        held = (
            await conn.execute(select(contributions.c.local_id).where(contributions.c.source == "acute"))
        ).all()
    assert [r[0] for r in held] == ["H2"]


async def test_a_merge_retires_an_old_hospital_number_seen_earlier_in_the_same_file(
    services: Services,
) -> None:
    old = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Oldname^Ann||19500102|F"
    new = f"PID|1||H2^^^R9Z01^MR~{NHS}^^^NHS^NH||Newname^Ann||19500102|F"
    data = adt("A01", old) + adt("A40", new, "MRG|H1^^^R9Z01^MR")
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "merge.hl7")
    assert report.accepted == 2
    async with services.engine.connect() as conn:
        held = (
            await conn.execute(select(contributions.c.local_id).where(contributions.c.source == "acute"))
        ).all()
        patient = orjson.loads(await read_current(conn, "Patient", services.mapper.ids.patient(NHS)) or b"{}")
    assert [r[0] for r in held] == ["H2"]
    assert patient["name"][0]["family"] == "Newname"


OTHER_NHS = "9990000026"


#: Trust R9Z02's patient H1: someone else than R9Z01's H1.
THEIRS_PID = f"PID|1||H1^^^R9Z02^MR~{OTHER_NHS}^^^NHS^NH||Beta^Bob||19700101|M"


async def acute_held(services: Services) -> list[tuple[str, str, str]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            select(contributions.c.source_ods, contributions.c.local_id, contributions.c.nhs_number)
            .where(contributions.c.source == "acute")
            .order_by(contributions.c.source_ods, contributions.c.nhs_number)
        )
        return [tuple(r) for r in rows]


async def test_a_merge_that_keeps_the_hospital_number_keeps_the_survivor(services: Services) -> None:
    """Two NHS numbers joined under one hospital number: only the merged-away number's record goes."""
    duplicate = f"PID|1||H2^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH||Dup^Anna||19600101|F"
    survivor = f"PID|1||H2^^^R9Z01^MR~{NHS}^^^NHS^NH||Survivor^Anna||19600101|F"
    merge = f"MRG|H2^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH"
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A01", duplicate))), "a.hl7")
    report = await services.ingestor.run(
        "acute", AcuteAdapter().read(io.BytesIO(adt("A40", survivor, merge))), "b.hl7"
    )
    assert report.accepted == 1
    assert await acute_held(services) == [("R9Z01", "H2", NHS)]
    async with services.engine.connect() as conn:
        patient = orjson.loads(await read_current(conn, "Patient", services.mapper.ids.patient(NHS)) or b"{}")
    assert patient["name"][0]["family"] == "Survivor"


async def test_a_merge_that_keeps_the_hospital_number_in_one_file_keeps_the_survivor(
    services: Services,
) -> None:
    duplicate = f"PID|1||H2^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH||Dup^Anna||19600101|F"
    survivor = f"PID|1||H2^^^R9Z01^MR~{NHS}^^^NHS^NH||Survivor^Anna||19600101|F"
    data = adt("A01", duplicate) + adt("A40", survivor, f"MRG|H2^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH")
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "merge.hl7")
    assert report.accepted == 2
    assert await acute_held(services) == [("R9Z01", "H2", NHS)]


async def test_a_merge_in_a_batch_keeps_another_trusts_record_with_the_same_number(
    services: Services,
) -> None:
    ours = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Alpha^Anna||19600101|F"
    survivor = f"PID|1||H7^^^R9Z01^MR~{NHS}^^^NHS^NH||Alpha^Anna||19600101|F"
    theirs = adt("A01", THEIRS_PID, facility="R9Z02")  # another trust's patient with the same number
    data = adt("A01", ours) + adt("A40", survivor, "MRG|H1^^^R9Z01^MR") + theirs
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "mixed.hl7")
    assert report.accepted == 3
    assert await acute_held(services) == [("R9Z01", "H7", NHS), ("R9Z02", "H1", OTHER_NHS)]


async def test_a_person_whose_last_record_a_merge_retires_is_shown_as_inactive(services: Services) -> None:
    """Two NHS numbers, one person: the merged-away number's Patient becomes inactive instead of
    keeping the retired record's details."""
    duplicate = f"PID|1||H1^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH||Dup^Anna||19600101|F"
    survivor = f"PID|1||H2^^^R9Z01^MR~{NHS}^^^NHS^NH||Survivor^Anna||19600101|F"
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A01", duplicate))), "a.hl7")
    merge = adt("A40", survivor, f"MRG|H1^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH")
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(merge)), "b.hl7")
    assert report.accepted == 1
    ids = services.mapper.ids
    async with services.engine.connect() as conn:
        gone = orjson.loads(await read_current(conn, "Patient", ids.patient(OTHER_NHS)) or b"{}")
        kept = orjson.loads(await read_current(conn, "Patient", ids.patient(NHS)) or b"{}")
    assert gone["active"] is False and "name" not in gone
    assert gone["identifier"] == [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": OTHER_NHS}]
    assert "link" not in gone  # naming the survivor would tell a reader concord holds them
    assert gone["meta"]["versionId"] == "2"
    assert kept["name"][0]["family"] == "Survivor"
    assert await acute_held(services) == [("R9Z01", "H2", NHS)]


async def test_a_merge_retires_only_the_merging_trusts_hospital_number(services: Services) -> None:
    """Another trust's patient with the same hospital number is someone else: untouched."""
    ours = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Alpha^Anna||19600101|F"
    theirs = adt("A01", THEIRS_PID, facility="R9Z02")  # another trust's patient with the same number
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A01", ours) + theirs)), "a.hl7")
    survivor = f"PID|1||H7^^^R9Z01^MR~{NHS}^^^NHS^NH||Alpha^Anna||19600101|F"
    await services.ingestor.run(
        "acute", AcuteAdapter().read(io.BytesIO(adt("A40", survivor, "MRG|H1^^^R9Z01^MR"))), "b.hl7"
    )
    assert await acute_held(services) == [("R9Z01", "H7", NHS), ("R9Z02", "H1", OTHER_NHS)]


async def test_a_death_indicator_and_an_email_reach_the_shared_patient(services: Services) -> None:
    contacts = "0113 4960001^PRN^PH~^NET^Internet^ann@example.org"
    pid = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F|||||{contacts}" + "|" * 15 + "||Y"
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A08", pid))), "d.hl7")
    assert report.accepted == 1
    async with services.engine.connect() as conn:
        patient = orjson.loads(await read_current(conn, "Patient", services.mapper.ids.patient(NHS)) or b"{}")
    assert patient["deceasedBoolean"] is True and "deceasedDateTime" not in patient
    assert sorted((t["system"], t["value"], t["use"]) for t in patient["telecom"]) == [
        ("email", "ann@example.org", "home"),
        ("phone", "0113 4960001", "home"),
    ]


async def test_one_stay_changed_twice_in_one_file_keeps_both_versions(services: Services) -> None:
    """A discharge and its cancellation in one batch: the care plan is written twice, in order."""
    pid = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F"
    pv1 = "PV1|1|I|W7^^^R9Z01|||||||110|||||||||V10"  # PV1-19: the visit number
    follow_up = "OBX|1|CWE|FOLLOWUP^Follow-up^L|1|BLOODS^Blood test^L||||||F|||20260410"
    data = adt("A03", pid, pv1, follow_up) + adt("A13", pid, pv1)
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "stay.hl7")
    assert (report.accepted, sum(report.quarantined.values())) == (2, 0)
    async with services.engine.connect() as conn:
        (plan_id,) = (
            await conn.execute(
                select(outbox.c.resource_id).where(outbox.c.resource_type == "CarePlan").distinct()
            )
        ).one()
        versions = [orjson.loads(v) for v in await history(conn, "CarePlan", plan_id)]
        current = orjson.loads(await read_current(conn, "CarePlan", plan_id) or b"{}")
        queued = (
            await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.resource_id == plan_id)
            )
        ).scalar_one()
    assert [(v["meta"]["versionId"], v["status"]) for v in versions] == [("2", "revoked"), ("1", "active")]
    assert current == versions[0]
    assert queued == 2  # each version is published


async def test_an_older_message_read_again_never_writes_over_a_plan(services: Services) -> None:
    """A discharge (A03), its cancellation (A13), then the A03's file read again: the plan stayed
    active again (a version 3 from the older message). It stays revoked; a newer A03 still counts."""
    pid = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F"
    pv1 = "PV1|1|I|W7^^^R9Z01|||||||110|||||||||V10"
    follow_up = "OBX|1|CWE|FOLLOWUP^Follow-up^L|1|BLOODS^Blood test^L||||||F|||20260410"
    discharge = adt("A03", pid, pv1, follow_up, at="20260405090000")

    async def ingest(data: bytes) -> None:
        report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "stay.hl7")
        assert (report.accepted, sum(report.quarantined.values())) == (1, 0)

    async def plan() -> tuple[str, str]:
        async with services.engine.connect() as conn:
            (plan_id,) = (
                await conn.execute(
                    select(outbox.c.resource_id).where(outbox.c.resource_type == "CarePlan").distinct()
                )
            ).one()
            current = orjson.loads(await read_current(conn, "CarePlan", plan_id) or b"{}")
        return current["meta"]["versionId"], current["status"]

    await ingest(discharge)
    await ingest(adt("A13", pid, pv1, at="20260406090000"))
    assert await plan() == ("2", "revoked")
    async with services.engine.connect() as conn:  # the plan's Provenance, unchanged, was sent later
        times = await conn.execute(
            select(resources.c.resource_type, resources.c.recorded).where(resources.c.recorded.is_not(None))
        )
        assert sorted(times.all()) == [("CarePlan", "20260406090000"), ("Provenance", "20260406090000")]
    await ingest(discharge)  # the older file again
    assert await plan() == ("2", "revoked")
    await ingest(adt("A03", pid, pv1, follow_up, at="20260407090000"))  # discharged again, later
    assert await plan() == ("3", "active")


# Sources that disagree on a choice element, and a person whose shared Patient will not validate -----

THIRD_NHS = "9990000034"
#: PID-29 (time of death) and PID-30 (death indicator): the acute feed's deceasedDateTime.
DIED_PID = f"PID|1||H1^^^R9Z01^MR~{NHS}^^^NHS^NH||Smith^Ann||19500102|F" + "|" * 21 + "20260301101500|Y"


def pushed(*patients: dict[str, object]) -> bytes:
    entries = [{"fullUrl": f"urn:uuid:{n}", "resource": p} for n, p in enumerate(patients)]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def fhir_patient(number: str, **elements: object) -> dict[str, object]:
    identifier = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": number}]
    return {"resourceType": "Patient", "id": f"p{number}", "identifier": identifier, **elements}


async def ingest_fhir(services: Services, body: bytes) -> IngestReport:
    return await services.ingestor.run("fhir", FhirBundleAdapter().read(io.BytesIO(body)), "b.json")


async def shared_patient(services: Services, number: str) -> dict[str, object]:
    async with services.engine.connect() as conn:
        stored = await read_current(conn, "Patient", services.mapper.ids.patient(number))
    return orjson.loads(stored) if stored else {}


async def conflict_rows(services: Services) -> list[tuple[str, str, str]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            select(conflicts.c.nhs_number, conflicts.c.element, conflicts.c.sources).order_by(
                conflicts.c.nhs_number, conflicts.c.element
            )
        )
        return [tuple(r) for r in rows]


async def test_a_time_of_death_and_a_pushed_deceased_boolean_make_one_element(services: Services) -> None:
    """Acute first, then a push saying ``deceasedBoolean: false``: the batch is stored whole."""
    await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(adt("A08", DIED_PID))), "d.hl7")
    report = await ingest_fhir(
        services, pushed(fhir_patient(NHS, deceasedBoolean=False), fhir_patient(OTHER_NHS, gender="male"))
    )
    assert (report.accepted, report.quarantined_total) == (2, 0)
    assert dict(report.conflicts) == {"deceased[x]": 1}
    patient = await shared_patient(services, NHS)
    assert patient["deceasedDateTime"] == "2026-03-01T10:15:00+00:00" and "deceasedBoolean" not in patient
    assert (await shared_patient(services, OTHER_NHS))["gender"] == "male"
    assert await conflict_rows(services) == [(NHS, "deceased[x]", "acute,fhir")]


async def test_a_death_after_a_pushed_deceased_boolean_is_stored_with_the_rest_of_its_file(
    services: Services,
) -> None:
    """The other order, three messages in one file; a later file naming the person goes in too."""
    await ingest_fhir(services, pushed(fhir_patient(NHS, deceasedBoolean=False)))
    others = [
        f"PID|1||H2^^^R9Z01^MR~{OTHER_NHS}^^^NHS^NH||Beta^Bob||19700101|M",
        f"PID|1||H3^^^R9Z01^MR~{THIRD_NHS}^^^NHS^NH||Gamma^Cy||19800101|F",
    ]
    data = adt("A08", others[0]) + adt("A08", DIED_PID) + adt("A08", others[1])
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "three.hl7")
    assert (report.accepted, report.quarantined_total, report.exit_code) == (3, 0, 0)
    for number in (OTHER_NHS, THIRD_NHS):
        assert (await shared_patient(services, number))["birthDate"] in ("1970-01-01", "1980-01-01")
    assert "deceasedBoolean" not in await shared_patient(services, NHS)
    later = adt("A08", DIED_PID.replace("Smith^Ann", "Smith^Anne"))
    again = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(later)), "later.hl7")
    assert (again.accepted, again.quarantined_total) == (1, 0)
    assert (await shared_patient(services, NHS))["name"] == [
        {"use": "official", "family": "Smith", "given": ["Anne"]}
    ]


async def plant_contribution(services: Services, number: str, **content: object) -> None:
    """A contribution stored under older, laxer rules: valid then, not now. No merge will validate."""
    identifier = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": number}]
    body = {"identifier": identifier, **content}
    planted = people.StoredContribution("gp", "G-OLD", number, "Y90001", None, "", "old", body)
    async with services.engine.begin() as conn:
        await people.save_contributions(conn, [planted])


async def test_a_person_whose_merged_patient_will_not_validate_keeps_it_and_the_batch_is_stored(
    services: Services,
) -> None:
    """The record that came in is stored like any other (its sender learns nothing of what others
    hold); the person's shared Patient stays as it was, and the data-quality report names them."""
    await ingest_fhir(services, pushed(fhir_patient(NHS)))
    before = await shared_patient(services, NHS)
    await plant_contribution(services, NHS, gender="x")
    data = adt("A08", THEIRS_PID, facility="R9Z02") + adt("A08", DIED_PID)
    report = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(data)), "two.hl7")
    assert (report.records, report.accepted, report.quarantined_total) == (2, 2, 0)
    assert report.conflicts[MERGED_PATIENT_INVALID] == 1
    assert (await shared_patient(services, OTHER_NHS))["name"][0]["family"] == "Beta"
    assert await shared_patient(services, NHS) == before  # the previous version, unchanged
    async with services.engine.connect() as conn:
        kept = (await conn.execute(select(contributions.c.local_id, contributions.c.nhs_number))).all()
        assert await quarantine.listing(conn) == []
    assert ("H1", NHS) in {tuple(r) for r in kept}  # the acute record is held, ready for a good merge
    assert (NHS, MERGED_PATIENT_INVALID, "acute,fhir,gp") in await conflict_rows(services)
    # A later batch naming the person goes in the same way.
    third = f"PID|1||H3^^^R9Z01^MR~{THIRD_NHS}^^^NHS^NH||Gamma^Cy||19800101|F"
    again = await services.ingestor.run(
        "acute", AcuteAdapter().read(io.BytesIO(adt("A08", DIED_PID) + adt("A08", third))), "again.hl7"
    )
    assert (again.accepted, again.quarantined_total) == (2, 0)
    assert await shared_patient(services, NHS) == before
    assert (await shared_patient(services, THIRD_NHS))["name"][0]["family"] == "Gamma"


async def test_a_new_person_whose_merged_patient_will_not_validate_gets_none_until_one_does(
    services: Services,
) -> None:
    """No previous version to keep: no shared Patient (and none published) until a merge validates;
    the person's records are stored meanwhile, and the report names them."""
    await plant_contribution(services, NHS, gender="x")
    report = await services.ingestor.run(
        "acute", AcuteAdapter().read(io.BytesIO(adt("A08", DIED_PID))), "a.hl7"
    )
    assert (report.accepted, report.quarantined_total, report.conflicts[MERGED_PATIENT_INVALID]) == (1, 0, 1)
    assert await shared_patient(services, NHS) == {}
    async with services.engine.connect() as conn:
        kept = {
            tuple(r)
            for r in (await conn.execute(select(contributions.c.local_id, contributions.c.nhs_number)))
        }
    assert ("H1", NHS) in kept
    # The source whose stored record broke the merge sends it again, valid, and the next record for
    # the person merges: the Patient is written.
    await plant_contribution(services, NHS, gender="female")
    changed = adt("A08", DIED_PID.replace("Smith^Ann", "Smith^Anne"))
    again = await services.ingestor.run("acute", AcuteAdapter().read(io.BytesIO(changed)), "b.hl7")
    assert again.conflicts[MERGED_PATIENT_INVALID] == 0
    assert (await shared_patient(services, NHS))["gender"] == "female"
