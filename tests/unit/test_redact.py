"""What of a request path may be logged: every spelling of an NHS number redacted."""

from __future__ import annotations

import time

import pytest

from gateway.redact import MAX_CHARS, REDACTED, parameter_name, path

NHS = "9990000018"


@pytest.mark.parametrize(
    "spelled",
    [
        "9990000018",
        "999 000 0018",
        "999-000-0018",
        "999.000.0018",
        "999+000+0018",
        "999_000_0018",
        "999,000,0018",
        "999:000:0018",
        "999~000~0018",
        "999/000/0018",
        "999%20000%200018",
        "999%2B000%2B0018",
        "999%2b000%2b0018",
        "999%5F000%5F0018",
        "999%252B000%252B0018",
        "999%25252B000%25252B0018",
        "%39%39%39%30%30%30%30%30%31%38",
        "999\u00b7000\u00b70018",
        "999\u2013000\u2013" + "0018",
        "\uff19\uff19\uff19\uff10\uff10\uff10\uff10\uff10\uff11\uff18",
    ],
)
def test_every_spelling_of_an_nhs_number_is_redacted(spelled: str) -> None:
    logged = path(f"/fhir/Foo/{spelled}")
    assert logged == f"/fhir/Foo/{REDACTED}"
    digits = "".join(c for c in logged if c.isdigit())
    assert digits == ""


def test_short_numbers_and_letters_are_kept() -> None:
    assert path("/fhir/Foo/12345") == "/fhir/Foo/12345"
    assert path("/fhir/Patient/abc-123/_history/4") == "/fhir/Patient/abc-123/_history/4"
    assert path("/x/%7Eq") == "/x/~q"


def test_the_logged_path_is_bounded_and_redaction_stays_fast() -> None:
    assert len(path("/" + "a" * 5000)) == MAX_CHARS
    started = time.perf_counter()
    for hostile in ("/" + "1%11" * 20_000 + "x", "1-" * 50_000, "%1" * 50_000, "1" + "-" * 100_000):
        logged = path(f"/fhir/Foo/999+000+0018{hostile}")  # a number at the front of the padding
        assert logged.startswith(f"/fhir/Foo/{REDACTED}")
        assert NHS not in "".join(c for c in logged if c.isdigit())
    assert time.perf_counter() - started < 2.0


def test_a_parameter_name_echoed_in_an_answer_has_no_number_however_spelled() -> None:
    """An unknown search parameter is named in the OperationOutcome (search and AuditEvent)."""
    for name in ("9990000018", "x999-000-0018", "999 000 0018", "a_999_000_0018"):
        assert not any(c.isdigit() for c in parameter_name(name)), name
    assert parameter_name("subject:identifier") == "subject:identifier"
    assert parameter_name("_count2") == "_count2"
    assert len(parameter_name("a" * 100)) == 40
