"""Validation of every resource before it is stored: fhir.resources structure plus the code sets.

fhir.resources checks structure and datatypes but not required bindings (a
Patient with ``gender: "x"`` passes it), so the required code sets of the
elements concord writes are checked here, offline, from the R4 ValueSets.

    ValidationFailure    the resource is not valid FHIR R4 / UK Core; ``reason`` is stable

A failure's message says where and what is wrong, never the offending values (they may be patient
data) and never the validator's own message (pydantic's quotes the input); it is raised ``from None``
so that no traceback carries that message either. Of what a sender wrote, only short tokens shaped
like FHIR names appear (an unknown ``resourceType`` such as ``ProcedureRequest``, an unknown element).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
VERIFICATION_URL: Final = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
VERIFICATION_SYSTEM: Final = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
UKCORE_PATIENT: Final = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"
UKCORE_CAREPLAN: Final = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-CarePlan"

#: Required bindings (FHIR R4 / UK Core) on the elements concord maps, as code sets.
REQUIRED_CODES: Final[dict[str, frozenset[str]]] = {
    "Patient.gender": frozenset({"male", "female", "other", "unknown"}),
    "CarePlan.status": frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    "CarePlan.intent": frozenset({"proposal", "plan", "order", "option"}),
    "CarePlan.activity.detail.status": frozenset(
        {
            "not-started",
            "scheduled",
            "in-progress",
            "on-hold",
            "completed",
            "cancelled",
            "stopped",
            "unknown",
            "entered-in-error",
        }
    ),
    "CarePlan.activity.detail.kind": frozenset(
        {
            "Appointment",
            "CommunicationRequest",
            "DeviceRequest",
            "MedicationRequest",
            "NutritionOrder",
            "Task",
            "ServiceRequest",
            "VisionPrescription",
        }
    ),
    "Patient.identifier.nhsNumber.verificationStatus": frozenset(f"0{n}" for n in range(1, 9)),
}


class ValidationFailure(Exception):
    """``reason`` a stable code; the message names places and problems, never values."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def validate(resource: Mapping[str, Any]) -> None:
    """Raise ValidationFailure unless ``resource`` is valid, whatever way the validator fails (fhir_core
    meets some shapes with a KeyError or TypeError). Costs one fhir.resources parse."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise ValidationFailure("fhir-invalid", "resourceType missing")
    model = _model(resource_type)
    if model is None:
        raise ValidationFailure("fhir-unsupported-type", _type_problem(resource_type))
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise ValidationFailure("fhir-invalid", _summarise(exc)) from None
    except Exception as exc:  # noqa: BLE001 - fhir_core raises KeyError, TypeError... on shapes it did not expect
        raise ValidationFailure("fhir-invalid", _unreadable(resource, exc)) from None
    for problem in code_problems(resource):
        raise ValidationFailure("code-not-in-value-set", problem)
    # A scan of the JSON (about 3 us a resource) for what could be one; the walk (about 50 us) only then.
    if _MAYBE_CONTROL.search(orjson.dumps(resource)):
        where = control_character_at(resource, resource_type)
        if where is not None:
            detail = f"{where}: a control character (FHIR R4 strings hold none)"
            raise ValidationFailure("fhir-invalid", detail)


#: FHIR R4 (datatypes, string): no character below U+0020 but tab, line feed and carriage return.
#: fhir.resources does not check it.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
#: The same characters as JSON escapes them (orjson writes tab, LF and CR as \t, \n, \r); an escaped
#: backslash before "u0001" also matches, which the walk then clears.
_MAYBE_CONTROL: Final = re.compile(rb"\\(?:u00[01]|[bf])")


def control_character_at(value: Any, path: str) -> str | None:
    """The path of the first string in ``value`` holding a control character, or None."""
    if isinstance(value, str):
        return path if _CONTROL.search(value) else None
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((path, v) for v in value)
    else:
        return None
    for where, item in items:
        found = control_character_at(item, where)
        if found is not None:
            return found
    return None


#: A FHIR type name (``ProcedureRequest``) and element name (``deceasedBoolean``, ``_birthDate``): what of
#: a sender's text a failure may name. Anything else (``Smith 9990000018``) is only described.
_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z]{0,49}")
_ELEMENT_NAME: Final = re.compile(r"_?[a-z][A-Za-z0-9]{0,63}")


def _model(resource_type: str) -> Any:
    """The fhir.resources model of ``resource_type``, or None if it has none."""
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):  # fhir.resources 8 raises ValueError for an unknown type
        return None


def _type_problem(resource_type: object) -> str:
    """What is wrong with a resourceType: named if shaped like a FHIR type name, else described."""
    if not isinstance(resource_type, str):
        return "the resourceType is not a string"
    if not _TYPE_NAME.fullmatch(resource_type):
        return "the resourceType is not a FHIR type name"
    return f"{resource_type} is not a FHIR R4 resource type"


def _unreadable(resource: Mapping[str, Any], exc: Exception) -> str:
    """Why fhir.resources failed other than with a ValidationError: most often a nested resource
    (``contained``, a Bundle's entry) of a type it does not know, which it meets as a KeyError."""
    try:
        found = _unknown_resource_type(resource, "")
    except RecursionError:  # nested deeper than Python's stack: what failed the validator too
        found = None
    if found is not None:
        where, resource_type = found
        return f"{where}: {_type_problem(resource_type)}"
    return f"the validator could not read it ({type(exc).__name__})"


def _unknown_resource_type(value: Any, path: str) -> tuple[str, object] | None:
    """(path, resourceType) of the first resource nested in ``value`` whose type has no model."""
    if isinstance(value, Mapping):
        if path and "resourceType" in value:
            kind = value["resourceType"]
            if not isinstance(kind, str) or _model(kind) is None:
                return path, kind
        items: Any = ((k, v) for k, v in value.items() if isinstance(v, Mapping | list))
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _unknown_resource_type(item, f"{path}.{_loc_part(key)}" if path else _loc_part(key))
        if found is not None:
            return found
    return None


def _summarise(exc: ValidationError) -> str:
    """Where and what, without the offending values (they may be patient data)."""
    parts = []
    for err in exc.errors()[:3]:
        location = ".".join(_loc_part(p) for p in err.get("loc", ()))
        parts.append(f"{location or '(resource)'}: {err.get('type', 'invalid')}")
    return "; ".join(parts)


def _loc_part(part: object) -> str:
    """One step of a location: an index, or an element name (a sender's unknown key is only one if
    it is shaped like an element name)."""
    if isinstance(part, int) or _ELEMENT_NAME.fullmatch(str(part)):
        return str(part)
    return "(not an element name)"


def code_problems(resource: Mapping[str, Any]) -> Iterator[str]:
    """The required-binding problems of a Patient or CarePlan (nothing for other types)."""
    rt = resource.get("resourceType")
    if rt == "Patient":
        yield from _check("Patient.gender", resource.get("gender"))
        nhs = [i for i in resource.get("identifier", ()) if i.get("system") == NHS_NUMBER_SYSTEM]
        if len(nhs) > 1:
            yield "Patient.identifier: more than one NHS number (UK Core allows 0..1)"
        for ident in nhs:
            if not ident.get("value"):
                yield "Patient.identifier:nhsNumber.value is required"
            for ext in ident.get("extension", ()):
                if ext.get("url") != VERIFICATION_URL:
                    continue
                for coding in ext.get("valueCodeableConcept", {}).get("coding", ()):
                    if coding.get("system") == VERIFICATION_SYSTEM:
                        yield from _check(
                            "Patient.identifier.nhsNumber.verificationStatus", coding.get("code")
                        )
    elif rt == "CarePlan":
        yield from _check("CarePlan.status", resource.get("status"), required=True)
        yield from _check("CarePlan.intent", resource.get("intent"), required=True)
        if not resource.get("subject"):
            yield "CarePlan.subject is required"
        for activity in resource.get("activity", ()):
            detail = activity.get("detail")
            if detail:
                yield from _check("CarePlan.activity.detail.status", detail.get("status"), required=True)
                yield from _check("CarePlan.activity.detail.kind", detail.get("kind"))


def _check(element: str, value: Any, required: bool = False) -> Iterator[str]:
    if value is None:
        if required:
            yield f"{element} is required"
        return
    if value not in REQUIRED_CODES[element]:
        yield f"{element}: code not in the required value set"
