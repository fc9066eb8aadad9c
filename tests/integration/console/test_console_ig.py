"""The IG board's pages: the register, the access log, subject access, integrity, publication, quality.

Every page that shows personal data is logged before it is shown; filters travel sealed (no NHS
number in a URL); exports are what ``gateway.audit.export`` writes for the same entries.
"""

from __future__ import annotations

import html
import io
import re

import orjson
import pytest
from console_client import IG, Console
from console_seed import ALICE, OPTED_OUT, WITHDRAWN
from sqlalchemy import update

from consent.chain import Kind
from gateway.audit.export import AuditFilter, matching, write_csv, write_ndjson
from gateway.console.routes import access
from gateway.store.schema import audit_log


def rows(page: str, table: int = 0) -> list[str]:
    """The text of each row of the page's ``table``-th table body."""
    bodies = page.split("<tbody")[1:]
    body = bodies[table].split("</tbody>", 1)[0] if len(bodies) > table else ""
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r)).strip() for r in body.split("</tr>")[:-1]]


def link(page: str, name: str) -> str:
    found = re.search(rf'href="([^"]*{re.escape(name)}[^"]*)"', page)
    assert found, name
    return html.unescape(found.group(1))


async def filtered(console: Console, path: str, fields: dict[str, str]) -> str:
    await console.get(path)
    response = await console.post(path, fields)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.search(r"\d{6,}", location.split("?q=")[0]) is None
    assert not any(n in location for n in (ALICE, OPTED_OUT, WITHDRAWN))
    page = await console.get(location)
    assert page.status_code == 200
    return page.text


async def test_the_register_shows_who_recorded_what_when_and_why(console: Console) -> None:
    await console.sign_in(IG)
    head = await console.log_size()
    page = (await console.get("/console/consent")).text
    shown = rows(page)
    assert len(shown) == 2
    withdrawn = next(r for r in shown if "999 000 0034" in r)
    assert "national" in withdrawn and "withdrawn" in withdrawn and "portal" in withdrawn
    assert "by ig-operator (CONCORD)" in withdrawn and "telephone" in withdrawn
    [entry] = await console.entries_after(head)
    assert (entry["action"], entry["requester_kind"], entry["nhs_number"]) == (
        "consent-search",
        "ig-auditor",
        None,
    )
    assert len(orjson.loads(entry["detail"])["returned"]) == 2

    only = await filtered(console, "/console/consent", {"nhs_number": OPTED_OUT, "status": "active"})
    assert len(rows(only)) == 1 and "local-scr" in rows(only)[0] and "letter" in rows(only)[0]
    assert (await console.entries_after(head))[-1]["nhs_number"] == OPTED_OUT
    none = await filtered(console, "/console/consent", {"source": "gp-extract"})
    assert rows(none) == [] and "No opt-out matches these filters" in none
    dated = await filtered(console, "/console/consent", {"since": "2000-01-01", "until": "2000-12-31"})
    assert rows(dated) == []


async def test_register_exports_are_what_the_filters_show(console: Console) -> None:
    await console.sign_in(IG)
    page = await filtered(console, "/console/consent", {"kind": "national"})
    head = await console.log_size()
    csv = (await console.client.get(link(page, "/console/consent/export.csv"))).text.splitlines()
    assert csv[0].startswith("id,nhs_number,kind,status,authority")
    assert len(csv) == 2 and WITHDRAWN in csv[1] and ",withdrawn," in csv[1]
    ndjson = (await console.client.get(link(page, "/console/consent/export.ndjson"))).content.splitlines()
    [consent] = [orjson.loads(line) for line in ndjson]
    assert consent["resourceType"] == "Consent" and consent["status"] == "inactive"
    exports = await console.entries_after(head)
    assert [e["action"] for e in exports] == ["consent-export", "consent-export"]
    assert orjson.loads(exports[0]["detail"]) == {"returned": {"Consent": 1}}


