"""Content hashing and version stamping: what the store stamps never changes the hash, content always does."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.versioning import content_hash, instant_text, now, stamp

WHEN = datetime(2024, 7, 15, 9, 30, 0, 123456, tzinfo=UTC)


def care_plan() -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": "c1",
        "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-CarePlan"]},
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [{"detail": {"status": "scheduled", "kind": "ServiceRequest"}}],
    }


def provenance() -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": "v1",
        "meta": {"profile": ["urn:test"]},
        "target": [{"reference": "CarePlan/c1"}],
        "recorded": "2024-01-01T00:00:00.000Z",
        "agent": [{"who": {"display": "GP practice extract"}}],
    }


def test_the_hash_is_a_sha256_hex_digest() -> None:
    digest = content_hash(care_plan())
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_version_id_and_last_updated_are_ignored() -> None:
    plan = care_plan()
    stamped = stamp(plan, 7, WHEN)
    assert stamped["meta"]["versionId"] == "7"
    assert content_hash(stamped) == content_hash(plan)
    restamped = stamp(stamped, 8, WHEN + timedelta(days=1))
    assert content_hash(restamped) == content_hash(plan)


def test_either_stamp_alone_is_ignored() -> None:
    plan = care_plan()
    only_version = {**plan, "meta": {**plan["meta"], "versionId": "3"}}
    only_updated = {**plan, "meta": {**plan["meta"], "lastUpdated": "2024-01-01T00:00:00Z"}}
    assert content_hash(only_version) == content_hash(only_updated) == content_hash(plan)


def test_provenance_recorded_is_ignored() -> None:
    prov = provenance()
    later = {**prov, "recorded": "2025-06-30T12:00:00.000Z"}
    without = {k: v for k, v in prov.items() if k != "recorded"}
    assert content_hash(prov) == content_hash(later) == content_hash(without)
    assert content_hash(stamp(prov, 2, WHEN)) == content_hash(prov)


def test_recorded_counts_outside_provenance() -> None:
    plan = care_plan()
    assert content_hash({**plan, "recorded": "2024-01-01"}) != content_hash(plan)


def test_stamping_a_resource_without_meta_does_not_change_its_hash() -> None:
    prov = {k: v for k, v in provenance().items() if k != "meta"}
    assert content_hash(stamp(prov, 1, WHEN)) == content_hash(prov)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(status="completed"),
        lambda r: r["meta"].update(profile=["urn:other"]),
        lambda r: r["meta"].update(security=[{"code": "R"}]),
        lambda r: r["subject"].update(reference="Patient/p2"),
        lambda r: r["activity"][0]["detail"].update(status="completed"),
        lambda r: r["activity"].append({"detail": {"status": "scheduled"}}),
        lambda r: r.update(id="c2"),
        lambda r: r.pop("intent"),
        lambda r: r.update(title=""),
    ],
)
def test_any_other_change_changes_the_hash(change: Any) -> None:
    plan = care_plan()
    changed = copy.deepcopy(plan)
    change(changed)
    assert content_hash(changed) != content_hash(plan)
    assert content_hash(stamp(changed, 1, WHEN)) != content_hash(stamp(plan, 1, WHEN))


def test_list_order_is_content() -> None:
    plan = care_plan()
    plan["activity"] = [{"detail": {"status": "a"}}, {"detail": {"status": "b"}}]
    swapped = {**plan, "activity": list(reversed(plan["activity"]))}
    assert content_hash(swapped) != content_hash(plan)


def test_hashing_does_not_change_the_resource() -> None:
    prov = stamp(provenance(), 1, WHEN)
    before = copy.deepcopy(prov)
    content_hash(prov)
    assert prov == before


json_keys = st.text(min_size=1, max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=3),
    max_leaves=12,
)


def reorder(value: Any, rnd: st.DataObject) -> Any:
    if isinstance(value, dict):
        keys = rnd.draw(st.permutations(list(value)))
        return {k: reorder(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [reorder(v, rnd) for v in value]
    return value


@given(st.dictionaries(json_keys, json_values, max_size=6), st.data())
def test_key_order_does_not_change_the_hash(resource: dict[str, Any], data: st.DataObject) -> None:
    resource = {"resourceType": "Basic", "meta": {"versionId": "1", "profile": ["x"]}, **resource}
    assert content_hash(reorder(resource, data)) == content_hash(resource)


@pytest.mark.parametrize("meta", [True, ["versionId"], "versionId", 7, None])
def test_a_meta_that_is_not_an_object_is_hashed_as_it_is(meta: Any) -> None:
    resource = {"resourceType": "Basic", "meta": meta}
    assert content_hash(resource) == content_hash({"meta": meta, "resourceType": "Basic"})
    assert content_hash(resource) != content_hash({"resourceType": "Basic"})


def test_stamp_sets_version_and_instant_and_copies() -> None:
    plan = care_plan()
    stamped = stamp(plan, 3, WHEN)
    assert stamped["meta"] == {
        "profile": plan["meta"]["profile"],
        "versionId": "3",
        "lastUpdated": "2024-07-15T09:30:00.123Z",
    }
    assert "versionId" not in plan["meta"]  # the input is untouched
    assert "recorded" not in stamped


def test_stamp_adds_meta_and_sets_provenance_recorded() -> None:
    prov = {k: v for k, v in provenance().items() if k not in ("meta", "recorded")}
    stamped = stamp(prov, 1, WHEN)
    assert stamped["meta"] == {"versionId": "1", "lastUpdated": "2024-07-15T09:30:00.123Z"}
    assert stamped["recorded"] == "2024-07-15T09:30:00.123Z"
    assert "recorded" not in prov


def test_instants_are_utc_with_milliseconds() -> None:
    bst = timezone(timedelta(hours=1))
    assert instant_text(datetime(2024, 7, 15, 10, 30, tzinfo=bst)) == "2024-07-15T09:30:00.000Z"
    assert instant_text(WHEN) == "2024-07-15T09:30:00.123Z"


def test_now_is_aware_utc() -> None:
    assert now().utcoffset() == timedelta(0)
