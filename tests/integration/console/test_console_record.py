"""The shared care view: one logged disclosure per view, active plans only, an opted-out person unknown."""

from __future__ import annotations

import logging
import re

import orjson
import pytest
from console_client import CLINICIAN, OTHER_CLINICIAN, Console
from console_seed import ALICE, OPTED_OUT, UNKNOWN

from gateway.console.web import PROVIDERS

_VOLATILE = re.compile(r'(nonce|value)="[^"]*"|\?p=[A-Za-z0-9_-]+')


async def view(console: Console, number: str) -> tuple[str, str]:
    """Search for ``number``; the redirect's location and the page it leads to."""
    await console.get("/console/record")
    found = await console.post("/console/record", {"nhs_number": number})
    assert found.status_code == 303
    page = await console.get(found.headers["location"])
    assert page.status_code == 200
    return found.headers["location"], page.text


async def test_a_clinician_sees_demographics_and_active_plans_by_source(console: Console) -> None:
    await console.sign_in(CLINICIAN)
    head = await console.log_size()
    location, page = await view(console, "999 000 0018")
    assert ALICE not in location and re.search(r"\d{6,}", location) is None
    assert "Mrs Amelia Davies" in page and "30 Jul 1944" in page and "1 High Street" in page
    assert "GP practice" in page and "Community health services" in page
    assert "Diabetes plan" in page and "Integrated care and support plan" in page
    assert "Proactive care plan" not in page  # completed: not an active plan
    assert "Lead professional" in page and "Isla Khan" in page
    assert "Care navigator" in page and "Dorothy Harris" in page
    assert "Stay out of hospital this winter" in page and "District nursing visit at home" in page

    [entry] = await console.entries_after(head)
    assert (entry["kind"], entry["action"], entry["decision"], entry["reason"]) == (
        "disclosure",
        "view",
        "permit",
        "no-objection",
    )
    assert (entry["requester_kind"], entry["org_ods"], entry["client_id"]) == ("provider", "RAT", "epr-a")
    assert entry["nhs_number"] == ALICE and entry["purpose"] == "direct-care"
    returned = orjson.loads(entry["detail"])["returned"]
    ids = console.services.mapper.ids
    assert f"Patient/{ids.patient(ALICE)}" in returned
    assert len([r for r in returned if r.startswith("CarePlan/")]) == 2  # the two active plans shown
    assert not any(r.startswith("Provenance/") for r in returned)


async def test_an_opted_out_person_gets_the_page_an_unknown_one_gets(console: Console) -> None:
    await console.sign_in(CLINICIAN)
    head = await console.log_size()
    _, opted_out = await view(console, OPTED_OUT)
    _, unknown = await view(console, UNKNOWN)
    assert "No shared record" in opted_out and "Patel" not in opted_out
    assert _VOLATILE.sub("", opted_out).replace("999 000 0026", "N") == _VOLATILE.sub("", unknown).replace(
        "999 000 0042", "N"
    )
    denied, unknown_entry = await console.entries_after(head)
    assert (denied["decision"], denied["reason"], denied["nhs_number"]) == (
        "deny",
        "local-opt-out",
        OPTED_OUT,
    )
    assert denied["consent_id"]
    assert (unknown_entry["decision"], unknown_entry["nhs_number"]) == ("permit", UNKNOWN)
    assert orjson.loads(unknown_entry["detail"]) == {"returned": []}


async def test_a_view_link_opens_only_for_the_client_it_was_made_for(console: Console) -> None:
    await console.sign_in(CLINICIAN)
    location, _ = await view(console, ALICE)
    await console.sign_in(OTHER_CLINICIAN)
    head = await console.log_size()
    page = await console.get(location)
    assert page.status_code == 200 and "That link has expired or is not yours" in page.text
    assert "Amelia" not in page.text
    assert await console.log_size() == head  # no person, no disclosure


async def test_a_bad_nhs_number_is_refused_before_anything_is_logged(console: Console) -> None:
    await console.sign_in(CLINICIAN)
    head = await console.log_size()
    for typed in ("9990000019", "12345", "not a number", ""):
        await console.get("/console/record")
        refused = await console.post("/console/record", {"nhs_number": typed})
        assert refused.status_code == 400 and "There is a problem" in refused.text
        assert 'href="#nhs-number"' in refused.text
        if typed:
            assert typed not in refused.text
    assert await console.log_size() == head


async def test_nothing_is_shown_when_the_log_cannot_be_written(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    await console.sign_in(CLINICIAN)
    await console.get("/console/record")
    found = await console.post("/console/record", {"nhs_number": ALICE})

    async def broken(_entries: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(console.services.disclosure.log, "append", broken)
    page = await console.get(found.headers["location"])
    assert page.status_code == 503 and "Nothing can be shown just now" in page.text
    assert "Amelia" not in page.text and page.headers["retry-after"] == "5"


async def test_no_nhs_number_reaches_the_access_log(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await console.sign_in(CLINICIAN)
    for number in (ALICE, OPTED_OUT, UNKNOWN):
        await view(console, number)
    lines = [r.getMessage() for r in caplog.records]
    assert any('"route":"/console/record/view"' in line for line in lines)
    assert not any(n in line for n in (ALICE, OPTED_OUT, UNKNOWN) for line in lines)


def test_only_providers_see_records() -> None:
    assert {r.value for r in PROVIDERS} == {"provider"}
