"""Reading the HIE's answer to a transaction, and what of it a dead letter keeps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.publish.bundle import publication, read_reply, request_methods, retraction, safe_outcome

NHS_NUMBER = "9990000018"
PATIENT = ("Patient", "p1", b'{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}')
PLAN = ("CarePlan", "c1", b'{"resourceType":"CarePlan","id":"c1","meta":{"versionId":"1"}}')


def answer(*statuses: str, kind: str = "transaction-response") -> bytes:
    entries = [{"response": {"status": s}} for s in statuses]
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": entries})


def test_the_methods_of_a_publication_and_a_retraction() -> None:
    assert request_methods(publication([PATIENT, PLAN], NHS_NUMBER, ["CarePlan/old/_history/1"])) == [
        "DELETE",
        "PUT",
        "PUT",
    ]
    assert request_methods(retraction(["CarePlan/c1/_history/1"], NHS_NUMBER)) == ["DELETE", "DELETE"]


def test_one_successful_entry_per_request_is_success() -> None:
    assert read_reply(200, answer("200 OK", "201 Created"), ["PUT", "PUT"]).ok


@pytest.mark.parametrize(
    ("body", "entry", "why"),
    [
        (answer("200 OK"), None, "the HIE answered 1 entries for 2 requests"),  # the rest not applied
        (answer("200 OK", "200 OK", "200 OK"), None, "the HIE answered 3 entries for 2 requests"),
        (answer(kind="transaction-response"), None, "the HIE answered 0 entries for 2 requests"),
        (
            answer("200 OK", "200 OK", kind="batch-response"),
            None,
            "the HIE did not answer with a transaction-response",
        ),
        (b"[]", None, "the HIE did not answer with a transaction-response"),
        (b"null", None, "the HIE did not answer with a transaction-response"),
        (b"<html>ok</html>", None, "the HIE did not answer with a transaction-response"),
        (
            b'{"resourceType":"Bundle","type":"transaction-response","entry":["x","y"]}',
            0,
            "an entry of the transaction-response has no response",
        ),
    ],
)
def test_a_2xx_that_does_not_answer_every_request_is_a_failure(
    body: bytes, entry: int | None, why: str
) -> None:
    reply = read_reply(200, body, ["PUT", "PUT"])
    assert (reply.ok, reply.failed_entry) == (False, entry)
    assert reply.outcome == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": why}],
    }


def test_a_delete_of_what_is_not_there_succeeded() -> None:
    assert read_reply(200, answer("404 Not Found", "410 Gone"), ["DELETE", "DELETE"]).ok
    refused = read_reply(200, answer("200 OK", "404 Not Found"), ["DELETE", "PUT"])
    assert (refused.ok, refused.failed_entry) == (False, 1)


def test_a_dead_letter_keeps_the_hies_codes_not_its_words() -> None:
    said: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": f"patient {NHS_NUMBER} Davies is not known",
                "details": {"coding": [{"code": "MSG_BAD"}], "text": f"about {NHS_NUMBER}"},
                "expression": ["Patient.identifier"],
            }
        ],
    }
    kept = safe_outcome(said)
    assert NHS_NUMBER not in orjson.dumps(kept).decode()
    assert kept == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "expression": ["Patient.identifier"],
                "details": {"coding": [{"code": "MSG_BAD"}]},
            }
        ],
    }
    refused = read_reply(400, orjson.dumps(said), ["PUT"])
    assert refused.outcome == kept
