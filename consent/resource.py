"""Opt-outs as FHIR R4 Consent resources (scope patient-privacy, provision deny). Pure.

The data-sharing agreement is the Consent's ``policy``; the rule is HL7's
``OPTOUT``; what the opt-out covers is ``provision.purpose`` (v3 ActReason):
treatment for the local shared-care-record opt-out, research and operations
for the national data opt-out. A withdrawn opt-out stays as a Consent with
status ``inactive`` and its provision period closed.
"""

from __future__ import annotations

from typing import Any, Final

from consent.model import OptOut, OptOutKind

NHS_NUMBER: Final = "https://fhir.nhs.uk/Id/nhs-number"
ODS_CODE: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
EXTENSION_BASE: Final = "https://fhir.concord.health/StructureDefinition"
AUTHORITY_SYSTEM: Final = "https://fhir.concord.health/CodeSystem/opt-out-authority"
KIND_SYSTEM: Final = "https://fhir.concord.health/CodeSystem/opt-out-kind"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

PURPOSES: Final[dict[OptOutKind, tuple[tuple[str, str], ...]]] = {
    OptOutKind.LOCAL: (("TREAT", "treatment"),),
    OptOutKind.NATIONAL: (
        ("HRESCH", "healthcare research"),
        ("HOPERAT", "healthcare operations"),
        ("PUBHLTH", "public health"),
    ),
}


def consent_resource(
    opt_out: OptOut, patient_id: str, policy_uri: str, version_id: int, last_updated: str
) -> dict[str, Any]:
    """The Consent for one opt-out, as it stands now (active, or inactive once withdrawn)."""
    period: dict[str, str] = {"start": _instant(opt_out.recorded_at)}
    extensions: list[dict[str, Any]] = [
        {
            "url": f"{EXTENSION_BASE}/opt-out-kind",
            "valueCoding": {"system": KIND_SYSTEM, "code": opt_out.kind.value},
        },
        {
            "url": f"{EXTENSION_BASE}/opt-out-authority",
            "valueCoding": {"system": AUTHORITY_SYSTEM, "code": opt_out.authority.value},
        },
        {"url": f"{EXTENSION_BASE}/recorded-by", "valueString": opt_out.recorded_by},
    ]
    if opt_out.withdrawn_at is not None:
        period["end"] = _instant(opt_out.withdrawn_at)
        withdrawal: list[dict[str, Any]] = [{"url": "withdrawnBy", "valueString": opt_out.withdrawn_by or ""}]
        if opt_out.withdrawal_authority is not None:
            withdrawal.append(
                {
                    "url": "authority",
                    "valueCoding": {"system": AUTHORITY_SYSTEM, "code": opt_out.withdrawal_authority.value},
                }
            )
        extensions.append({"url": f"{EXTENSION_BASE}/opt-out-withdrawal", "extension": withdrawal})
    return {
        "resourceType": "Consent",
        "id": opt_out.id,
        "meta": {"versionId": str(version_id), "lastUpdated": last_updated},
        "extension": extensions,
        "status": "active" if opt_out.active else "inactive",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                    "display": "Privacy Consent",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": {
            "reference": f"Patient/{patient_id}",
            "identifier": {"system": NHS_NUMBER, "value": opt_out.nhs_number},
        },
        "dateTime": _instant(opt_out.recorded_at),
        "organization": [{"identifier": {"system": ODS_CODE, "value": opt_out.recorded_by_ods}}],
        "policy": [{"uri": policy_uri}],
        "policyRule": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "OPTOUT",
                    "display": "opt-out",
                }
            ]
        },
        "provision": {
            "type": "deny",
            "period": period,
            "purpose": [{"system": ACT_REASON, "code": c, "display": d} for c, d in PURPOSES[opt_out.kind]],
        },
    }


def _instant(value: Any) -> str:
    text: str = value.isoformat()
    return text.replace("+00:00", "Z")
