"""Validation's own failure modes."""

from __future__ import annotations

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
