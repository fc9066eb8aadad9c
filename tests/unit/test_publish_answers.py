"""Reading what a misbehaving HIE says: nothing it answers makes the reader raise or count as done."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.publish.bundle import read_reply, safe_outcome
from gateway.publish.oauth import TokenUnavailable, read_token


def response(*statuses: Any) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": s}} for s in statuses],
        }
    )


@pytest.mark.parametrize("status", ["2", "2xx", "20", "2000 OK", "", None, "OK 200"])
def test_an_entry_status_that_is_not_an_http_status_is_not_a_success(status: Any) -> None:
    assert not read_reply(200, response("200 OK", status), ["PUT", "PUT"]).ok


@pytest.mark.parametrize("status", ["200", "201 Created", 200, "204 No Content"])
def test_a_2xx_entry_status_is_a_success(status: Any) -> None:
    assert read_reply(200, response(status), ["PUT"]).ok


@pytest.mark.parametrize(
    "issue",
    [5, "text", {"severity": "error"}, [5, None, "x"], [{"details": {"coding": [5, "x", None]}}], None, True],
)
def test_a_malformed_operation_outcome_is_read_not_raised(issue: Any) -> None:
    said = orjson.dumps({"resourceType": "OperationOutcome", "issue": issue})
    reply = read_reply(400, said, ["PUT"])
    assert not reply.ok
    assert reply.outcome is not None and isinstance(reply.outcome["issue"], list)
    entry = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "400", "outcome": {"issue": issue}}}],
        }
    )
    assert read_reply(200, entry, ["PUT"]).failed_entry == 0


def test_free_text_hidden_in_codes_and_paths_is_not_kept() -> None:
    kept = safe_outcome(
        {
            "issue": [
                {
                    "severity": "error because of Mrs Davies",
                    "code": "invalid",
                    "details": {"coding": [{"code": "X", "display": "Davies 9990000018", "system": "urn:s"}]},
                    "expression": ["Patient.name.where(family='Davies')", "Bundle.entry[3].resource"],
                    "location": ["/f:Bundle/f:entry[3]", "Patient.name 'Davies'"],
                }
            ]
        }
    )
    assert "Davies" not in orjson.dumps(kept).decode()
    assert kept == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "code": "invalid",
                "expression": ["Bundle.entry[3].resource"],
                "location": ["/f:Bundle/f:entry[3]"],
                "details": {"coding": [{"system": "urn:s", "code": "X"}]},
            }
        ],
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>login</html>",
        b"",
        b'["access_token"]',
        b'{"access_token": null}',
        b'{"access_token": {"a": 1}}',
        b'{"access_token": ""}',
        b'{"access_token": "two words"}',
        b'{"token": "x"}',
        b'{"access_token": "x' + b"y" * 70000 + b'"}',
    ],
)
def test_a_token_answer_that_holds_no_token_is_token_unavailable(raw: bytes) -> None:
    with pytest.raises(TokenUnavailable):
        read_token(raw)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(None, 300.0), (120, 120.0), ("90", 90.0), ("soon", 0.0), (-5, 0.0), (True, 0.0), ("nan", 0.0)],
)
def test_a_token_lifetime_that_is_not_a_number_is_not_cached(expires_in: Any, lifetime: float) -> None:
    body: dict[str, Any] = {"access_token": "abc"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    assert read_token(orjson.dumps(body)) == ("abc", lifetime)


def test_an_nhs_number_in_a_code_or_a_coding_is_not_kept() -> None:
    """An HIE that codes its refusal with what it refused: was kept in the dead letter."""
    kept = safe_outcome(
        {
            "issue": [
                {
                    "severity": "error",
                    "code": "9990000018",
                    "details": {
                        "coding": [
                            {"system": "https://hie.example/nhs-number/9990000018", "code": "DUP"},
                            {"system": "urn:s", "code": "999-000-0018"},
                            {"system": "urn:s", "code": "19500102"},
                            {"system": "urn:s", "code": "E42"},
                        ]
                    },
                }
            ]
        }
    )
    assert kept == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "details": {"coding": [{"system": "urn:s", "code": "E42"}]},
            }
        ],
    }
