"""Validation's own failure modes."""

from __future__ import annotations

import pytest

from mappings.validate import ValidationFailure, validate


def test_an_unknown_resource_type_is_a_validation_failure_not_a_crash() -> None:
    with pytest.raises(ValidationFailure) as caught:
        validate({"resourceType": "NoSuchThing"})
    assert caught.value.reason == "fhir-unsupported-type"
