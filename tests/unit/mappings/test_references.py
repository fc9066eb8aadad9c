"""``mappings.references.settled``: what is left of references a record may not store."""

from __future__ import annotations

import copy

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


def test_local_references_are_kept_only_to_what_is_contained() -> None:
    """The walk for ``#`` references runs only when one names a contained resource not kept: each
    case here takes a different way through ``settled``."""
    plan = {
        "resourceType": "CarePlan",
        "author": {"reference": "#gone", "display": "Dr A"},  # no such contained resource
        "goal": [{"reference": "#g"}],
        "contained": [
            {"resourceType": "Goal", "id": "g", "description": {"text": "walk"}},
            {"resourceType": "Goal", "id": "unused", "description": {"text": "x"}},  # dom-3
        ],
    }
    before = copy.deepcopy(plan)
    out = settled(plan, {}, set())
    assert plan == before  # pure: the resource given is not changed
    assert out["author"] == {"display": "Dr A"}
    assert out["goal"] == [{"reference": "#g"}]
    assert [c["id"] for c in out["contained"]] == ["g"]
    alone = settled({"resourceType": "CarePlan", "author": {"reference": "#x"}}, {}, set())
    assert alone == {"resourceType": "CarePlan"}
    itself = {"resourceType": "CarePlan", "contained": [{"resourceType": "Goal", "id": "g", "x": "#"}]}
    assert settled(itself, {}, set())["contained"] == itself["contained"]
    plain = {"resourceType": "CarePlan", "subject": {"reference": "Patient/p"}}
    assert settled(plain, {}, {"Patient/p"}) == plain
    named = {"resourceType": "CarePlan", "basedOn": [{"reference": "urn:uuid:1"}, {"reference": "X/y"}]}
    renamed = settled(named, {"urn:uuid:1": "CarePlan/c1"}, {"CarePlan/c1"})
    assert renamed["basedOn"] == [{"reference": "CarePlan/c1"}]
    assert named["basedOn"][0] == {"reference": "urn:uuid:1"}