async def test_the_access_log_filters_every_decision(console: Console) -> None:
    await console.sign_in(IG)
    everything = rows((await console.get("/console/access")).text)
    assert len(everything) >= 2 and all("disclosure" not in r for r in everything)
    denied = rows(await filtered(console, "/console/access", {"decision": "deny"}))
    assert len(denied) == 1 and "999 000 0026" in denied[0] and "local-opt-out" in denied[0]
    by_org = rows(await filtered(console, "/console/access", {"org_ods": "rat", "purpose": "direct-care"}))
    assert len(by_org) == 2 and all("RAT" in r for r in by_org)
    person = rows(await filtered(console, "/console/access", {"nhs_number": "999-000-0018"}))
    assert len(person) == 1 and "Permitted" in person[0]
    assert rows(await filtered(console, "/console/access", {"purpose": "research"})) == []
    assert rows(await filtered(console, "/console/access", {"until": "2000-01-01"})) == []


async def test_the_access_log_pages_back_through_the_log(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "PAGE_SIZE", 3)
    await console.sign_in(IG)
    for _ in range(4):  # each page view is itself an entry: 4 more disclosures
        await console.get("/console/consent")
    first = (await console.get("/console/access")).text
    assert len(rows(first)) == 3
    older = (await console.get(link(first, "before="))).text
    seqs = [int(r.split()[-1]) for r in rows(first)], [int(r.split()[-1]) for r in rows(older)]
    assert seqs[0] == sorted(seqs[0], reverse=True) and max(seqs[1]) < min(seqs[0])


async def test_access_log_exports_match_the_audit_export(console: Console) -> None:
    await console.sign_in(IG)
    page = await filtered(console, "/console/access", {"org_ods": "RAT"})
    csv = (await console.client.get(link(page, "/console/access/export.csv"))).content
    ndjson = (await console.client.get(link(page, "/console/access/export.ndjson"))).content
    expected_csv, expected_ndjson = io.BytesIO(), io.BytesIO()
    where = AuditFilter(org_ods="RAT", kind=Kind.DISCLOSURE)
    async with console.services.engine.connect() as conn:
        await write_csv(matching(conn, where), expected_csv)
        await write_ndjson(matching(conn, where), expected_ndjson, console.services.settings.organisation_ods)
    assert csv == expected_csv.getvalue() and len(csv.splitlines()) == 3
    assert ndjson == expected_ndjson.getvalue()
    assert all(orjson.loads(line)["resourceType"] == "AuditEvent" for line in ndjson.splitlines())


async def test_subject_access_shows_one_person_s_whole_history(console: Console) -> None:
    await console.sign_in(IG)
    head = await console.log_size()
    page = await filtered(console, "/console/access/person", {"nhs_number": WITHDRAWN})
    assert "NHS number 999 000 0034" in page
    assert "0 requests for this person's record" in page and "2 opt-out changes" in page
    changes = rows(page)
    assert [("withdraw" in r, "opt-out" in r) for r in changes] == [(True, False), (False, True)]
    [entry] = await console.entries_after(head)
    assert (entry["action"], entry["nhs_number"]) == ("audit-search", WITHDRAWN)
    history = (await console.client.get(link(page, "/console/access/export.csv"))).text.splitlines()
    assert len(history) == 1 + 3 and all(WITHDRAWN in line for line in history[1:])  # two changes, one search

    again = (await console.get("/console/access/person")).text
    assert "Show access history" in again
    bad = await console.post("/console/access/person", {"nhs_number": "1234567890"})
    assert (
        bad.status_code == 400
        and "Enter a valid 10-digit NHS number" in bad.text
        and "1234567890" not in bad.text
    )


FILTER_MISTAKES = [
    ("/console/access", {"since": "2026-02-30"}, "since"),
    ("/console/access", {"since": "2026-03-02", "until": "2026-03-01"}, "until"),
    ("/console/access", {"org_ods": "R A T!"}, "org-ods"),
    ("/console/access", {"decision": "maybe"}, "decision"),
    ("/console/consent", {"nhs_number": "9990000019"}, "nhs-number"),
    ("/console/consent", {"source": "fax"}, "source"),
    ("/console/publication", {"state": "lost"}, "state"),
]


