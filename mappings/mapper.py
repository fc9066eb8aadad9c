"""One source record in, its part of the shared care record out.

For each record the mapper produces the source's *contribution* to the
person's shared Patient (demographics as this source holds them) and the
source's CarePlans, each with the Provenance that says where it came from.
The shared Patient itself is built from all contributions by
``mappings.shared_view``. Every resource keeps only the references that resolve
here for the person (``mappings.references``): their shared Patient, the
record's own CarePlans, its contained resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from adapters.records import PLAN_REFERENCE, SourceRecord
from mappings.engine import ODS_SYSTEM, Engine, MappingError, MappingIssue
from mappings.ids import IdMaker
from mappings.references import settled
from mappings.specs import SourceSpecs
from mappings.validate import NHS_NUMBER_SYSTEM, UKCORE_PATIENT

SOURCE_ID_BASE: Final = "https://fhir.concord.health/Id"

#: Who each source is, for Provenance when a record names no organisation.
SOURCE_NAMES: Final = {
    "gp": "GP practice extract",
    "acute": "Acute hospital ADT feed",
    "community": "Community health EPR",
    "social-care": "Council social care case management system",
    "fhir": "FHIR transaction Bundle",
}


@dataclass(slots=True)
class MappedRecord:
    """What one record maps to. ``resources`` are complete (id, meta.profile) but unversioned."""

    source: str
    local_id: str
    nhs_number: str
    patient_id: str
    contribution: dict[str, Any]
    resources: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[MappingIssue] = field(default_factory=list)
    source_ods: str | None = None
    opt_out_code: str | None = None
    #: When the source recorded this (its own timestamp, as sent); orders a source's contributions.
    recorded: str = ""
    #: A local id this record supersedes at its source (an HL7 A40 merge): its contribution is retired.
    replaces_local_id: str | None = None


class Mapper:
    def __init__(self, specs: Mapping[str, SourceSpecs], engine: Engine, ids: IdMaker) -> None:
        self.specs = specs
        self.engine = engine
        self.ids = ids
        for source_specs in specs.values():
            engine.check(source_specs.patient)
            if source_specs.care_plan:
                engine.check(source_specs.care_plan)

    def map(self, record: SourceRecord) -> MappedRecord:
        """Map one record or raise MappingError (with a stable reason) for quarantine."""
        specs = self.specs.get(record.source)
        if specs is None:
            raise MappingError(MappingIssue("no-mapping-spec", None, f"no mapping spec for {record.source}"))
        fields = record.fields
        patient = self.engine.apply(specs.patient, fields, fields)
        nhs = nhs_number_of(patient.body)
        if nhs is None:
            raise MappingError(MappingIssue("nhs-number-missing", "nhs_number", "no NHS number"))
        patient_id = self.ids.patient(nhs)
        person = f"Patient/{patient_id}"
        source_ods = _text(fields.get("source_ods")) or _text(fields.get("practice_ods"))
        out = MappedRecord(
            source=record.source,
            local_id=record.local_id,
            nhs_number=nhs,
            patient_id=patient_id,
            contribution=settled(patient.body, {}, {person}),
            warnings=list(patient.warnings),
            source_ods=source_ods,
            opt_out_code=_text(fields.get("opt_out_code")),
            recorded=_text(fields.get("recorded_at")) or "",
            replaces_local_id=_text(fields.get("replaces_local_id")),
        )
        if specs.care_plan is None or specs.care_plan.for_each is None:
            return out
        items = list(fields.get(specs.care_plan.for_each) or ())
        locals_ = [
            "/".join(_local_part(k, item, fields) for k in specs.care_plan.local_id) or record.local_id
            for item in items
        ]
        plan_ids = [self.ids.source_resource("CarePlan", record.source, local, nhs) for local in locals_]
        # The record's plans may name each other (entries of one pushed Bundle): by the ids given here.
        named = {PLAN_REFERENCE + lid: f"CarePlan/{pid}" for lid, pid in zip(locals_, plan_ids, strict=True)}
        allowed = {person, *named.values()}
        for item, local, plan_id in zip(items, locals_, plan_ids, strict=True):
            mapped = self.engine.apply(specs.care_plan, item, fields, {"patient": person})
            out.warnings.extend(mapped.warnings)
            body = {
                "resourceType": "CarePlan",
                "id": plan_id,
                "meta": {"profile": [specs.care_plan.profile]},
                **mapped.body,
                "subject": {"reference": person},
            }
            out.resources.append(settled(body, named, allowed))
            out.resources.append(
                provenance(self.ids, record.source, f"CarePlan/{plan_id}", [local], source_ods, "CarePlan")
            )
        return out


def _local_part(key: str, item: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    """One part of a plan's source id: a field of the plan, or with ``^`` of the record (the source's ODS)."""
    return str(fields.get(key[1:], "") if key.startswith("^") else item.get(key, ""))


def contribution_resource(m: MappedRecord) -> dict[str, Any]:
    """A source's contribution as a Patient of its own (validated before it joins the shared Patient)."""
    meta = {"profile": [UKCORE_PATIENT]}
    return {"resourceType": "Patient", "id": m.patient_id, "meta": meta, **m.contribution}


def nhs_number_of(patient: Mapping[str, Any]) -> str | None:
    for ident in patient.get("identifier", ()):
        if ident.get("system") == NHS_NUMBER_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def provenance(
    ids: IdMaker,
    source: str,
    target: str,
    local_ids: list[str],
    source_ods: str | None,
    what: str,
) -> dict[str, Any]:
    """Provenance of one source's contribution to ``target``, naming the source records it came from.

    ``recorded`` is stamped by the store when the Provenance changes.
    """
    who: dict[str, Any] = {"display": SOURCE_NAMES.get(source, source)}
    if source_ods:
        who["identifier"] = {"system": ODS_SYSTEM, "value": source_ods}
    return {
        "resourceType": "Provenance",
        "id": ids.make("Provenance", source, target),
        "target": [{"reference": target}],
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "UPDATE",
                    "display": "revise",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                            "display": "Author",
                        }
                    ]
                },
                "who": who,
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {"system": f"{SOURCE_ID_BASE}/{source}-{what.lower()}", "value": local_id},
                    "display": f"{SOURCE_NAMES.get(source, source)}: {what}",
                },
            }
            for local_id in sorted(local_ids)
        ],
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
