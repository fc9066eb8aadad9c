"""A person who opted out is indistinguishable from a person concord does not hold, on every read path.

Each test sends the same request twice: once about a person who was ingested
and then opted out (local shared-care-record opt-out), once about a valid NHS
number never ingested, and compares the two responses with ids, timestamps and
query values taken out. Both stores.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.api.app import create_app
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store.schema import audit_log

SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PERMITTED = "9990000018"
OPTED_OUT = "9990000026"
NEVER_SEEN = "9990000034"  # valid, never ingested
CSV = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,"
    "address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,"
    "plan_start,plan_end,activities,recorded_at\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP2,FRAILTY,Proactive care plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP2,9990000026,01,Mr,Patel,Noah,1938-10-31,M,25 Mill Lane,,Upminster,RM9 2YB,0208 733 4374,,"
    "GP2-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP2,9990000026,01,Mr,Patel,Noah,1938-10-31,M,25 Mill Lane,,Upminster,RM9 2YB,0208 733 4374,,"
    "GP2-CP2,FRAILTY,Proactive care plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
)
READER = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
OTHER = Principal("epr-b", "Other EPR", "RXX", Role.PROVIDER, frozenset({"system/*.read"}))
PLANS_ONLY = Principal("plans", "Plans only", "RYY", Role.PROVIDER, frozenset({"system/CarePlan.read"}))
OPERATOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")
#: Keys whose values differ between any two people and say nothing about consent.
VOLATILE = {"id", "lastUpdated", "fullUrl", "reference", "value"}


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    services: Services

    def person(self, nhs_number: str) -> dict[str, str]:
        """What a URL template may name about one person: the NHS number, Patient id, a CarePlan id."""
        ids = self.services.mapper.ids
        local = {PERMITTED: "GP1-CP1", OPTED_OUT: "GP2-CP1", NEVER_SEEN: "GP3-CP1"}[nhs_number]
        return {
            "nhs": nhs_number,
            "pid": ids.patient(nhs_number),
            "plan": ids.source_resource("CarePlan", "gp", local, nhs_number),
        }

    async def get(self, url: str, who: Principal | None = READER, **headers: str) -> httpx.Response:
        if who is not None:
            token, _ = self.app.state.tokens.issue(who)
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.get(url, headers=headers)

    async def log_rows(self, **where: str) -> int:
        query = select(func.count()).select_from(audit_log)
        for column, value in where.items():
            query = query.where(audit_log.c[column] == value)
        async with self.services.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def both(self, template: str, **headers: str) -> httpx.Response:
        """The request about the opted-out person and about the unknown one: equal once normalised."""
        opted = await self.get(template.format(**self.person(OPTED_OUT)), **headers)
        unknown = await self.get(template.format(**self.person(NEVER_SEEN)), **headers)
        assert normalise(opted) == normalise(unknown), template
        return opted


@pytest.fixture
async def api(services: Services) -> AsyncIterator[Api]:
    report = await services.ingestor.run("gp", adapter_for("gp").read(io.StringIO(CSV)), "gp.csv")
    assert report.quarantined_total == 0
    await services.register.opt_out(OPTED_OUT, OptOutKind.LOCAL, Authority.LETTER, OPERATOR, "test-opt-out")
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(app, client, services)


def normalise(response: httpx.Response) -> tuple[int, str, list[str], Any]:
    """Status, media type, header names and the body without ids, timestamps or query values."""
    names = sorted(set(response.headers) - {"x-request-id", "date", "content-length"})
    body = scrub(response.json()) if response.content else None
    return response.status_code, response.headers.get("content-type", ""), names, body


def scrub(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: scrub(v) for k, v in node.items() if k not in VOLATILE}
        if "relation" in node and "url" in node:  # a link: keep where it goes and which parameters
            parts = urlsplit(node["url"])
            path = "/".join("{}" if len(seg) >= 20 else seg for seg in parts.path.split("/"))
            out["url"] = (path, sorted(name for name, _ in parse_qsl(parts.query)))
        return out
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return node


def matches(response: httpx.Response) -> list[dict[str, Any]]:
    return [e for e in response.json().get("entry", ()) if e["search"]["mode"] != "outcome"]


def assert_empty_searchset(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["type"], body["total"], matches(response)) == ("searchset", 0, [])


def assert_not_found(response: httpx.Response, rtype: str) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["issue"][0] == {
        "severity": "error",
        "code": "not-found",
        "diagnostics": f"{rtype} not found",
    }


async def test_the_comparison_can_tell_a_permitted_person_from_an_unknown_one(api: Api) -> None:
    for template in ("/fhir/Patient?identifier={nhs}", "/fhir/Patient/{pid}", "/fhir/CarePlan?patient={pid}"):
        permitted = await api.get(template.format(**api.person(PERMITTED)))
        unknown = await api.get(template.format(**api.person(NEVER_SEEN)))
        assert normalise(permitted) != normalise(unknown)


# --- searches ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["/fhir/Patient?identifier=" + SYSTEM + "|{nhs}", "/fhir/Patient?identifier={nhs}"],
)
async def test_patient_search(api: Api, template: str) -> None:
    assert_empty_searchset(await api.both(template))
    assert len(matches(await api.get(template.format(**api.person(PERMITTED))))) == 1  # the control


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/CarePlan?subject:identifier=" + SYSTEM + "|{nhs}",
        "/fhir/CarePlan?subject:identifier={nhs}&status=active",
        "/fhir/CarePlan?patient:identifier={nhs}",
    ],
)
async def test_careplan_search_by_subject_identifier(api: Api, template: str) -> None:
    assert_empty_searchset(await api.both(template))
    assert len(matches(await api.get(template.format(**api.person(PERMITTED))))) == 2


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/CarePlan?patient=Patient/{pid}",
        "/fhir/CarePlan?subject=Patient/{pid}",
        "/fhir/CarePlan?subject={pid}",
    ],
)
async def test_careplan_search_by_patient(api: Api, template: str) -> None:
    assert_empty_searchset(await api.both(template))
    assert len(matches(await api.get(template.format(**api.person(PERMITTED))))) == 2


async def test_include(api: Api) -> None:
    template = "/fhir/CarePlan?subject:identifier={nhs}&_include=CarePlan:subject"
    assert_empty_searchset(await api.both(template))
    permitted = matches(await api.get(template.format(**api.person(PERMITTED))))
    assert [e["search"]["mode"] for e in permitted] == ["match", "match", "include"]


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/CarePlan?subject:identifier={nhs}&_revinclude=Provenance:target",
        "/fhir/Patient?identifier={nhs}&_revinclude=CarePlan:subject",
    ],
)
@pytest.mark.parametrize("prefer", ["handling=lenient", "handling=strict"])
async def test_revinclude_is_refused_alike(api: Api, template: str, prefer: str) -> None:
    response = await api.both(template, Prefer=prefer)
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/Patient?identifier={nhs}&_has:CarePlan:subject:status=active",
        "/fhir/Patient?_has:CarePlan:subject:status=active",
    ],
)
async def test_has_is_refused_alike(api: Api, template: str) -> None:
    response = await api.both(template)
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize(
    "template",
    ["/fhir/CarePlan?subject.identifier={nhs}", "/fhir/CarePlan?patient.identifier=" + SYSTEM + "|{nhs}"],
)
async def test_chained_search_to_the_identifier(api: Api, template: str) -> None:
    assert_empty_searchset(await api.both(template))
    assert len(matches(await api.get(template.format(**api.person(PERMITTED))))) == 2


async def test_other_chains_are_refused_alike(api: Api) -> None:
    response = await api.both("/fhir/CarePlan?subject:identifier={nhs}&subject.name=Patel")
    assert response.status_code == 400


async def test_unknown_parameters_are_reported_alike(api: Api) -> None:
    response = await api.both("/fhir/Patient?identifier={nhs}&name=Patel&birthdate=1938-10-31")
    assert [e["search"]["mode"] for e in response.json()["entry"]] == ["outcome"]
    strict = await api.both("/fhir/Patient?identifier={nhs}&name=Patel", Prefer="handling=strict")
    assert strict.status_code == 400


async def test_total_never_counts_what_is_withheld(api: Api) -> None:
    for template in (
        "/fhir/Patient?identifier={nhs}",
        "/fhir/CarePlan?subject:identifier={nhs}",
        "/fhir/CarePlan?patient=Patient/{pid}&_include=CarePlan:subject",
        "/fhir/CarePlan?subject:identifier={nhs}&_count=1",
    ):
        assert (await api.both(template)).json()["total"] == 0
        permitted = (await api.get(template.format(**api.person(PERMITTED)))).json()
        assert permitted["total"] == (1 if "Patient?" in template else 2)


# --- paging -------------------------------------------------------------------------------------------


async def test_paging_links_alike(api: Api) -> None:
    response = await api.both("/fhir/CarePlan?subject:identifier={nhs}&_count=1")
    assert [x["relation"] for x in response.json()["link"]] == ["self"]  # no next page to reveal


async def test_a_paging_token_works_only_for_the_client_it_was_made_for(api: Api) -> None:
    first = await api.get(f"/fhir/CarePlan?subject:identifier={PERMITTED}&_count=1")
    following = next(x["url"] for x in first.json()["link"] if x["relation"] == "next")
    parts = urlsplit(following)
    page = f"{parts.path}?{parts.query}"
    token = dict(parse_qsl(parts.query))["_page"]
    assert (await api.get(page)).status_code == 200
    before = await api.log_rows()
    stolen = await api.get(page, who=OTHER)
    forged = await api.get(page.replace(token, "1.AAAAAAAAAAAAAAAAAAAAAAAA"))
    assert stolen.status_code == 400
    assert normalise(stolen) == normalise(forged)
    # the same token on a search about the opted-out or the unknown person: the same error again
    for nhs_number in (OPTED_OUT, NEVER_SEEN):
        assert normalise(await api.get(page.replace(PERMITTED, nhs_number))) == normalise(forged)
    assert await api.log_rows() == before


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/CarePlan?subject:identifier={nhs}&_count=1",
        "/fhir/CarePlan?patient=Patient/{pid}&_count=1",
        "/fhir/Patient/{pid}/_history?_count=1",
        "/fhir/Patient/{pid}/$everything?_count=1",
    ],
)
async def test_a_paging_link_held_from_before_an_opt_out_reveals_nothing(api: Api, template: str) -> None:
    """A page asked for with a token issued before the opt-out: answered as the unknown person's search
    (which has no page but the first: no ``previous``, no token in ``self``) or the unknown id."""
    changed = CSV.replace("0208 111 2222", "0208 999 0000")  # a second version of the Patient
    report = await api.services.ingestor.run("gp", adapter_for("gp").read(io.StringIO(changed)), "v2.csv")
    assert report.quarantined_total == 0
    first = await api.get(template.format(**api.person(PERMITTED)))
    following = next(x["url"] for x in first.json()["link"] if x["relation"] == "next")
    parts = urlsplit(following)
    await api.services.register.opt_out(PERMITTED, OptOutKind.LOCAL, Authority.LETTER, OPERATOR, "later")
    held = await api.get(f"{parts.path}?{parts.query}")
    unknown = await api.get(template.format(**api.person(NEVER_SEEN)))
    assert normalise(held) == normalise(unknown)
    if held.status_code == 200:
        assert [x["relation"] for x in held.json()["link"]] == ["self"]
    else:
        assert_not_found(held, "Patient")


# --- reads, history, $everything -----------------------------------------------------------------------


async def test_read_patient(api: Api) -> None:
    assert_not_found(await api.both("/fhir/Patient/{pid}"), "Patient")
    assert_not_found(await api.both("/fhir/Patient/{pid}", **{"If-None-Match": 'W/"1"'}), "Patient")


async def test_read_careplan(api: Api) -> None:
    assert_not_found(await api.both("/fhir/CarePlan/{plan}"), "CarePlan")
    assert (await api.get("/fhir/CarePlan/{plan}".format(**api.person(PERMITTED)))).status_code == 200


@pytest.mark.parametrize(
    ("template", "rtype"),
    [
        ("/fhir/Patient/{pid}/_history", "Patient"),
        ("/fhir/Patient/{pid}/_history/1", "Patient"),
        ("/fhir/CarePlan/{plan}/_history", "CarePlan"),
        ("/fhir/CarePlan/{plan}/_history/1", "CarePlan"),
    ],
)
async def test_history(api: Api, template: str, rtype: str) -> None:
    assert_not_found(await api.both(template), rtype)


async def test_everything(api: Api) -> None:
    assert_not_found(await api.both("/fhir/Patient/{pid}/$everything"), "Patient")
    assert_not_found(await api.both("/fhir/Patient/{pid}/$everything?_count=1"), "Patient")


# --- the log and access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/Patient?identifier={nhs}",
        "/fhir/CarePlan?subject:identifier={nhs}&_include=CarePlan:subject",
        "/fhir/CarePlan?patient=Patient/{pid}",
        "/fhir/Patient/{pid}",
        "/fhir/CarePlan/{plan}",
        "/fhir/Patient/{pid}/_history",
        "/fhir/Patient/{pid}/$everything",
    ],
)
async def test_every_request_about_a_person_writes_exactly_one_entry(api: Api, template: str) -> None:
    for nhs_number, decision in ((OPTED_OUT, "deny"), (PERMITTED, "permit")):
        before = await api.log_rows(kind="disclosure", nhs_number=nhs_number, decision=decision)
        total = await api.log_rows()
        await api.get(template.format(**api.person(nhs_number)))
        assert await api.log_rows(kind="disclosure", nhs_number=nhs_number, decision=decision) == before + 1
        assert await api.log_rows() == total + 1


@pytest.mark.parametrize(
    ("template", "action"),
    [
        ("/fhir/Patient/{pid}", "read"),
        ("/fhir/CarePlan/{plan}", "read"),
        ("/fhir/CarePlan?patient=Patient/{pid}", "search"),
        ("/fhir/Patient/{pid}/_history", "history"),
        ("/fhir/Patient/{pid}/$everything", "everything"),
    ],
)
async def test_a_request_about_no_one_is_logged_as_such(api: Api, template: str, action: str) -> None:
    """An unknown id names no one: a deny with reason no-person and no NHS number, so the request
    costs what one about an opted-out person costs (a decision and an entry) and its timing says
    nothing either."""
    before = await api.log_rows(kind="disclosure", reason="no-person", action=action)
    total = await api.log_rows()
    response = await api.get(template.format(**api.person(NEVER_SEEN)))
    assert response.status_code in (200, 404)
    assert (
        await api.log_rows(kind="disclosure", reason="no-person", action=action, decision="deny")
        == before + 1
    )
    assert await api.log_rows() == total + 1
    async with api.services.engine.connect() as conn:
        last = (await conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1))).one()
    assert (last.nhs_number, last.detail) == (None, '{"withheld":[]}')


async def test_a_search_by_an_unknown_nhs_number_is_logged_too(api: Api) -> None:
    before = await api.log_rows(kind="disclosure", nhs_number=NEVER_SEEN)
    await api.get(f"/fhir/Patient?identifier={NEVER_SEEN}")
    assert await api.log_rows(kind="disclosure", nhs_number=NEVER_SEEN) == before + 1


@pytest.mark.parametrize(
    "template",
    [
        "/fhir/Patient?identifier={nhs}",
        "/fhir/CarePlan?subject:identifier={nhs}",
        "/fhir/Patient/{pid}",
        "/fhir/CarePlan/{plan}",
        "/fhir/Patient/{pid}/_history",
        "/fhir/Patient/{pid}/$everything",
    ],
)
async def test_no_token_or_a_wrong_scope_is_refused_before_any_entry_or_read(api: Api, template: str) -> None:
    before = await api.log_rows()
    for nhs_number in (OPTED_OUT, NEVER_SEEN, PERMITTED):
        url = template.format(**api.person(nhs_number))
        assert (await api.get(url, who=None)).status_code == 401
        assert (await api.get(url, who=None, Authorization="Bearer forged")).status_code == 401
        if "/CarePlan" not in template:
            assert (await api.get(url, who=PLANS_ONLY)).status_code == 403
    assert await api.log_rows() == before
