"""Log entries as FHIR R4 AuditEvent resources in the IHE BALP style, and as CSV rows. Pure.

IHE Basic Audit Log Patterns (BALP) gives the shapes followed here:

- a disclosure decision is a *Privacy Disclosure at Source* (DICOM 110106
  Export, subtype ISO 21089 ``disclose``, action R): the gateway is the source
  agent and the audit source, the requester the recipient. A deny is the same
  event with outcome 4 (minor failure) and the reason code in ``outcomeDesc``.
- a consent change is a RESTful *Create* (an opt-out: a new Consent) or
  *Update* (a withdrawal: the Consent's next version) with the patient known.

The events are "BALP style", not BALP-conformant: BALP requires network
addresses of client and server, which the log does not hold, so no
``meta.profile`` is claimed. Every field of the entry is kept (codes concord
defines ride along as second codings), with the entry's sequence number and
chain hash on an entity of their own, so an exported event can be traced back
to the signed chain. The log holds identifiers only, and so do these events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from consent.chain import Entry, Kind

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL: Final = "http://hl7.org/fhir/restful-interaction"
LIFECYCLE: Final = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
NHS_NUMBER: Final = "https://fhir.nhs.uk/Id/nhs-number"
ODS_CODE: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
LOG_ENTRY: Final = "https://fhir.concord.health/Id/audit-log-entry"
CONCORD_CODES: Final = "https://fhir.concord.health/CodeSystem"
ACTION_SYSTEM: Final = f"{CONCORD_CODES}/audit-action"
PURPOSE_SYSTEM: Final = f"{CONCORD_CODES}/purpose"
REQUESTER_KIND_SYSTEM: Final = f"{CONCORD_CODES}/requester-kind"
CONCORD_ENTITY_TYPE: Final = f"{CONCORD_CODES}/audit-entity-type"

#: purpose → v3 ActReason. Planning and commissioning are both healthcare operations in v3; the
#: concord purpose code beside it keeps them apart.
PURPOSE_OF_USE: Final[dict[str, tuple[str, str]]] = {
    "direct-care": ("TREAT", "treatment"),
    "research": ("HRESCH", "healthcare research"),
    "planning": ("HOPERAT", "healthcare operations"),
    "commissioning": ("HOPERAT", "healthcare operations"),
}

#: log action → (AuditEvent.action, restful-interaction code or None).
ACTIONS: Final[dict[str, tuple[str, str | None]]] = {
    "opt-out": ("C", "create"),
    "withdraw": ("U", "update"),
    "view": ("R", None),
    "export": ("R", None),
    "publish": ("R", None),
    "read": ("R", "read"),
    "search": ("R", "search-type"),
}

OUTCOME_SUCCESS: Final = "0"
OUTCOME_MINOR_FAILURE: Final = "4"

CSV_HEADER: Final = (
    "seq",
    "at",
    "kind",
    "action",
    "decision",
    "reason",
    "purpose",
    "nhs_number",
    "org_ods",
    "client_id",
    "requester_kind",
    "consent_id",
    "request_id",
    "entry_hash",
)

#: Characters that make a spreadsheet read a cell as a formula (CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")

Json = dict[str, Any]


def _coding(system: str, code: str, display: str | None = None) -> Json:
    coding: Json = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _ods(code: str) -> Json:
    if not code:
        return {"display": "unknown organisation"}  # FHIR strings cannot be empty
    return {"identifier": {"system": ODS_CODE, "value": code}}


def audit_event(seq: int, entry: Entry, entry_hash: str, gateway_ods: str) -> Json:
    """The AuditEvent for log entry ``seq`` (id ``log-{seq}``), as JSON-ready dicts."""
    disclosure = entry.kind == Kind.DISCLOSURE
    action, interaction = ACTIONS.get(entry.action, ("R" if disclosure else "E", None))
    subtype = [_coding(ACTION_SYSTEM, entry.action)]
    if interaction is not None:
        subtype.insert(0, _coding(RESTFUL, interaction, interaction))
    if disclosure:
        subtype.insert(0, _coding(LIFECYCLE, "disclose", "Disclose Record Lifecycle Event"))
        event_type = _coding(DCM, "110106", "Export")
    else:
        event_type = _coding(EVENT_TYPE, "rest", "Restful Operation")
    event: Json = {
        "resourceType": "AuditEvent",
        "id": f"log-{seq}",
        "type": event_type,
        "subtype": subtype,
        "action": action,
        "recorded": entry.at,
        "outcome": OUTCOME_MINOR_FAILURE if entry.decision == "deny" else OUTCOME_SUCCESS,
    }
    if entry.decision == "deny" and entry.reason:
        event["outcomeDesc"] = entry.reason
    if entry.purpose:
        event["purposeOfEvent"] = [_purpose(entry.purpose)]
    event["agent"] = _agents(entry, gateway_ods, disclosure)
    event["source"] = {
        "observer": _ods(gateway_ods),
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    event["entity"] = _entities(seq, entry, entry_hash, disclosure)
    return event


def _purpose(purpose: str) -> Json:
    known = PURPOSE_OF_USE.get(purpose)
    if known is None:
        # A purpose the requester sent that concord does not know (denied): text, not a code.
        return {"text": purpose}
    return {"coding": [_coding(ACT_REASON, *known), _coding(PURPOSE_SYSTEM, purpose)]}


def _agents(entry: Entry, gateway_ods: str, disclosure: bool) -> list[Json]:
    # BALP: on a disclosure the gateway is the source and the requester the recipient; on a
    # create or update the requester is the client (source) and the gateway the server.
    source = _coding(DCM, "110153", "Source Role ID")
    destination = _coding(DCM, "110152", "Destination Role ID")
    requester_role, gateway_role = (destination, source) if disclosure else (source, destination)
    roles = [requester_role]
    if entry.requester_kind:
        roles.append(_coding(REQUESTER_KIND_SYSTEM, entry.requester_kind))
    requester: Json = {"type": {"coding": roles}, "who": _ods(entry.org_ods)}
    if entry.client_id:
        requester["altId"] = entry.client_id
    requester["requestor"] = True
    gateway: Json = {"type": {"coding": [gateway_role]}, "who": _ods(gateway_ods), "requestor": False}
    return [requester, gateway]


def _entities(seq: int, entry: Entry, entry_hash: str, disclosure: bool) -> list[Json]:
    entities: list[Json] = []
    if entry.nhs_number:
        entities.append(
            {
                "what": {"type": "Patient", "identifier": {"system": NHS_NUMBER, "value": entry.nhs_number}},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    detail = _detail(entry.detail)
    if entry.consent_id:
        entities.append(_consent(entry, detail, disclosure))
    if disclosure:
        for outcome in ("returned", "withheld"):
            entities.extend(_disclosed(outcome, detail.get(outcome)))
    if entry.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": entry.request_id}},
                "type": _coding(BALP_ENTITY_TYPE, "XrequestId"),
            }
        )
    entities.append(
        {
            "what": {"identifier": {"system": LOG_ENTRY, "value": str(seq)}},
            "type": _coding(CONCORD_ENTITY_TYPE, "log-entry", "Audit log entry"),
            "detail": [{"type": "entry-hash", "valueString": entry_hash}],
        }
    )
    return entities


def _detail(text: str) -> Mapping[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _consent(entry: Entry, detail: Mapping[str, Any], disclosure: bool) -> Json:
    if disclosure:
        # BALP AuthZconsent: the Consent the decision rested on (a deny's opt-out).
        return {
            "what": {"reference": f"Consent/{entry.consent_id}"},
            "type": _coding(RESOURCE_TYPES, "Consent", "Consent"),
        }
    version = detail.get("version")
    reference = f"Consent/{entry.consent_id}"
    if isinstance(version, int):
        reference += f"/_history/{version}"
    details = [
        {"type": name, "valueString": str(detail[key])}
        for name, key in (("opt-out-kind", "kind"), ("source", "source"), ("version", "version"))
        if detail.get(key) is not None
    ]
    if entry.reason:
        details.append({"type": "authority", "valueString": entry.reason})
    consent: Json = {
        "what": {"reference": reference},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
    }
    if details:
        consent["detail"] = details
    return consent


def _disclosed(outcome: str, value: object) -> list[Json]:
    """Entities for what a disclosure returned or withheld: references, or counts by type (exports)."""
    entities: list[Json] = []
    if isinstance(value, list):
        for ref in value:
            if isinstance(ref, str) and ref:
                entities.append(
                    {
                        "what": {"reference": ref},
                        "type": _coding(ENTITY_TYPE, "2", "System Object"),
                        "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
                        "description": outcome,
                    }
                )
    elif isinstance(value, dict):
        for resource_type, count in sorted(value.items()):
            entities.append(
                {
                    "type": _coding(RESOURCE_TYPES, str(resource_type)),
                    "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
                    "description": outcome,
                    "detail": [{"type": "count", "valueString": str(count)}],
                }
            )
    return entities


def csv_row(seq: int, entry: Entry, entry_hash: str) -> list[str]:
    """One CSV row in ``CSV_HEADER`` order; empty cells for absent values.

    A cell that would start a spreadsheet formula (``=``, ``+``, ``-``, ``@``) is prefixed with ``'``.
    """
    values: dict[str, object] = {
        "seq": seq,
        "at": entry.at,
        "kind": entry.kind,
        "action": entry.action,
        "decision": entry.decision,
        "reason": entry.reason,
        "purpose": entry.purpose,
        "nhs_number": entry.nhs_number,
        "org_ods": entry.org_ods,
        "client_id": entry.client_id,
        "requester_kind": entry.requester_kind,
        "consent_id": entry.consent_id,
        "request_id": entry.request_id,
        "entry_hash": entry_hash,
    }
    return [_cell(values[name]) for name in CSV_HEADER]


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    # Request and client ids can come from outside; a spreadsheet must not run them as formulas.
    return "'" + text if text.startswith(_FORMULA_START) else text