async def test_filters_say_what_is_wrong(console: Console) -> None:
    await console.sign_in(IG)
    for path, fields, field_id in FILTER_MISTAKES:
        await console.get(path)
        refused = await console.post(path, fields)
        assert refused.status_code == 400, (path, fields)
        assert "There is a problem" in refused.text and f'href="#{field_id}"' in refused.text
        assert "<tbody" not in refused.text


async def test_a_filter_link_from_another_client_shows_everything_with_a_notice(console: Console) -> None:
    await console.sign_in(IG)
    page = await filtered(console, "/console/access", {"decision": "deny"})
    location = link(page, "/console/access/export.csv").replace("/export.csv", "")
    other = IG.__class__("ig-other", "Other IG", "15E", IG.role, IG.scopes)
    await console.sign_in(other)
    shown = (await console.get(location)).text
    assert "That filtered link has expired or was made for someone else" in shown
    assert len(rows(shown)) > 1


async def test_integrity_is_verified_on_request_and_tampering_is_loud(console: Console) -> None:
    await console.sign_in(IG)
    first = (await console.get("/console/integrity")).text
    assert "has not been verified by this gateway process yet" in first
    assert console.services.log.key_id in first and "BEGIN PUBLIC KEY" in first
    fingerprint = re.search(r"([0-9a-f]{2}(?::[0-9a-f]{2}){31})", first)
    assert fingerprint
    intact = await console.post("/console/integrity", {})
    assert intact.status_code == 200 and "The log is intact" in intact.text
    assert "Time taken" in intact.text and "Entries checked" in intact.text
    assert "--expect" in intact.text or "no checkpoint yet" in intact.text

    async with console.services.engine.begin() as conn:
        await conn.execute(
            update(audit_log).where(audit_log.c.seq == 2).values(reason="<script>x()</script>")
        )
    failed = await console.post("/console/integrity", {})
    assert 'id="integrity-failure"' in failed.text and "The log failed verification" in failed.text
    assert "number <strong>2</strong>: <strong>altered</strong>" in failed.text
    remembered = (await console.get("/console/integrity")).text
    assert "The log failed verification" in remembered
    # What an attacker wrote into the database is shown as text, never as markup.
    history = await filtered(console, "/console/access/person", {"nhs_number": WITHDRAWN})
    assert "&lt;script&gt;x()&lt;/script&gt;" in history and "<script>x()" not in history


async def test_publication_shows_what_the_hie_holds_and_refused(console: Console) -> None:
    await console.sign_in(IG)
    head = await console.log_size()
    page = (await console.get("/console/publication")).text
    assert "entry 2: invalid: CarePlan.status: unknown code" in page
    assert len(rows(page, 0)) == 1
    people = rows(page, 1)
    assert len(people) == 3
    assert [("Published" in p, "Retracted" in p) for p in people].count((True, False)) == 1
    assert any("999 000 0026" in p and "Retracted" in p for p in people)
    [entry] = await console.entries_after(head)
    assert entry["action"] == "publication-read"
    assert orjson.loads(entry["detail"]) == {"returned": {"people": 3, "dead-letters": 1}}
    retracted = rows(await filtered(console, "/console/publication", {"state": "retracted"}), 1)
    assert len(retracted) == 1 and "999 000 0026" in retracted[0]


async def test_data_quality_shows_counts_and_charts(console: Console) -> None:
    await console.sign_in(IG)
    head = await console.log_size()
    page = (await console.get("/console/quality")).text
    assert page.count('<svg class="app-chart"') == 3
    assert "66.7% (2 of 3)" in page and "100.0% (1 of 1)" in page
    assert "gp: nhs-number-check-digit" in page and "birthDate: community / gp" in page
    assert '<title id="chart-verified-title">' in page and 'aria-labelledby="chart-verified-title' in page
    assert not re.search(r"999\s?000\s?00\d\d", page)
    assert await console.log_size() == head  # counts only: nothing to log
