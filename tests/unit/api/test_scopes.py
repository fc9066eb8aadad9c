"""SMART system scopes: the grammar (v1 and v2), when one covers another, and what /token grants."""

from __future__ import annotations

import pytest

from gateway.api import scopes
from gateway.api.oauth import Rejected
from gateway.api.principal import Principal, Role

REGISTERED = {"system/*.read", "system/Consent.write"}


def refused(requested: str | None, registered: set[str] = REGISTERED) -> str:
    with pytest.raises(Rejected) as caught:
        scopes.grant(requested, registered)
    assert caught.value.error == "invalid_scope"
    return caught.value.description


def test_granted_scopes_are_those_requested_that_registered_ones_cover() -> None:
    grant = scopes.grant
    assert grant("system/Patient.read system/CarePlan.read", REGISTERED) == (
        "system/Patient.read",
        "system/CarePlan.read",
    )
    assert grant("system/Patient.write system/Consent.write system/Consent.write", REGISTERED) == (
        "system/Consent.write",
    )
    assert grant("system/*.read", REGISTERED) == ("system/*.read",)
    for requested in (None, "", "   ", "system/*.write", "system/*.*"):
        refused(requested)
    assert "too many" in refused(" ".join(f"system/T{i}.read" for i in range(65)))


@pytest.mark.parametrize(
    "malformed",
    [
        "system/Patient",
        "system/.read",
        "system/Patient.",
        "system/*",
        "system/patient.read",
        "system/Patient.readx",
        "system/Patient.sr",
        "system/Patient.rr",
        "system/Patient.rs?category=x",
        "user/Patient.read",
        "patient/*.read",
        "openid",
        "system//Patient.read",
    ],
)
def test_a_malformed_scope_refuses_the_whole_request(malformed: str) -> None:
    # Granting the rest would hide the client's mistake; SMART: invalid_scope.
    assert "SMART system scope" in refused(f"system/Patient.read {malformed}")
    assert scopes.parse(malformed) is None


def test_a_scope_for_a_type_concord_does_not_serve_is_not_granted() -> None:
    registered = {"system/*.read", "system/Observation.read"}
    assert scopes.grant("system/Observation.read system/Patient.read", registered) == ("system/Patient.read",)
    assert "served" in refused("system/Observation.read", registered)
    assert "served" in refused("system/Medication.read system/Observation.rs", registered)


@pytest.mark.parametrize(
    ("v2", "v1"),
    [
        ("system/Patient.rs", "system/Patient.read"),
        ("system/CarePlan.cud", "system/CarePlan.write"),
        ("system/*.cruds", "system/*.*"),
        ("system/*.rs", "system/*.read"),
    ],
)
def test_v2_scopes_are_the_v1_scopes_of_the_same_permissions(v2: str, v1: str) -> None:
    assert scopes.parse(v2) == scopes.parse(v1)
    assert scopes.covers(v2, v1) and scopes.covers(v1, v2)


def test_v2_permissions_cover_as_sets() -> None:
    assert scopes.covers("system/*.read", "system/Patient.r")
    assert scopes.covers("system/Patient.cruds", "system/Patient.write")
    assert not scopes.covers("system/Patient.r", "system/Patient.read")  # no search
    assert not scopes.covers("system/Patient.rs", "system/Patient.write")
    assert not scopes.covers("system/Patient.rs", "system/*.rs")
    assert not scopes.covers("system/Patient.rs", "system/CarePlan.rs")
    # A v1 registration grants v2 requests as asked, and they open the routes their v1 twins do.
    granted = scopes.grant("system/Patient.rs system/Consent.cud system/CarePlan.cud", REGISTERED)
    assert granted == ("system/Patient.rs", "system/Consent.cud")
    principal = Principal("c", "n", "RX1", Role.PROVIDER, frozenset(granted))
    assert principal.allows("system/Patient.read") and principal.allows("system/Consent.write")
    assert not principal.allows("system/CarePlan.read")


@pytest.mark.parametrize(
    "useless", ["system/Patient.r", "system/Patient.s", "system/Patient.cu", "system/*.rd", "system/*.cus"]
)
def test_a_v2_scope_that_opens_no_route_is_not_granted(useless: str) -> None:
    # Every route needs a whole v1 set (rs or cud): such a token would be 200 at /token, 403 everywhere.
    registered = {"system/*.*"}
    assert "rs to read or cud to write" in refused(useless, registered)
    assert scopes.grant(f"{useless} system/Patient.rs", registered) == ("system/Patient.rs",)


def test_v2_scopes_that_hold_a_route_set_are_granted_as_asked() -> None:
    registered = {"system/*.*"}
    for requested in ("system/Patient.rs", "system/Patient.cud", "system/Patient.cruds", "system/*.rds"):
        assert scopes.grant(requested, registered) == (requested,)
    assert all(scopes.opens_a_route(p) for p in map(scopes.parse, scopes.SUPPORTED) if p is not None)


def test_supported_scopes_parse() -> None:
    assert all(scopes.parse(s) is not None for s in scopes.SUPPORTED)
