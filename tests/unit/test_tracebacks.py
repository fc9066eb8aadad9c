"""A logged exception names its types and frames, never its message: that may quote a record."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from gateway import tracebacks
from gateway.cli.serve import JsonFormatter, log_config

NHS_NUMBER = "9990000018"
PHONE = "0113 4960001"


def failing_validation() -> None:
    """What a 500 used to log: pydantic's error, quoting the Patient, chained under another."""
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_NUMBER}],
        "contact": [{"name": {"family": "Okafor"}, "telecom": [{"system": "phone", "value": PHONE}]}],
        "deceasedBoolean": False,
        "deceasedDateTime": "2026-03-01",
    }
    try:
        get_fhir_model_class("Patient").model_validate(patient)
    except Exception as exc:
        raise RuntimeError(f"could not store {NHS_NUMBER}") from exc


def logged(record: logging.LogRecord) -> str:
    return JsonFormatter().format(record)


def record_of(raiser: object) -> logging.LogRecord:
    try:
        raiser()  # type: ignore[operator]
    except Exception:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (), exc_info
    )


def test_an_exception_quoting_an_nhs_number_is_logged_without_it() -> None:
    line = logged(record_of(failing_validation))
    for value in (NHS_NUMBER, PHONE, "Okafor", "2026-03-01"):
        assert value not in line
    exception = orjson.loads(line)["exception"]
    assert "pydantic_core._pydantic_core.ValidationError" in exception
    assert exception.rstrip().endswith("RuntimeError")
    assert tracebacks.CAUSE in exception
    assert f'File "{__file__}", line' in exception and "in failing_validation" in exception


def test_a_context_is_followed_unless_suppressed() -> None:
    def handled() -> None:
        try:
            {}[NHS_NUMBER]
        except KeyError:
            raise ValueError(NHS_NUMBER)  # noqa: B904 - the context is what is tested

    def suppressed() -> None:
        try:
            {}[NHS_NUMBER]
        except KeyError:
            raise ValueError(NHS_NUMBER) from None

    shown = orjson.loads(logged(record_of(handled)))["exception"]
    assert tracebacks.CONTEXT in shown and "KeyError" in shown and NHS_NUMBER not in shown
    hidden = orjson.loads(logged(record_of(suppressed)))["exception"]
    assert "KeyError" not in hidden and hidden.rstrip().endswith("ValueError")


def test_a_recursion_is_counted_not_printed_a_thousand_times() -> None:
    def down(n: int) -> None:
        if n == 0:
            raise RecursionError(NHS_NUMBER)
        down(n - 1)

    with pytest.raises(RecursionError) as raised:
        down(50)
    text = tracebacks.describe(raised.value)
    # 50 calls from one line, then the one that raised
    assert text.count("in down") == tracebacks.REPEATS_SHOWN + 1
    assert "[the line above repeated 47 more times]" in text


def test_an_exception_group_names_each_of_its_exceptions() -> None:
    group = ExceptionGroup(NHS_NUMBER, [KeyError(NHS_NUMBER), ValueError(PHONE)])
    text = tracebacks.describe(group)
    assert "KeyError" in text and "ValueError" in text
    assert NHS_NUMBER not in text and PHONE not in text


def test_the_served_log_configuration_formats_every_record_with_the_json_formatter() -> None:
    config = log_config("info")
    assert config["formatters"]["json"]["()"] == f"{JsonFormatter.__module__}.JsonFormatter"
    assert config["handlers"]["json"]["formatter"] == "json"
    assert config["loggers"]["uvicorn"]["handlers"] == ["json"]  # uvicorn.error logs a 500 here
    assert config["root"]["handlers"] == ["json"]
