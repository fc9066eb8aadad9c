"""Reading an incoming FHIR Consent as an opt-out or a withdrawal: every rule, every diagnostic, no NHS number."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from consent.model import Authority, OptOut, OptOutKind
from consent.resource import consent_resource
from gateway.api.consent_resource import ConsentError, parse_opt_out, parse_withdrawal, patient_nhs_number

NUMBER = "9990000018"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
EXT = "https://fhir.concord.health/StructureDefinition"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def consent(*purposes: str, extension: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": NHS, "value": "999 000 0018"}},
        "provision": {"type": "deny"},
    }
    if purposes:
        body["provision"]["purpose"] = [{"system": ACT_REASON, "code": p} for p in purposes]
    if extension is not None:
        body["extension"] = extension
    return body


def kind_ext(code: str) -> dict[str, Any]:
    return {
        "url": f"{EXT}/opt-out-kind",
        "valueCoding": {"system": "https://fhir.concord.health/CodeSystem/opt-out-kind", "code": code},
    }


def authority_ext(code: str) -> dict[str, Any]:
    return {"url": f"{EXT}/opt-out-authority", "valueCoding": {"code": code}}


def stored(active: bool = True) -> dict[str, Any]:
    opt_out = OptOut(
        id="c0ffee",
        nhs_number=NUMBER,
        kind=OptOutKind.LOCAL,
        authority=Authority.PORTAL,
        recorded_by="epr-1",
        recorded_by_ods="RXX01",
        recorded_at=datetime(2026, 11, 1, tzinfo=UTC),
        source="api",
    )
    if not active:
        opt_out = opt_out.withdrawn(datetime(2026, 11, 2, tzinfo=UTC), "epr-1", Authority.PORTAL)
    return consent_resource(
        opt_out, "pid", "https://example.org/dsa", 1 if active else 2, "2026-11-01T00:00:00Z"
    )


@pytest.mark.parametrize(
    ("body", "kind", "authority"),
    [
        (consent("TREAT"), OptOutKind.LOCAL, Authority.PORTAL),
        (consent("HRESCH", "HOPERAT", "PUBHLTH"), OptOutKind.NATIONAL, Authority.PORTAL),
        (consent("PUBHLTH"), OptOutKind.NATIONAL, Authority.PORTAL),
        (consent("TREAT", "HRESCH"), OptOutKind.LOCAL, Authority.PORTAL),  # TREAT covers every purpose
        (consent(extension=[kind_ext("national")]), OptOutKind.NATIONAL, Authority.PORTAL),
        (
            consent("TREAT", extension=[kind_ext("local-scr"), authority_ext("telephone")]),
            OptOutKind.LOCAL,
            Authority.TELEPHONE,
        ),
        (
            consent(extension=[kind_ext("local-scr"), authority_ext("patient-request-at-gp")]),
            OptOutKind.LOCAL,
            Authority.PATIENT_AT_GP,
        ),
        (
            consent(extension=[{"url": f"{EXT}/opt-out-kind", "valueCode": "national"}]),
            OptOutKind.NATIONAL,
            Authority.PORTAL,
        ),
    ],
)
def test_an_opt_out_is_read_with_its_kind_and_authority(
    body: dict[str, Any], kind: OptOutKind, authority: Authority
) -> None:
    asked = parse_opt_out(body)
    assert (asked.nhs_number, asked.kind, asked.authority) == (NUMBER, kind, authority)


def test_a_stored_consent_reads_back_as_the_same_opt_out() -> None:
    asked = parse_opt_out(stored())
    assert (asked.nhs_number, asked.kind, asked.authority) == (NUMBER, OptOutKind.LOCAL, Authority.PORTAL)


INVALID: list[tuple[Any, str]] = [
    ("not an object", "the body must be a FHIR Consent resource"),
    ({**consent("TREAT"), "resourceType": "Patient"}, "the body must be a FHIR Consent resource"),
    ({**consent("TREAT"), "status": "inactive"}, "Consent.status must be active"),
    ({**consent("TREAT"), "scope": {"text": "privacy"}}, "Consent.scope must be patient-privacy"),
    ({**consent("TREAT"), "provision": {"type": "permit"}}, "Consent.provision.type must be deny"),
    ({k: v for k, v in consent("TREAT").items() if k != "provision"}, "Consent.provision.type must be deny"),
    ({**consent("TREAT"), "patient": {"reference": "Patient/1"}}, "Consent.patient.identifier with system"),
    (
        {**consent("TREAT"), "patient": {"identifier": {"system": "urn:oid:1.2", "value": NUMBER}}},
        "Consent.patient.identifier with system",
    ),
    (
        {**consent("TREAT"), "patient": {"identifier": {"system": NHS}}},
        "not a valid NHS number (nhs-number-missing)",
    ),
    (
        {**consent("TREAT"), "patient": {"identifier": {"system": NHS, "value": "9990000019"}}},
        "(nhs-number-check-digit)",
    ),
    (
        {**consent("TREAT"), "patient": {"identifier": {"system": NHS, "value": "99900000180"}}},
        "(nhs-number-format)",
    ),
    (consent(), "the opt-out kind is required"),
    (consent("ETREAT"), "only TREAT, HRESCH, HOPERAT and PUBHLTH"),
    (
        {**consent(), "provision": {"type": "deny", "purpose": [{"code": "TREAT"}]}},
        "coded in http://terminology.hl7.org",
    ),
    ({**consent(), "provision": {"type": "deny", "purpose": []}}, "must be a list of Codings"),
    (consent(extension=[kind_ext("everything")]), "opt-out-kind must be local-scr or national"),
    (consent("TREAT", extension=[kind_ext("national")]), "national contradicts provision.purpose"),
    (consent("HRESCH", extension=[kind_ext("local-scr")]), "local-scr contradicts provision.purpose"),
    (
        consent("TREAT", extension=[authority_ext("a friend")]),
        "opt-out-authority must be one of letter, patient-request-at-gp",
    ),
    (
        consent("TREAT", extension=[authority_ext("national-opt-out-service")]),
        "set by the gateway's own imports",
    ),
    (
        consent("TREAT", extension=[authority_ext("letter"), authority_ext("portal")]),
        "extension opt-out-authority is repeated",
    ),
]


@pytest.mark.parametrize(("body", "diagnostic"), INVALID)
def test_an_invalid_consent_gets_a_specific_diagnostic(body: Any, diagnostic: str) -> None:
    with pytest.raises(ConsentError) as caught:
        parse_opt_out(body)
    assert diagnostic in caught.value.diagnostics
    assert (caught.value.status, caught.value.code) == (400, "invalid")
    assert "9990000" not in caught.value.diagnostics  # no NHS number, valid or not


def test_the_nhs_number_is_normalised_and_never_echoed() -> None:
    assert patient_nhs_number({"patient": {"identifier": {"system": NHS, "value": "999-000-0018"}}}) == NUMBER
    with pytest.raises(ConsentError) as caught:
        patient_nhs_number({"patient": {"identifier": {"system": NHS, "value": "9990000019"}}})
    assert "9990000019" not in str(caught.value)


def test_a_withdrawal_is_the_stored_consent_with_status_inactive() -> None:
    current = stored()
    asked = parse_withdrawal({**current, "status": "inactive"}, current)
    assert (asked.withdraw, asked.authority) == (True, Authority.PORTAL)
    # meta and text are the server's: what the client sends there is ignored
    changed_meta = {
        **current,
        "status": "inactive",
        "meta": {"versionId": "9"},
        "text": {"status": "generated"},
    }
    assert parse_withdrawal(changed_meta, current).withdraw


def test_a_withdrawal_may_name_its_authority() -> None:
    current = stored()
    withdrawal = {
        "url": f"{EXT}/opt-out-withdrawal",
        "extension": [{"url": "authority", "valueCoding": {"code": "letter"}}],
    }
    body = {**current, "status": "inactive", "extension": [*current["extension"], withdrawal]}
    assert parse_withdrawal(body, current).authority is Authority.LETTER
    bad = copy.deepcopy(body)
    bad["extension"][-1]["extension"][0]["valueCoding"]["code"] = "gp-extract"
    with pytest.raises(ConsentError, match="gp-extract is set by the gateway"):
        parse_withdrawal(bad, current)


def test_sending_the_consent_back_unchanged_withdraws_nothing() -> None:
    assert not parse_withdrawal(stored(), stored()).withdraw
    withdrawn = stored(active=False)
    assert not parse_withdrawal(withdrawn, withdrawn).withdraw  # already withdrawn: a repeat


@pytest.mark.parametrize(
    ("change", "diagnostic", "status"),
    [
        (lambda c: c.pop("id"), "Consent.id is required and must match", 400),
        (lambda c: c.update(id="other"), "Consent.id is required and must match", 400),
        (lambda c: c.update(status="rejected"), "other statuses are not supported", 422),
        (lambda c: c.update(status="inactive", dateTime="2020-01-01"), "Consent.dateTime differs", 422),
        (lambda c: c["provision"].update(type="permit"), "Consent.provision differs", 422),
        (lambda c: c.update(status="inactive", **{"9990000018": 1}), "(an unknown element) differs", 422),
        (lambda c: c["patient"]["identifier"].update(value="9990000026"), "Consent.patient differs", 422),
    ],
)
def test_a_withdrawal_may_change_nothing_else(change: Any, diagnostic: str, status: int) -> None:
    current = stored()
    body = copy.deepcopy(current)
    body["status"] = "inactive"
    change(body)
    with pytest.raises(ConsentError) as caught:
        parse_withdrawal(body, current)
    assert diagnostic in caught.value.diagnostics
    assert caught.value.status == status
    assert "9990000" not in caught.value.diagnostics


def test_a_withdrawn_opt_out_cannot_be_made_active_again() -> None:
    withdrawn = stored(active=False)
    with pytest.raises(ConsentError, match="POST a new Consent") as caught:
        parse_withdrawal({**withdrawn, "status": "active"}, withdrawn)
    assert caught.value.status == 422
