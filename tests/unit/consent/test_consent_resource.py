"""Opt-outs as FHIR R4 Consent resources, and the GP extract's opt-out codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent

from consent.codes import GP_CODES, gp_opt_out
from consent.model import Authority, OptOut, OptOutKind
from consent.resource import consent_resource
from mappings.nhs_number import is_valid
from mappings.validate import validate

NHS = "9990000026"
POLICY = "https://concord.example.nhs.uk/policy/data-sharing-agreement/v3"
RECORDED = datetime(2024, 2, 10, 14, 5, 30, tzinfo=UTC)
WITHDRAWN = RECORDED + timedelta(days=40, hours=2)
LAST_UPDATED = "2024-03-21T16:05:30Z"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def make(kind: OptOutKind, withdrawn: bool, recorded: datetime = RECORDED) -> OptOut:
    made = OptOut(
        id=f"optout-{kind.value}-1",
        nhs_number=NHS,
        kind=kind,
        authority=Authority.PATIENT_AT_GP,
        recorded_by="dr-jones",
        recorded_by_ods="Y12345",
        recorded_at=recorded,
        source="api",
    )
    if withdrawn:
        return made.withdrawn(recorded + (WITHDRAWN - RECORDED), "reception-2", Authority.TELEPHONE)
    return made


def resource(kind: OptOutKind, withdrawn: bool, recorded: datetime = RECORDED) -> dict[str, Any]:
    return consent_resource(make(kind, withdrawn, recorded), "patient-abc-123", POLICY, 3, LAST_UPDATED)


CASES = [
    pytest.param(OptOutKind.LOCAL, False, id="local-active"),
    pytest.param(OptOutKind.LOCAL, True, id="local-withdrawn"),
    pytest.param(OptOutKind.NATIONAL, False, id="national-active"),
    pytest.param(OptOutKind.NATIONAL, True, id="national-withdrawn"),
]


def test_the_nhs_number_is_a_valid_test_range_number() -> None:
    assert is_valid(NHS)


@pytest.mark.parametrize(("kind", "withdrawn"), CASES)
def test_the_consent_is_valid_fhir(kind: OptOutKind, withdrawn: bool) -> None:
    body = resource(kind, withdrawn)
    Consent.model_validate(body)  # the same fhir.resources package (R4B models) mappings.validate uses
    validate(body)  # and the gateway's own validation, which every stored resource passes


def parsed(body: dict[str, Any]) -> dict[str, Any]:
    """The resource as fhir.resources reads it back: what a FHIR client would see."""
    model = Consent.model_validate(body)
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped


@pytest.mark.parametrize(("kind", "withdrawn"), CASES)
def test_the_consent_says_what_the_opt_out_is(kind: OptOutKind, withdrawn: bool) -> None:
    consent = parsed(resource(kind, withdrawn))

    assert consent["id"] == f"optout-{kind.value}-1"
    assert consent["meta"]["versionId"] == "3"
    assert consent["status"] == ("inactive" if withdrawn else "active")
    assert [(c["system"], c["code"]) for c in consent["scope"]["coding"]] == [
        ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
    ]
    assert [(c["system"], c["code"]) for c in consent["category"][0]["coding"]] == [
        ("http://loinc.org", "59284-0")
    ]
    assert consent["provision"]["type"] == "deny"
    assert [p["uri"] for p in consent["policy"]] == [POLICY]
    assert [(c["system"], c["code"]) for c in consent["policyRule"]["coding"]] == [
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTOUT")
    ]
    assert consent["patient"]["reference"] == "Patient/patient-abc-123"
    assert consent["patient"]["identifier"] == {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}
    assert consent["organization"][0]["identifier"]["value"] == "Y12345"


@pytest.mark.parametrize(("kind", "withdrawn"), CASES)
def test_the_provision_period_ends_only_when_withdrawn(kind: OptOutKind, withdrawn: bool) -> None:
    body = resource(kind, withdrawn)
    period = parsed(body)["provision"]["period"]
    assert body["dateTime"] == "2024-02-10T14:05:30Z"
    assert body["provision"]["period"]["start"] == "2024-02-10T14:05:30Z"
    assert "start" in period
    if withdrawn:
        assert body["provision"]["period"]["end"] == "2024-03-21T16:05:30Z"
        assert "end" in period
    else:
        assert "end" not in body["provision"]["period"]
        assert "end" not in period


@pytest.mark.parametrize(
    ("kind", "codes"),
    [(OptOutKind.LOCAL, ["TREAT"]), (OptOutKind.NATIONAL, ["HRESCH", "HOPERAT", "PUBHLTH"])],
)
def test_the_provision_purpose_follows_the_kind(kind: OptOutKind, codes: list[str]) -> None:
    for withdrawn in (False, True):
        purposes = resource(kind, withdrawn)["provision"]["purpose"]
        assert [(p["system"], p["code"]) for p in purposes] == [(ACT_REASON, c) for c in codes]


@pytest.mark.parametrize(("kind", "withdrawn"), CASES)
def test_the_extensions_carry_kind_authority_and_withdrawal(kind: OptOutKind, withdrawn: bool) -> None:
    by_url = {e["url"].rsplit("/", 1)[-1]: e for e in resource(kind, withdrawn)["extension"]}
    assert by_url["opt-out-kind"]["valueCoding"]["code"] == kind.value
    assert by_url["opt-out-authority"]["valueCoding"]["code"] == "patient-request-at-gp"
    assert by_url["recorded-by"]["valueString"] == "dr-jones"
    if withdrawn:
        parts = {e["url"]: e for e in by_url["opt-out-withdrawal"]["extension"]}
        assert parts["withdrawnBy"]["valueString"] == "reception-2"
        assert parts["authority"]["valueCoding"]["code"] == "telephone"
    else:
        assert "opt-out-withdrawal" not in by_url


def test_a_time_with_microseconds_and_another_offset_is_still_valid() -> None:
    recorded = datetime(2024, 7, 1, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    body = resource(OptOutKind.NATIONAL, True, recorded)
    assert body["dateTime"] == "2024-07-01T09:00:00.123456+01:00"
    validate(body)


# GP extract codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("LSCR-DISSENT", OptOutKind.LOCAL),
        ("lscr-dissent", OptOutKind.LOCAL),
        ("  Lscr-Dissent\t", OptOutKind.LOCAL),
        ("827241000000103", OptOutKind.NATIONAL),
        (" 827241000000103\n", OptOutKind.NATIONAL),
    ],
)
def test_known_gp_codes(code: str, kind: OptOutKind) -> None:
    assert gp_opt_out(code) == (kind, True)


@pytest.mark.parametrize(
    "code",
    ["", "   ", "UNKNOWN", "LSCR DISSENT", "LSCR-DISSENT-X", "82724100000010", "8272410000001030", "9Nd1."],
)
def test_an_unknown_gp_code_fails_closed_to_the_local_opt_out(code: str) -> None:
    assert gp_opt_out(code) == (OptOutKind.LOCAL, False)


def test_the_known_codes_are_exactly_the_two_agreed() -> None:
    assert GP_CODES == {"LSCR-DISSENT": OptOutKind.LOCAL, "827241000000103": OptOutKind.NATIONAL}
