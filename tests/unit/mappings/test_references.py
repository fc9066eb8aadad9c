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


def test_a_complex_extension_left_with_no_sub_extension_is_dropped_too() -> None:
    """Bottom up: the parent is judged once its children are cleaned, at every level (was stored as
    a bare ``{"url": ...}``, against ext-1)."""
    carer = "https://example.org/carer"
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "extension": [
            {
                "url": carer,
                "extension": [
                    {
                        "url": "who",
                        "extension": [{"url": "person", "valueReference": {"reference": "Patient/other"}}],
                    },
                    {"url": "since", "valueReference": {"reference": "Patient/other"}},
                ],
            },
            {
                "url": "https://example.org/contact",
                "extension": [
                    {"url": "who", "valueReference": {"reference": "Patient/other"}},
                    {"url": "role", "valueString": "neighbour"},
                ],
            },
        ],
    }
    assert settled(plan, {}, set())["extension"] == [
        {"url": "https://example.org/contact", "extension": [{"url": "role", "valueString": "neighbour"}]}
    ]
    alone = {**plan, "extension": plan["extension"][:1]}
    assert settled(alone, {}, set()) == {"resourceType": "CarePlan", "id": "cp1"}
