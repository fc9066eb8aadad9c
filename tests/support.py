"""Helpers shared by the mapping tests: one test mapper, validating what a record maps to, tallying an
extract; records senders send that concord must refuse."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from adapters.records import Item, RecordError
from mappings.engine import Engine, MappingError
from mappings.ids import IdMaker
from mappings.mapper import MappedRecord, Mapper
from mappings.shared_view import Contribution, merge
from mappings.specs import load_specs
from mappings.terminology import load_tables
from mappings.validate import validate

TEST_ID_KEY = b"0" * 32
#: What the store stamps on Provenance.recorded; set here so mapped Provenance validates.
RECORDED = "2026-01-01T00:00:00+00:00"


def make_mapper() -> Mapper:
    return Mapper(load_specs(), Engine(load_tables()), IdMaker(TEST_ID_KEY))


def validate_mapped(mapped: MappedRecord) -> dict[str, list[dict[str, Any]]]:
    """Validate everything one record maps to, as the store will see it; the resources by type.

    The shared Patient is merged from the record's contribution alone. Contained resources
    must have unique ids, every ``#id`` reference must resolve and every contained resource
    must be referenced.
    """
    patient, _ = merge(mapped.patient_id, [Contribution(mapped.source, mapped.local_id, mapped.contribution)])
    validate(patient)
    out: dict[str, list[dict[str, Any]]] = {"Patient": [patient]}
    for resource in mapped.resources:
        if resource["resourceType"] == "Provenance":
            resource = {**resource, "recorded": RECORDED}
        validate(resource)
        check_contained(resource)
        out.setdefault(resource["resourceType"], []).append(resource)
    return out


def check_contained(resource: dict[str, Any]) -> None:
    ids = [c["id"] for c in resource.get("contained", ())]
    assert len(ids) == len(set(ids)), "contained ids are not unique"
    local = {r[1:] for r in _references(resource) if r.startswith("#")}
    assert local == set(ids), "a #reference does not resolve, or a contained resource is not referenced"


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for k, v in node.items() if k != "contained" for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def tally(mapper: Mapper, items: Iterable[Item]) -> Counter[str]:
    """Map a whole extract: count each quarantine reason and warning, and ``mapped``; validate every mapping."""
    seen: Counter[str] = Counter()
    for item in items:
        if isinstance(item, RecordError):
            seen[item.reason] += 1
            continue
        try:
            mapped = mapper.map(item)
        except MappingError as exc:
            seen[exc.issue.reason] += 1
            continue
        validate_mapped(mapped)
        seen["mapped"] += 1
        seen.update(w.reason for w in mapped.warnings)
    return seen


def plan_containing_stu3(plan_id: str, subject: str) -> dict[str, Any]:
    """A CarePlan that contains an STU3 ProcedureRequest (a type R4 does not have), as senders moving
    to R4 still send: the record it belongs to must be quarantined, the rest of its Bundle stored."""
    return {
        "resourceType": "CarePlan",
        "id": plan_id,
        "status": "active",
        "intent": "plan",
        "subject": {"reference": subject},
        "contained": [{"resourceType": "ProcedureRequest", "id": "r1", "status": "active"}],
        "activity": [{"reference": {"reference": "#r1"}}],
    }
