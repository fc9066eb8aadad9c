"""Validation's own failure modes."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from mappings.validate import ValidationFailure, validate


def test_an_unknown_resource_type_is_a_validation_failure_not_a_crash() -> None:
    with pytest.raises(ValidationFailure) as caught:
        validate({"resourceType": "NoSuchThing"})
    assert caught.value.reason == "fhir-unsupported-type"


@pytest.mark.parametrize("bad", ["Da\x00vies", "Mor\x1bris", "Smith\x0c"])
def test_a_control_character_in_any_string_is_invalid_and_named_by_path(bad: str) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": bad, "given": ["Ann"]}]}
    with pytest.raises(ValidationFailure) as failed:
        validate(patient)
    assert failed.value.reason == "fhir-invalid"
    assert str(failed.value) == "Patient.name.family: a control character (FHIR R4 strings hold none)"
    assert bad not in str(failed.value)


def test_tabs_and_line_ends_are_allowed_in_strings() -> None:
    validate({"resourceType": "Patient", "name": [{"text": "Ann\tSmith\r\nJones"}]})


@pytest.mark.parametrize("text", ["C:\\bin\\file", "a\\u0001 as typed", "form\\feed"])
def test_a_backslash_that_only_looks_like_an_escape_is_valid(text: str) -> None:
    validate({"resourceType": "Patient", "name": [{"text": text}]})


NHS_NUMBER = "9990000018"


def plan(*contained: object) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p"},
        "contained": list(contained),
    }


def test_a_contained_resource_of_a_type_r4_does_not_have_is_invalid_and_named() -> None:
    """An STU3 ProcedureRequest: fhir.resources meets it as a KeyError, not a ValidationError."""
    with pytest.raises(ValidationFailure) as failed:
        validate(plan({"resourceType": "ProcedureRequest", "id": "r1", "status": "active"}))
    assert failed.value.reason == "fhir-invalid"
    assert str(failed.value) == "contained.0: ProcedureRequest is not a FHIR R4 resource type"


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        (f"Smith {NHS_NUMBER}", "the resourceType is not a FHIR type name"),
        ("Procedure-Request", "the resourceType is not a FHIR type name"),
        (7, "the resourceType is not a string"),
        ({"text": "Smith"}, "the resourceType is not a string"),
    ],
)
def test_an_unknown_contained_type_that_is_not_a_type_name_is_described_not_quoted(
    kind: object, detail: str
) -> None:
    with pytest.raises(ValidationFailure) as failed:
        validate(plan({"resourceType": "Goal"}, {"resourceType": kind}))
    assert (failed.value.reason, str(failed.value)) == ("fhir-invalid", f"contained.1: {detail}")


def test_an_unknown_top_level_type_that_is_not_a_type_name_is_not_quoted() -> None:
    with pytest.raises(ValidationFailure) as failed:
        validate({"resourceType": f"Smith {NHS_NUMBER}"})
    assert failed.value.reason == "fhir-unsupported-type"
    assert NHS_NUMBER not in str(failed.value) and "Smith" not in str(failed.value)


def test_any_failure_of_the_validator_is_a_validation_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    class Breaks:
        @staticmethod
        def model_validate(resource: object) -> None:
            raise TypeError(f"cannot read {NHS_NUMBER}")

    monkeypatch.setattr("mappings.validate.get_fhir_model_class", lambda _name: Breaks)
    with pytest.raises(ValidationFailure) as failed:
        validate({"resourceType": "Patient"})
    assert failed.value.reason == "fhir-invalid"
    assert str(failed.value) == "the validator could not read it (TypeError)"


def test_an_unknown_element_is_named_only_when_shaped_like_an_element_name() -> None:
    with pytest.raises(ValidationFailure) as failed:
        validate({"resourceType": "Patient", "deceasedbool": True, f"Smith {NHS_NUMBER}": 1})
    assert str(failed.value) == ("deceasedbool: extra_forbidden; (not an element name): extra_forbidden")


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "birthDate": NHS_NUMBER, "name": [{"family": "Smith"}]},
        plan({"resourceType": "ProcedureRequest", "note": [{"text": NHS_NUMBER}]}),
        {"resourceType": "Patient", "deceasedBoolean": False, "deceasedDateTime": "2026-03-01"},
    ],
)
def test_a_failure_carries_no_record_content_in_its_traceback(resource: dict[str, Any]) -> None:
    """The validator's own message quotes the input: it is not kept as a cause or context."""
    resource["telecom"] = [{"system": "phone", "value": "0113 4960001"}]
    with pytest.raises(ValidationFailure) as failed:
        validate(resource)
    printed = "".join(traceback.format_exception(failed.value))
    for value in (NHS_NUMBER, "Smith", "0113 4960001", "2026-03-01"):
        assert value not in printed
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
