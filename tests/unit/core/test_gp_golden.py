"""GP extract → UK Core: a golden file for a fixed sample, and invariants over every sample record.

The golden file ``tests/golden/gp_sample.expected.json`` is what the mapping of
``tests/golden/gp_sample.csv`` must produce. After an intended mapping change,
regenerate it with ``UPDATE_GOLDEN=1 python -m pytest tests/unit/core/test_gp_golden.py``
and review the diff like code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.gp import COLUMNS, GpAdapter
from adapters.records import RecordError
from gateway.synth.defects import EFFECTS, DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population
from mappings.engine import MappingError
from mappings.mapper import MappedRecord, Mapper
from mappings.shared_view import Contribution, merge
from mappings.validate import (
    NHS_NUMBER_SYSTEM,
    UKCORE_CAREPLAN,
    UKCORE_PATIENT,
    VERIFICATION_SYSTEM,
    VERIFICATION_URL,
    validate,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
SAMPLE = GOLDEN / "gp_sample.csv"
EXPECTED = GOLDEN / "gp_sample.expected.json"
RECORDED = "2026-01-01T00:00:00.000Z"  # what the store would stamp on Provenance.recorded


def outcomes(mapper: Mapper, extract: str) -> Iterator[tuple[str, MappedRecord | RecordError | MappingError]]:
    for item in GpAdapter().read(io.StringIO(extract, newline="")):
        if isinstance(item, RecordError):
            yield item.location, item
            continue
        try:
            yield item.location, mapper.map(item)
        except MappingError as exc:
            yield item.location, exc


def as_golden(location: str, outcome: MappedRecord | RecordError | MappingError) -> dict[str, Any]:
    if isinstance(outcome, RecordError):
        return {"location": location, "unreadable": outcome.reason, "field": outcome.field}
    if isinstance(outcome, MappingError):
        return {"location": location, "quarantined": outcome.issue.reason, "field": outcome.issue.field}
    return {"location": location, **dataclasses.asdict(outcome)}


def mapped_records(mapper: Mapper, extract: str) -> list[MappedRecord]:
    return [o for _, o in outcomes(mapper, extract) if isinstance(o, MappedRecord)]


def synthetic_extract(people: int, seed: int, defect_rate: float) -> str:
    out = io.StringIO()
    write_gp(population(people, seed), out, random.Random(seed), DefectPlan(defect_rate, seed))
    return out.getvalue()


# Golden file -------------------------------------------------------------------------------------


def test_gp_sample_matches_the_golden_file(mapper: Mapper) -> None:
    actual = [as_golden(loc, o) for loc, o in outcomes(mapper, SAMPLE.read_text(encoding="utf-8"))]
    if os.environ.get("UPDATE_GOLDEN") == "1":
        EXPECTED.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert EXPECTED.exists(), f"no golden file: run with UPDATE_GOLDEN=1 to create {EXPECTED.name}"
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == want, f"{want['location']} differs from the golden file"


def test_the_sample_covers_what_it_is_meant_to(mapper: Mapper) -> None:
    """Guards the golden sample itself: it must keep exercising each of these paths."""
    results = [o for _, o in outcomes(mapper, SAMPLE.read_text(encoding="utf-8"))]
    mapped = [o for o in results if isinstance(o, MappedRecord)]
    assert {o.issue.reason for o in results if isinstance(o, MappingError)} == {
        "nhs-number-check-digit",
        "unknown-code",
    }
    assert [o.reason for o in results if isinstance(o, RecordError)] == ["truncated-row"]
    assert any(not m.resources for m in mapped)  # a demographics-only row
    assert any(m.warnings for m in mapped)  # unknown codes kept
    assert {m.opt_out_code for m in mapped} >= {"LSCR-DISSENT", "827241000000103"}
    assert len({m.nhs_number for m in mapped}) < len(mapped)  # one person, two plans


# Invariants --------------------------------------------------------------------------------------


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def empty_paths(value: Any, path: str = "") -> Iterator[str]:
    """Where ``value`` holds an empty value (None, "", [], {}), as element paths."""
    if is_empty(value):
        yield path or "(root)"
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from empty_paths(child, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for n, child in enumerate(value):
            yield from empty_paths(child, f"{path}[{n}]")
    elif isinstance(value, str) and not value.strip():
        yield path


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "reference" and isinstance(child, str):
                yield child
            else:
                yield from references(child)
    elif isinstance(value, list):
        for child in value:
            yield from references(child)


def shared_patient(record: MappedRecord) -> dict[str, Any]:
    patient, found = merge(
        record.patient_id,
        [Contribution(record.source, record.local_id, record.contribution, record.recorded)],
    )
    assert found == []
    return patient


def sample_records(mapper: Mapper) -> list[MappedRecord]:
    return mapped_records(mapper, SAMPLE.read_text(encoding="utf-8")) + mapped_records(
        mapper, synthetic_extract(120, seed=11, defect_rate=0.15)
    )


@pytest.fixture(scope="module")
def records(mapper: Mapper) -> list[MappedRecord]:
    found = sample_records(mapper)
    assert len(found) > 100
    return found


def test_ids_are_unique_and_stable(records: list[MappedRecord]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        for resource in record.resources:
            earlier = seen.setdefault(resource["id"], resource)
            # The same id twice is only ever the same row twice (a duplicate in the extract).
            assert earlier == resource, f"{resource['resourceType']} id reused for different content"
    patient_ids = {r.patient_id for r in records}
    assert not patient_ids & set(seen)
    assert len(patient_ids) == len({r.nhs_number for r in records})


def test_ids_are_unique_within_the_golden_sample(mapper: Mapper) -> None:
    ids = [r["id"] for m in mapped_records(mapper, SAMPLE.read_text(encoding="utf-8")) for r in m.resources]
    assert len(ids) == len(set(ids)) > 0


def test_every_reference_resolves_within_the_output(mapper: Mapper, records: list[MappedRecord]) -> None:
    known = {f"Patient/{r.patient_id}" for r in records}
    known |= {f"{res['resourceType']}/{res['id']}" for r in records for res in r.resources}
    for record in records:
        assert record.patient_id == mapper.ids.patient(record.nhs_number)
        for resource in record.resources:
            for reference in references(resource):
                assert reference in known, f"{resource['resourceType']}: dangling reference"
        for plan in (r for r in record.resources if r["resourceType"] == "CarePlan"):
            assert plan["subject"] == {"reference": f"Patient/{record.patient_id}"}


def test_every_care_plan_has_its_provenance(records: list[MappedRecord]) -> None:
    for record in records:
        plans = {f"CarePlan/{r['id']}" for r in record.resources if r["resourceType"] == "CarePlan"}
        targets = {
            t["reference"] for r in record.resources if r["resourceType"] == "Provenance" for t in r["target"]
        }
        assert plans == targets


def test_nothing_is_empty_anywhere(records: list[MappedRecord]) -> None:
    for record in records:
        assert record.contribution
        assert list(empty_paths(record.contribution)) == []
        for resource in record.resources:
            assert list(empty_paths(resource)) == [], resource["resourceType"]


def test_every_resource_validates(records: list[MappedRecord]) -> None:
    for record in records:
        validate(shared_patient(record))
        for resource in record.resources:
            if resource["resourceType"] == "Provenance":
                resource = {**resource, "recorded": RECORDED}
            validate(resource)


def test_patient_carries_the_nhs_number_slice(records: list[MappedRecord]) -> None:
    for record in records:
        patient = shared_patient(record)
        assert patient["meta"]["profile"] == [UKCORE_PATIENT]
        [nhs] = [i for i in patient["identifier"] if i["system"] == NHS_NUMBER_SYSTEM]
        assert nhs["value"] == record.nhs_number
        [status] = [e for e in nhs["extension"] if e["url"] == VERIFICATION_URL]
        [coding] = status["valueCodeableConcept"]["coding"]
        assert coding["system"] == VERIFICATION_SYSTEM
        assert coding["code"] in {f"0{n}" for n in range(1, 9)}


def test_care_plans_carry_the_ukcore_profile(records: list[MappedRecord]) -> None:
    plans = [r for record in records for r in record.resources if r["resourceType"] == "CarePlan"]
    assert plans
    for plan in plans:
        assert plan["meta"]["profile"] == [UKCORE_CAREPLAN]


def test_synthetic_defects_fail_only_in_the_documented_ways(mapper: Mapper) -> None:
    reasons = {
        (o.reason if isinstance(o, RecordError) else o.issue.reason)
        for _, o in outcomes(mapper, synthetic_extract(120, seed=11, defect_rate=0.15))
        if not isinstance(o, MappedRecord)
    }
    documented = {"truncated-row"} | {
        e.split(":", 1)[1] for e in EFFECTS.values() if e.startswith("quarantine:")
    }
    assert reasons
    assert reasons <= documented


OPTIONAL_GROUPS = {
    "verification status": ("nhs_number_status",),
    "names": ("title", "family_name", "given_names"),
    "address": ("address_line_1", "address_line_2", "town", "postcode"),
    "phone": ("phone",),
    "demographics": ("sex", "date_of_birth"),
}
FULL_ROW = {
    "practice_ods": "Y90001",
    "gp_patient_id": "GP1",
    "nhs_number": "9990000018",
    "nhs_number_status": "01",
    "title": "Mr",
    "family_name": "Smith",
    "given_names": "John",
    "date_of_birth": "1950-01-02",
    "sex": "M",
    "address_line_1": "1 High Street",
    "town": "Barking",
    "postcode": "IG11 7AA",
    "phone": "0208 000 0000",
}


def one_row(values: dict[str, str]) -> str:
    return ",".join(COLUMNS) + "\n" + ",".join(values.get(c, "") for c in COLUMNS) + "\n"


@pytest.mark.parametrize("blank", [*OPTIONAL_GROUPS, "all"])
def test_blank_optional_columns_leave_no_hollow_elements(mapper: Mapper, blank: str) -> None:
    columns = sum(OPTIONAL_GROUPS.values(), ()) if blank == "all" else OPTIONAL_GROUPS[blank]
    [record] = mapped_records(mapper, one_row({**FULL_ROW, **dict.fromkeys(columns, "")}))
    patient = record.contribution
    assert ("extension" in patient["identifier"][0]) == ("nhs_number_status" not in columns)
    assert ("telecom" in patient) == ("phone" not in columns)
    assert ("address" in patient) == ("town" not in columns)
    assert ("name" in patient) == ("family_name" not in columns)
    assert list(empty_paths(patient)) == []
    validate(shared_patient(record))
