"""Log entries as AuditEvent (IHE BALP style) and CSV rows: every kind of entry is valid FHIR R4."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given
from hypothesis import strategies as st

from consent.auditevent import (
    ACT_REASON,
    BALP_ENTITY_TYPE,
    CSV_HEADER,
    DCM,
    LOG_ENTRY,
    NHS_NUMBER,
    ODS_CODE,
    PURPOSE_SYSTEM,
    REQUESTER_KIND_SYSTEM,
    RESTFUL,
    audit_event,
    csv_row,
)
from consent.chain import Entry, Kind, detail
from consent.model import Authority, OptOutKind, Purpose, Reason, RequesterKind
from mappings.validate import validate

AuditEvent = get_fhir_model_class("AuditEvent")

NHS = "9990000018"
HASH = "ab" * 32
GATEWAY = "RKL"
AT = "2024-05-01T09:30:00.123456Z"
CONSENT_ID = "0f" * 16


def entry(**changes: Any) -> Entry:
    values: dict[str, Any] = {
        "at": AT,
        "kind": Kind.DISCLOSURE,
        "action": "view",
        "request_id": "cli-1234",
        "requester_kind": RequesterKind.PROVIDER.value,
        "org_ods": "RXX01",
        "client_id": "epr-1",
        "nhs_number": NHS,
        "purpose": Purpose.DIRECT_CARE.value,
        "decision": "permit",
        "reason": Reason.NO_OBJECTION.value,
        "detail": detail(returned=["Patient/p1", "CarePlan/c1"]),
    }
    values.update(changes)
    return Entry(**values)


OPT_OUT = entry(
    kind=Kind.CONSENT_CHANGE,
    action="opt-out",
    requester_kind=RequesterKind.OPERATOR.value,
    org_ods=GATEWAY,
    client_id="cli:alice",
    purpose=None,
    decision=None,
    reason=Authority.PATIENT_AT_GP.value,
    consent_id=CONSENT_ID,
    detail=detail(kind=OptOutKind.LOCAL.value, source="cli", version=1),
)
WITHDRAW = entry(
    kind=Kind.CONSENT_CHANGE,
    action="withdraw",
    requester_kind=RequesterKind.OPERATOR.value,
    purpose=None,
    decision=None,
    reason=Authority.LETTER.value,
    consent_id=CONSENT_ID,
    detail=detail(kind=OptOutKind.NATIONAL.value, source="import", version=2),
)
PERMIT = entry()
DENY = entry(
    decision="deny",
    reason=Reason.LOCAL_OPT_OUT.value,
    consent_id=CONSENT_ID,
    detail=detail(withheld=["Patient/p1"]),
)
EXPORT_PERMIT = entry(
    action="export",
    requester_kind=RequesterKind.ANALYST.value,
    purpose=Purpose.RESEARCH.value,
    detail=detail(returned={"CarePlan": 3, "Patient": 1}),
)
EXPORT_DENY = entry(
    action="export",
    requester_kind=RequesterKind.OPERATOR.value,
    purpose=Purpose.PLANNING.value,
    decision="deny",
    reason=Reason.NATIONAL_OPT_OUT.value,
    consent_id=CONSENT_ID,
    detail=detail(withheld={"Patient": 1}),
)
UNKNOWN_PURPOSE = entry(
    action="search",
    purpose="marketing",
    decision="deny",
    reason=Reason.UNKNOWN_PURPOSE.value,
    detail=detail(withheld=[]),
)
FUTURE_ACTION = entry(action="read", requester_kind=RequesterKind.HIE.value, nhs_number=None, detail="{}")
SPARSE = entry(request_id="", client_id="", org_ods="", detail="not json")

EVERY_KIND = {
    "opt-out": OPT_OUT,
    "withdraw": WITHDRAW,
    "permit": PERMIT,
    "deny": DENY,
    "export-permit": EXPORT_PERMIT,
    "export-deny": EXPORT_DENY,
    "unknown-purpose": UNKNOWN_PURPOSE,
    "read-without-person": FUTURE_ACTION,
    "empty-strings": SPARSE,
}


def by_type(event: dict[str, Any], system: str, code: str) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if (e["type"]["system"], e["type"]["code"]) == (system, code)]


def codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


@pytest.mark.parametrize("name", EVERY_KIND)
def test_every_kind_of_entry_is_a_valid_r4_auditevent(name: str) -> None:
    event = audit_event(7, EVERY_KIND[name], HASH, GATEWAY)
    validate(event)  # the project's validator: fhir.resources R4B plus code sets
    parsed = AuditEvent.model_validate(orjson.loads(orjson.dumps(event)))
    assert parsed.id == "log-7"


@pytest.mark.parametrize("name", EVERY_KIND)
def test_every_event_carries_the_chain_evidence(name: str) -> None:
    event = audit_event(41, EVERY_KIND[name], HASH, GATEWAY)
    [evidence] = [
        e for e in event["entity"] if e.get("what", {}).get("identifier", {}).get("system") == LOG_ENTRY
    ]
    assert evidence["what"]["identifier"]["value"] == "41"
    assert evidence["detail"] == [{"type": "entry-hash", "valueString": HASH}]
    assert event["recorded"] == AT
    assert event["source"]["observer"] == {"identifier": {"system": ODS_CODE, "value": GATEWAY}}
    assert event["source"]["type"][0]["code"] == "4"


def test_a_permitted_view_is_a_privacy_disclosure_at_source() -> None:
    event = audit_event(3, PERMIT, HASH, GATEWAY)
    assert event["type"]["system"] == DCM and event["type"]["code"] == "110106"
    assert event["subtype"][0]["code"] == "disclose"
    assert event["action"] == "R"
    assert event["outcome"] == "0"
    assert "outcomeDesc" not in event
    assert codes(event["purposeOfEvent"][0]) == {(ACT_REASON, "TREAT"), (PURPOSE_SYSTEM, "direct-care")}
    requester, gateway = event["agent"]
    assert requester["requestor"] is True and gateway["requestor"] is False
    assert requester["who"] == {"identifier": {"system": ODS_CODE, "value": "RXX01"}}
    assert requester["altId"] == "epr-1"
    assert codes(requester["type"]) == {(DCM, "110152"), (REQUESTER_KIND_SYSTEM, "provider")}
    assert codes(gateway["type"]) == {(DCM, "110153")}
    # BALP: the source agent is the audit source.
    assert gateway["who"] == event["source"]["observer"]
    [patient] = [e for e in event["entity"] if e.get("what", {}).get("type") == "Patient"]
    assert patient["what"]["identifier"] == {"system": NHS_NUMBER, "value": NHS}
    assert (patient["type"]["code"], patient["role"]["code"]) == ("1", "1")
    returned = [
        (e["what"]["reference"], e["description"])
        for e in event["entity"]
        if "reference" in e.get("what", {})
    ]
    assert returned == [("Patient/p1", "returned"), ("CarePlan/c1", "returned")]
    [request] = by_type(event, BALP_ENTITY_TYPE, "XrequestId")
    assert request["what"]["identifier"]["value"] == "cli-1234"


def test_a_deny_names_its_reason_the_consent_and_what_was_withheld() -> None:
    event = audit_event(4, DENY, HASH, GATEWAY)
    assert (event["outcome"], event["outcomeDesc"]) == ("4", "local-opt-out")
    refs = {
        e["what"]["reference"]: e.get("description")
        for e in event["entity"]
        if "reference" in e.get("what", {})
    }
    assert refs == {f"Consent/{CONSENT_ID}": None, "Patient/p1": "withheld"}


def test_export_counts_become_one_entity_per_resource_type() -> None:
    event = audit_event(5, EXPORT_PERMIT, HASH, GATEWAY)
    counted = {
        e["type"]["code"]: (e["description"], e["detail"][0]["valueString"])
        for e in event["entity"]
        if e.get("detail", [{}])[0].get("type") == "count"
    }
    assert counted == {"CarePlan": ("returned", "3"), "Patient": ("returned", "1")}
    assert codes(event["purposeOfEvent"][0]) == {(ACT_REASON, "HRESCH"), (PURPOSE_SYSTEM, "research")}


@pytest.mark.parametrize(
    ("purpose", "v3"), [("direct-care", "TREAT"), ("research", "HRESCH"), ("planning", "HOPERAT")]
)
def test_purpose_of_event(purpose: str, v3: str) -> None:
    event = audit_event(1, entry(purpose=purpose), HASH, GATEWAY)
    assert (ACT_REASON, v3) in codes(event["purposeOfEvent"][0])
    assert (PURPOSE_SYSTEM, purpose) in codes(event["purposeOfEvent"][0])


def test_commissioning_keeps_its_own_code_beside_healthcare_operations() -> None:
    event = audit_event(1, entry(purpose="commissioning"), HASH, GATEWAY)
    assert codes(event["purposeOfEvent"][0]) == {(ACT_REASON, "HOPERAT"), (PURPOSE_SYSTEM, "commissioning")}


def test_an_unknown_purpose_is_text_not_a_code() -> None:
    event = audit_event(1, UNKNOWN_PURPOSE, HASH, GATEWAY)
    assert event["purposeOfEvent"] == [{"text": "marketing"}]
    assert {"system": RESTFUL, "code": "search-type", "display": "search-type"} in event["subtype"]


@pytest.mark.parametrize(
    ("change", "action", "interaction"), [(OPT_OUT, "C", "create"), (WITHDRAW, "U", "update")]
)
def test_a_consent_change_is_a_restful_create_or_update_of_the_consent(
    change: Entry, action: str, interaction: str
) -> None:
    event = audit_event(2, change, HASH, GATEWAY)
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0] == {"system": RESTFUL, "code": interaction, "display": interaction}
    assert (event["action"], event["outcome"]) == (action, "0")
    assert "purposeOfEvent" not in event and "outcomeDesc" not in event
    requester, gateway = event["agent"]
    assert (DCM, "110153") in codes(requester["type"])
    assert codes(gateway["type"]) == {(DCM, "110152")}
    [consent] = [e for e in event["entity"] if e.get("what", {}).get("reference", "").startswith("Consent/")]
    version = 1 if change is OPT_OUT else 2
    assert consent["what"]["reference"] == f"Consent/{CONSENT_ID}/_history/{version}"
    details = {d["type"]: d["valueString"] for d in consent["detail"]}
    assert details["version"] == str(version)
    assert details["authority"] == change.reason


def test_no_patient_entity_without_an_nhs_number() -> None:
    event = audit_event(1, FUTURE_ACTION, HASH, GATEWAY)
    assert not [e for e in event["entity"] if e.get("what", {}).get("type") == "Patient"]
    assert event["action"] == "R"
    assert {"system": RESTFUL, "code": "read", "display": "read"} in event["subtype"]


def test_csv_row_follows_the_header() -> None:
    row = csv_row(12, DENY, HASH)
    assert len(row) == len(CSV_HEADER)
    cells = dict(zip(CSV_HEADER, row, strict=True))
    assert cells["seq"] == "12" and cells["entry_hash"] == HASH
    assert (cells["kind"], cells["decision"], cells["reason"]) == ("disclosure", "deny", "local-opt-out")
    assert (cells["nhs_number"], cells["consent_id"]) == (NHS, CONSENT_ID)
    opt_out = dict(zip(CSV_HEADER, csv_row(1, OPT_OUT, HASH), strict=True))
    assert (opt_out["decision"], opt_out["purpose"]) == ("", "")


def test_csv_cells_never_start_a_spreadsheet_formula() -> None:
    row = csv_row(1, entry(request_id="=HYPERLINK(1)", client_id="@x"), HASH)
    cells = dict(zip(CSV_HEADER, row, strict=True))
    assert cells["request_id"] == "'=HYPERLINK(1)"
    assert cells["client_id"] == "'@x"
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    assert next(csv.reader(io.StringIO(buffer.getvalue()))) == row


refs = st.lists(
    st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["Patient", "CarePlan", "Provenance"]), st.uuids()),
    max_size=5,
)
disclosure_detail = st.one_of(
    st.builds(lambda r: detail(returned=r), refs),
    st.builds(lambda r: detail(withheld=r), refs),
    st.builds(
        lambda c: detail(returned=c),
        st.dictionaries(st.sampled_from(["Patient", "CarePlan"]), st.integers(0, 10**6)),
    ),
)
entries = st.builds(
    entry,
    kind=st.sampled_from([Kind.DISCLOSURE, Kind.CONSENT_CHANGE]),
    action=st.sampled_from(["opt-out", "withdraw", "view", "export", "read", "search", "publish"]),
    requester_kind=st.sampled_from([k.value for k in RequesterKind]),
    nhs_number=st.one_of(st.none(), st.just(NHS)),
    purpose=st.one_of(st.none(), st.sampled_from([p.value for p in Purpose])),
    decision=st.sampled_from([None, "permit", "deny"]),
    reason=st.one_of(st.none(), st.sampled_from([r.value for r in Reason])),
    consent_id=st.one_of(st.none(), st.just(CONSENT_ID)),
    detail=disclosure_detail,
)


@given(entries, st.integers(1, 2**62))
def test_any_entry_gives_a_valid_auditevent(e: Entry, seq: int) -> None:
    validate(audit_event(seq, e, HASH, GATEWAY))
