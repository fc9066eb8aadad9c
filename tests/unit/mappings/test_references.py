"""``mappings.references.settled``: what is left of references a record may not store."""

from __future__ import annotations

from mappings.references import settled


def test_an_extension_left_without_its_value_is_dropped_and_so_is_an_empty_list() -> None:
    """ext-1: an extension has a value or extensions; one whose valueReference named someone else
    (removed) says nothing, and a list of nothing but such is no element at all."""
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "extension": [{"url": "https://example.org/carer", "valueReference": {"reference": "Patient/other"}}],
    }
    assert settled(plan, {}, set()) == {"resourceType": "CarePlan", "id": "cp1"}


def test_an_extension_with_a_value_left_is_kept() -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "extension": [
            {
                "url": "https://example.org/carer",
                "valueReference": {"reference": "Patient/other", "display": "A"},
            }
        ],
    }
    assert settled(plan, {}, set())["extension"] == [
        {"url": "https://example.org/carer", "valueReference": {"display": "A"}}
    ]
