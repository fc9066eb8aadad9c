"""The FHIR read API on both stores: every endpoint, its errors, paging, ETags and the log."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import func, select

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.api.app import create_app
from gateway.api.principal import Principal, Role
from gateway.bootstrap import Services
from gateway.store.schema import audit_log

SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ALICE = "9990000018"  # two GP care plans, one active
OPTED_OUT = "9990000026"
HEADER = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,"
    "address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,"
    "plan_start,plan_end,activities,recorded_at\n"
)
ROWS = (
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,{phone},,"
    "GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,{phone},,"
    "GP1-CP2,FRAILTY,Proactive care plan,COMPLETE,2023-01-01,2024-01-01,,2023-01-01T09:00:00+00:00\n"
    "Y90001,GP2,9990000026,01,Mr,Patel,Noah,1938-10-31,M,25 Mill Lane,,Upminster,RM9 2YB,0208 733 4374,,"
    "GP2-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
)
READER = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
OTHER = Principal("epr-b", "Other EPR", "RXX", Role.PROVIDER, frozenset({"system/*.read"}))
PLANS_ONLY = Principal("plans", "Plans only", "RYY", Role.PROVIDER, frozenset({"system/CarePlan.read"}))
INVALID_TOKEN = 'Bearer error="invalid_token", error_description="the access token is not valid"'
PATIENTS_ONLY = Principal("people", "Patients only", "RZZ", Role.PROVIDER, frozenset({"system/Patient.read"}))
OPERATOR = Requester(RequesterKind.OPERATOR, "CONCORD", "test")


async def ingest(services: Services, phone: str = "0208 111 2222") -> None:
    csv = HEADER + ROWS.format(phone=phone)
    report = await services.ingestor.run("gp", adapter_for("gp").read(io.StringIO(csv)), "gp.csv")
    assert report.quarantined_total == 0


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    services: Services

    def id(self, nhs_number: str) -> str:
        return self.services.mapper.ids.patient(nhs_number)

    def plan_id(self, local_id: str, nhs_number: str) -> str:
        return self.services.mapper.ids.source_resource("CarePlan", "gp", local_id, nhs_number)

    async def get(
        self, url: str, who: Principal | None = READER, params: dict[str, str] | None = None, **headers: str
    ) -> httpx.Response:
        if who is not None:
            token, _ = self.app.state.tokens.issue(who)
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.get(url, params=params, headers=headers)

    async def log_rows(self, kind: str | None = None) -> int:
        query = select(func.count()).select_from(audit_log)
        if kind is not None:
            query = query.where(audit_log.c.kind == kind)
        async with self.services.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


@pytest.fixture
async def api(services: Services) -> AsyncIterator[Api]:
    await ingest(services)
    await services.register.opt_out(OPTED_OUT, OptOutKind.LOCAL, Authority.LETTER, OPERATOR, "test-opt-out")
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(app, client, services)


def validate(body: dict[str, Any]) -> None:
    get_fhir_model_class(body["resourceType"]).model_validate(body)


def resources(body: dict[str, Any], mode: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in body.get("entry", ())
        if mode is None or e.get("search", {}).get("mode") == mode
    ]


def link(body: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in body.get("link", ()) if x["relation"] == relation), None)


def local(url: str) -> str:
    """A link as a path the test client can follow (links carry the public base URL)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def outcome(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    return str(body["issue"][0]["diagnostics"])


# --- metadata -------------------------------------------------------------------------------------


async def test_metadata_is_public_valid_and_declares_what_the_read_api_serves(api: Api) -> None:
    response = await api.get("/fhir/metadata", who=None)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    validate(body)
    rest = body["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    for rtype in ("Patient", "CarePlan"):
        codes = {i["code"] for i in by_type[rtype]["interaction"]}
        assert {"read", "vread", "history-instance", "search-type"} <= codes
        assert not codes & {"delete", "patch"}
    assert [p["name"] for p in by_type["Patient"]["searchParam"]] == ["identifier"]
    assert {p["name"] for p in by_type["CarePlan"]["searchParam"]} == {"subject", "patient", "status"}
    assert "CarePlan:subject" in by_type["CarePlan"]["searchInclude"]
    assert by_type["Patient"]["operation"] == [
        {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
    ]
    security = rest["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (oauth,) = [e for e in security["extension"] if e["url"].endswith("/oauth-uris")]
    assert oauth["extension"] == [{"url": "token", "valueUri": "http://127.0.0.1:8080/token"}]


async def test_metadata_declares_batch_and_conditional_reads(api: Api) -> None:
    rest = (await api.get("/fhir/metadata", who=None)).json()["rest"][0]
    assert rest["interaction"] == [{"code": "batch"}, {"code": "transaction"}]  # POST /fhir takes both
    by_type = {r["type"]: r for r in rest["resource"]}
    for rtype in ("Patient", "CarePlan"):  # If-None-Match only (see test_read_with_etag...)
        assert by_type[rtype]["conditionalRead"] == "not-match"
    assert "conditionalRead" not in by_type["Consent"]


async def test_metadata_declares_no_route_that_is_not_mounted(api: Api) -> None:
    body = (await api.get("/fhir/metadata", who=None)).json()
    declared = {(r["type"], i["code"]) for r in body["rest"][0]["resource"] for i in r.get("interaction", ())}
    mounted = {(path, method) for path, ops in api.app.openapi()["paths"].items() for method in ops}
    for rtype, code in declared:
        if code == "search-type":
            assert (f"/fhir/{rtype}", "get") in mounted or (f"/fhir/{rtype}/_search", "post") in mounted
        if code == "create":
            assert (f"/fhir/{rtype}", "post") in mounted


def test_metadata_reads_what_other_routers_declare() -> None:
    from fastapi import APIRouter

    from gateway.api.routes.metadata import capability_statement

    router = APIRouter(prefix="/fhir")
    extra = {"x-fhir-search": [{"name": "patient", "type": "reference", "documentation": "NHS number"}]}

    @router.get("/Consent", openapi_extra=extra)
    async def consents() -> None: ...

    @router.put("/Consent/{cid}")
    async def withdraw(cid: str) -> None: ...

    @router.get("/AuditEvent")
    async def events(date: str | None = None, colour: str | None = None) -> None: ...

    chained = {"parameters": [{"name": "patient.identifier", "in": "query", "description": "NHS number"}]}

    @router.get("/Flag", openapi_extra=chained)
    async def flags() -> None: ...

    @router.post("")
    async def transaction() -> None: ...

    app = FastAPI(title="t", version="1")
    app.include_router(router)
    body = capability_statement(app, "https://gw.example")
    validate(body)
    rest = body["rest"][0]
    assert rest["interaction"] == [{"code": "transaction"}]
    assert rest["resource"] == [
        {
            "type": "AuditEvent",
            "interaction": [{"code": "search-type"}],
            "searchParam": [{"name": "date", "type": "date"}],
        },
        {
            "type": "Consent",
            "interaction": [{"code": "update"}, {"code": "search-type"}],
            "searchParam": [{"name": "patient", "type": "reference", "documentation": "NHS number"}],
        },
        {  # a chained parameter is declared as its base parameter, with the route's description
            "type": "Flag",
            "interaction": [{"code": "search-type"}],
            "searchParam": [{"name": "patient", "type": "reference", "documentation": "NHS number"}],
        },
    ]


async def test_metadata_lists_the_consent_and_audit_searches_that_work(api: Api) -> None:
    body = (await api.get("/fhir/metadata", who=None)).json()
    by_type = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert [p["name"] for p in by_type["Consent"]["searchParam"]] == ["patient"]
    audit = {p["name"]: p for p in by_type["AuditEvent"]["searchParam"]}
    assert sorted(audit) == ["action", "agent", "altid", "date", "outcome", "patient", "subtype", "type"]
    assert audit["agent"] == {
        "name": "agent",
        "type": "reference",
        "documentation": "The requesting organisation's ODS code (or agent.identifier)",
    }


async def test_metadata_only_in_json(api: Api) -> None:
    outcome(await api.get("/fhir/metadata?_format=xml", who=None), 406, "not-supported")
    assert (await api.get("/fhir/metadata?_format=json", who=None)).status_code == 200


@pytest.mark.parametrize(
    "url",
    ["/fhir/metadata", f"/fhir/Patient?identifier={ALICE}", f"/fhir/CarePlan?patient:identifier={ALICE}"],
)
async def test_the_fhir_version_parameter_names_r4_or_is_refused(api: Api, url: str) -> None:
    """R4 http.html "Version parameter": fhirVersion=4.0 on _format or Accept is R4; 3.0 is not served."""
    sep = "&" if "?" in url else "?"
    for fmt in ("application/fhir+json;fhirVersion=4.0", "application/fhir+json; fhirVersion=4.0.1"):
        assert (await api.get(url + sep + urlencode({"_format": fmt}))).status_code == 200, fmt
    assert (await api.get(url, Accept="application/fhir+json; fhirVersion=4.0")).status_code == 200
    assert (await api.get(url, Accept="application/fhir+json; charset=utf-8")).status_code == 200
    for wrong in ("application/fhir+json; fhirVersion=3.0", "application/json;fhirVersion=5.0"):
        outcome(await api.get(url, Accept=wrong), 406, "not-supported")
        outcome(await api.get(url + sep + urlencode({"_format": wrong})), 406, "not-supported")
    both = "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0"
    assert (await api.get(url, Accept=both)).status_code == 200


async def test_head_is_get_without_the_body(api: Api) -> None:
    token, _ = api.app.state.tokens.issue(READER)
    auth = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    for url in (
        "/fhir/metadata",
        f"/fhir/Patient/{api.id(ALICE)}",
        f"/fhir/Patient?identifier={ALICE}",  # the hot path
        f"/fhir/CarePlan?subject:identifier={ALICE}",
        "/fhir/Patient/0123abc",
    ):
        got = await api.client.get(url, headers=auth)
        head = await api.client.head(url, headers=auth)
        assert head.status_code == got.status_code, url
        assert head.content == b""
        assert head.headers["content-length"] == str(len(got.content))
        same = {k: v for k, v in head.headers.items() if k not in ("x-request-id", "date")}
        assert same == {k: v for k, v in got.headers.items() if k not in ("x-request-id", "date")}
    refused = await api.client.delete("/fhir/metadata")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    text = (await api.client.get("/metrics")).text
    assert 'method="HEAD",route="/fhir/Patient"' in text


# --- Patient search ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [f"{SYSTEM}|{ALICE}", ALICE, "999 000 0018"])
async def test_patient_search_by_nhs_number(api: Api, value: str) -> None:
    response = await api.get("/fhir/Patient", params={"identifier": value})
    assert response.status_code == 200
    body = response.json()
    validate(body)
    assert (body["type"], body["total"]) == ("searchset", 1)
    (entry,) = body["entry"]
    assert entry["search"] == {"mode": "match"}
    assert entry["fullUrl"] == f"http://127.0.0.1:8080/fhir/Patient/{api.id(ALICE)}"
    assert entry["resource"]["identifier"][0]["value"] == ALICE


async def test_patient_search_needs_an_nhs_number(api: Api) -> None:
    before = await api.log_rows()
    outcome(await api.get("/fhir/Patient"), 400, "required")
    outcome(await api.get(f"/fhir/Patient?identifier={SYSTEM}|9990000019"), 400, "invalid")
    outcome(await api.get("/fhir/Patient?identifier=https://example.org/mrn|1"), 400, "not-supported")
    outcome(await api.get(f"/fhir/Patient?identifier={ALICE},{OPTED_OUT}"), 400, "not-supported")
    assert await api.log_rows() == before  # refused before anyone was looked at


async def test_unknown_parameters_are_reported_when_lenient_and_refused_when_strict(api: Api) -> None:
    lenient = (await api.get(f"/fhir/Patient?identifier={ALICE}&name=Davies")).json()
    validate(lenient)
    assert lenient["total"] == 1
    (reported,) = resources(lenient, "outcome")
    assert reported["issue"][0]["severity"] == "warning"
    assert "name" in reported["issue"][0]["diagnostics"]
    assert "name=" not in link(lenient, "self")  # type: ignore[operator]
    strict = await api.get(f"/fhir/Patient?identifier={ALICE}&name=Davies", Prefer="handling=strict")
    assert "name" in outcome(strict, 400, "not-supported")


async def test_only_json_is_served(api: Api) -> None:
    outcome(
        await api.get(f"/fhir/Patient?identifier={ALICE}", Accept="application/fhir+xml"),
        406,
        "not-supported",
    )
    for fmt in ("json", "application/fhir+json", "application/json"):
        assert (await api.get(f"/fhir/Patient?identifier={ALICE}&_format={fmt}")).status_code == 200


# --- CarePlan search ----------------------------------------------------------------------------------


async def test_careplan_search_by_every_way_of_naming_the_person(api: Api) -> None:
    pid = api.id(ALICE)
    for query in (
        f"subject:identifier={SYSTEM}|{ALICE}",
        f"patient:identifier={ALICE}",
        f"subject.identifier={ALICE}",
        f"patient.identifier={SYSTEM}|{ALICE}",
        f"patient=Patient/{pid}",
        f"subject=Patient/{pid}",
        f"subject:Patient={pid}",
        f"patient=http://127.0.0.1:8080/fhir/Patient/{pid}",
    ):
        body = (await api.get(f"/fhir/CarePlan?{query}")).json()
        validate(body)
        assert body["total"] == 2, query
        assert {p["subject"]["reference"] for p in resources(body)} == {f"Patient/{pid}"}


async def test_careplan_status_filter(api: Api) -> None:
    active = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&status=active")).json()
    assert [p["status"] for p in resources(active)] == ["active"]
    both = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&status=active,completed")).json()
    assert both["total"] == 2
    none = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&status=draft")).json()
    assert none["total"] == 0 and "entry" not in none
    # repeated parameters are AND (a plan has one status), a comma within one is OR
    both_at_once = (
        await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&status=active&status=completed")
    ).json()
    assert both_at_once["total"] == 0 and "entry" not in both_at_once
    narrowed = f"/fhir/CarePlan?subject:identifier={ALICE}&status=active,completed&status=completed,draft"
    assert [p["status"] for p in resources((await api.get(narrowed)).json())] == ["completed"]
    # token search: the system CarePlan.status is bound to, or none; another system matches nothing
    for value, total in (
        ("http://hl7.org/fhir/request-status|active", 1),
        ("http://hl7.org/fhir/request-status|", 2),
        ("http://example.org/other|active", 0),
        ("|active", 0),
    ):
        found = await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&" + urlencode({"status": value}))
        assert found.json()["total"] == total, value


async def test_careplan_search_includes_the_subject(api: Api) -> None:
    body = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&_include=CarePlan:subject")).json()
    validate(body)
    assert body["total"] == 2  # matches only; the included Patient is not counted
    assert [p["resourceType"] for p in resources(body, "match")] == ["CarePlan", "CarePlan"]
    assert [p["id"] for p in resources(body, "include")] == [api.id(ALICE)]


async def test_include_of_the_patient_needs_the_patient_scope(api: Api) -> None:
    before = await api.log_rows()
    url = f"/fhir/CarePlan?subject:identifier={ALICE}&_include=CarePlan:subject"
    outcome(await api.get(url, who=PLANS_ONLY), 403, "forbidden")
    assert await api.log_rows() == before
    assert (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}", who=PLANS_ONLY)).status_code == 200


async def test_a_careplan_search_needs_one_person(api: Api) -> None:
    outcome(await api.get("/fhir/CarePlan?status=active"), 400, "required")
    outcome(await api.get(f"/fhir/CarePlan?patient=Patient/x&subject:identifier={ALICE}"), 400, "invalid")
    outcome(await api.get("/fhir/CarePlan?subject=Group/1"), 400, "not-supported")


async def test_paging_with_next_and_previous_links(api: Api) -> None:
    first = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&_count=1")).json()
    assert (first["total"], len(resources(first)), link(first, "previous")) == (2, 1, None)
    following = link(first, "next")
    assert following is not None and "_page=" in following
    second = (await api.get(local(following))).json()
    validate(second)
    assert len(resources(second)) == 1 and link(second, "next") is None
    assert resources(second)[0]["id"] != resources(first)[0]["id"]
    back = link(second, "previous")
    assert back is not None and "_page=" not in back
    assert (await api.get(local(back))).json()["entry"] == first["entry"]


async def test_paging_tokens_are_bound_to_the_client_and_cannot_be_edited(api: Api) -> None:
    first = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&_count=1")).json()
    following = local(link(first, "next"))  # type: ignore[arg-type]
    token = parse_qs(urlsplit(following).query)["_page"][0]
    before = await api.log_rows()
    stolen = outcome(await api.get(following, who=OTHER), 400, "invalid")
    forged = outcome(await api.get(following.replace(token, "1.AAAAAAAAAAAAAAAAAAAAAAAA")), 400, "invalid")
    edited = outcome(await api.get(following.replace("_count=1", "_count=2")), 400, "invalid")
    assert stolen == forged == edited
    assert await api.log_rows() == before


@pytest.mark.parametrize("token", ["1.%FF%FE", "1.%C3%A9", "%FF.abc"])
async def test_a_paging_token_with_non_ascii_characters_is_refused_as_any_other(api: Api, token: str) -> None:
    pid = api.id(ALICE)
    for url in (
        f"/fhir/Patient?identifier=9990002169&_page={token}",
        f"/fhir/CarePlan?patient=Patient/{pid}&_page={token}",
        f"/fhir/Patient/{pid}/_history?_page={token}",
        f"/fhir/Patient/{pid}/$everything?_page={token}",
    ):
        assert outcome(await api.get(url), 400, "invalid") == "the paging token is not valid for this search"


async def test_count_is_capped_at_the_largest_page(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.services.settings, "max_page_size", 1)
    body = (await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&_count=50")).json()
    assert (body["total"], len(resources(body))) == (2, 1)
    # self (and next) carry the page size applied, not the one asked for; next still works
    assert parse_qs(urlsplit(link(body, "self")).query)["_count"] == ["1"]  # type: ignore[arg-type]
    following = link(body, "next")
    assert following is not None and parse_qs(urlsplit(following).query)["_count"] == ["1"]
    assert len(resources((await api.get(local(following))).json())) == 1
    everything = (await api.get(f"/fhir/Patient/{api.id(ALICE)}/$everything?_count=50")).json()
    assert parse_qs(urlsplit(link(everything, "self")).query)["_count"] == ["1"]  # type: ignore[arg-type]
    outcome(await api.get(f"/fhir/CarePlan?subject:identifier={ALICE}&_count=-1"), 400, "invalid")


# --- read, vread, history ---------------------------------------------------------------------------


async def test_read_with_etag_and_conditional_read(api: Api) -> None:
    response = await api.get(f"/fhir/Patient/{api.id(ALICE)}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith("GMT")
    assert response.json()["id"] == api.id(ALICE)
    assert (await api.get(f"/fhir/Patient/{api.id(ALICE)}", **{"If-None-Match": 'W/"1"'})).status_code == 304
    assert (await api.get(f"/fhir/Patient/{api.id(ALICE)}", **{"If-None-Match": 'W/"7"'})).status_code == 200
    plan = await api.get(f"/fhir/CarePlan/{api.plan_id('GP1-CP1', ALICE)}?_format=json")
    assert plan.status_code == 200 and plan.json()["status"] == "active"
    validate(plan.json())


async def test_read_of_an_unknown_id(api: Api) -> None:
    before = await api.log_rows()
    assert outcome(await api.get("/fhir/Patient/0123abc"), 404, "not-found") == "Patient not found"
    assert outcome(await api.get("/fhir/CarePlan/0123abc"), 404, "not-found") == "CarePlan not found"
    outcome(await api.get("/fhir/Patient/not%20an%20id"), 404, "not-found")
    assert await api.log_rows() == before + 3  # each logged as about no one (reason no-person)


async def test_read_of_one_type_by_the_id_of_another_is_not_found(api: Api) -> None:
    outcome(await api.get(f"/fhir/CarePlan/{api.id(ALICE)}"), 404, "not-found")


async def test_history_and_vread(api: Api) -> None:
    await ingest(api.services, phone="0208 999 0000")  # a second version of the shared Patient
    pid = api.id(ALICE)
    body = (await api.get(f"/fhir/Patient/{pid}/_history")).json()
    validate(body)
    assert (body["type"], body["total"]) == ("history", 2)
    assert [e["resource"]["meta"]["versionId"] for e in body["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in body["entry"]] == ["PUT", "POST"]
    assert body["entry"][0]["response"]["etag"] == 'W/"2"'
    assert (await api.get(f"/fhir/Patient/{pid}")).headers["etag"] == 'W/"2"'
    old = await api.get(f"/fhir/Patient/{pid}/_history/1")
    assert old.status_code == 200 and old.headers["etag"] == 'W/"1"'
    assert old.json()["telecom"][0]["value"] == "0208 111 2222"
    assert (await api.get(f"/fhir/Patient/{pid}/_history/1", **{"If-None-Match": 'W/"1"'})).status_code == 304
    outcome(await api.get(f"/fhir/Patient/{pid}/_history/9"), 404, "not-found")
    outcome(await api.get(f"/fhir/Patient/{pid}/_history/abc"), 404, "not-found")
    paged = (await api.get(f"/fhir/Patient/{pid}/_history?_count=1")).json()
    assert len(paged["entry"]) == 1 and link(paged, "next") is not None
    plan = (await api.get(f"/fhir/CarePlan/{api.plan_id('GP1-CP1', ALICE)}/_history")).json()
    assert plan["total"] == 1
    outcome(await api.get("/fhir/CarePlan/0123abc/_history"), 404, "not-found")


# --- $everything ----------------------------------------------------------------------------------------


async def test_everything_is_the_shared_care_view(api: Api) -> None:
    body = (await api.get(f"/fhir/Patient/{api.id(ALICE)}/$everything")).json()
    validate(body)
    assert body["type"] == "searchset"
    kinds = [r["resourceType"] for r in resources(body)]
    assert kinds[0] == "Patient"
    assert kinds.count("CarePlan") == 2 and kinds.count("Provenance") >= 2
    assert body["total"] == len(kinds)
    paged = (await api.get(f"/fhir/Patient/{api.id(ALICE)}/%24everything?_count=2")).json()
    assert len(resources(paged)) == 2 and link(paged, "next") is not None


async def test_everything_needs_both_scopes(api: Api) -> None:
    before = await api.log_rows()
    outcome(await api.get(f"/fhir/Patient/{api.id(ALICE)}/$everything", who=PATIENTS_ONLY), 403, "forbidden")
    outcome(await api.get(f"/fhir/Patient/{api.id(ALICE)}/$everything", who=PLANS_ONLY), 403, "forbidden")
    assert await api.log_rows() == before


# --- access and the log ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/fhir/Patient?identifier={ALICE}",
        f"/fhir/CarePlan?subject:identifier={ALICE}",
        "/fhir/Patient/{pid}",
        "/fhir/Patient/{pid}/_history",
        "/fhir/Patient/{pid}/$everything",
    ],
)
async def test_no_token_or_a_wrong_scope_is_refused_before_anything_is_read(api: Api, path: str) -> None:
    url = path.format(pid=api.id(ALICE))
    before = await api.log_rows()
    response = await api.get(url, who=None)
    outcome(response, 401, "login")
    assert response.headers["www-authenticate"] == "Bearer"  # no token: a bare challenge (RFC 6750 3.1)
    invalid = await api.get(url, Authorization="Bearer not-a-token", who=None)
    outcome(invalid, 401, "login")
    assert invalid.headers["www-authenticate"] == INVALID_TOKEN
    wrong = PLANS_ONLY if "Patient" in path else PATIENTS_ONLY
    refused = await api.get(url, who=wrong)
    outcome(refused, 403, "forbidden")
    if "$everything" in path:
        needed = "system/Patient.read system/CarePlan.read"
    else:
        needed = "system/CarePlan.read" if path.startswith("/fhir/CarePlan") else "system/Patient.read"
    assert refused.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{needed}"'

    assert await api.log_rows() == before


async def test_every_request_for_a_person_is_logged_once(api: Api) -> None:
    pid = api.id(ALICE)
    for url in (
        f"/fhir/Patient?identifier={ALICE}",
        f"/fhir/CarePlan?patient=Patient/{pid}&_include=CarePlan:subject",
        f"/fhir/Patient/{pid}",
        f"/fhir/Patient/{pid}/_history",
        f"/fhir/Patient/{pid}/$everything",
    ):
        before = await api.log_rows("disclosure")
        assert (await api.get(url)).status_code == 200
        assert await api.log_rows("disclosure") == before + 1, url
    async with api.services.engine.connect() as conn:
        last = (
            (await conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1))).one()._mapping
        )
    assert (last["action"], last["decision"], last["client_id"]) == ("everything", "permit", "epr-a")
    assert last["request_id"]


async def test_nothing_is_released_when_the_log_cannot_be_written(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_entries: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(api.services.disclosure.log, "append", broken)
    response = await api.get(f"/fhir/Patient/{api.id(ALICE)}")
    outcome(response, 503, "transient")
    assert ALICE not in response.text


# --- the hot path (gateway.api.hot_path) ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"/fhir/Patient?identifier={SYSTEM}|{ALICE}",
        f"/fhir/CarePlan?subject:identifier={ALICE}&_include=CarePlan:subject&_count=1",
        f"/fhir/Patient?identifier={OPTED_OUT}",
        f"/fhir/CarePlan?subject:identifier={ALICE}&unknown=1",
        "/fhir/Patient?identifier=123",
        "/fhir/CarePlan",
    ],
)
async def test_the_hot_path_answers_as_the_route_does(api: Api, url: str) -> None:
    """A search with a body is not the hot path's: the FastAPI route answers it, and must agree."""
    token, _ = api.app.state.tokens.issue(READER)
    headers = {"Authorization": f"Bearer {token}"}
    hot = await api.client.get(url, headers=headers)
    logged = await api.log_rows()
    routed = await api.client.request("GET", url, headers=headers, content=b"{}")
    assert (routed.status_code, routed.json()) == (hot.status_code, hot.json())
    assert routed.headers["content-type"] == hot.headers["content-type"] == "application/fhir+json"
    assert await api.log_rows() - logged == (1 if hot.status_code == 200 else 0)


async def test_the_hot_path_refuses_as_the_route_does(api: Api) -> None:
    url = f"/fhir/Patient?identifier={ALICE}"
    missing = await api.get(url, who=None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong_scope = await api.get(url, who=PLANS_ONLY)
    assert wrong_scope.status_code == 403 and wrong_scope.json()["issue"][0]["code"] == "forbidden"
    assert (
        wrong_scope.headers["www-authenticate"]
        == 'Bearer error="insufficient_scope", scope="system/Patient.read"'
    )
    invalid = await api.get(url, Authorization="Bearer x.y.z", who=None)
    routed_invalid = await api.client.request(
        "GET", url, content=b"{}", headers={"Authorization": "Bearer x.y.z"}
    )
    assert invalid.status_code == routed_invalid.status_code == 401
    assert invalid.headers["www-authenticate"] == routed_invalid.headers["www-authenticate"] == INVALID_TOKEN
    xml = await api.get(url + "&_format=xml")
    assert xml.status_code == 406
    routed = await api.client.request("GET", url, content=b"{}", headers={"Authorization": "Basic x"})
    assert routed.status_code == 401 and routed.json() == missing.json()


@pytest.mark.parametrize(
    "path",
    [
        f"/fhir/Patient?identifier={ALICE}",
        f"/fhir/CarePlan?subject:identifier={ALICE}",
        "/fhir/Patient/{pid}",
    ],
)
async def test_a_token_in_the_header_and_the_query_is_refused_on_both_paths(api: Api, path: str) -> None:
    # RFC 6750 §3.1: more than one method of sending the token is invalid_request (400).
    url = path.format(pid=api.id(ALICE))
    token, _ = api.app.state.tokens.issue(READER)
    both = f"{url}{'&' if '?' in url else '?'}access_token={token}"
    before = await api.log_rows()
    hot = await api.get(both)
    routed = await api.client.request(
        "GET", both, content=b"{}", headers={"Authorization": f"Bearer {token}"}
    )  # a body: not the hot path's
    for answer in (hot, routed):
        outcome(answer, 400, "invalid")
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_request"')
    assert hot.json() == routed.json()
    assert await api.log_rows() == before
    # In the query alone a token is not read: the caller has none.
    alone = await api.get(both, who=None)
    outcome(alone, 401, "login")
    assert (await api.get(url)).status_code == 200


async def test_the_hot_path_gzips_as_the_app_does(api: Api) -> None:
    url = f"/fhir/CarePlan?subject:identifier={ALICE}"
    plain = await api.get(url, **{"Accept-Encoding": "identity"})
    assert len(plain.content) >= 1000 and "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    zipped = await api.get(url, **{"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json() == plain.json()
    assert int(zipped.headers["content-length"]) < len(plain.content)
    small = await api.get(f"/fhir/Patient?identifier={OPTED_OUT}", **{"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers and "vary" not in small.headers
    for refused in ("gzip;q=0", "gzip; q=0.0, identity", "br, gzip;q=0"):  # q=0: not acceptable
        unzipped = await api.get(url, **{"Accept-Encoding": refused})
        assert "content-encoding" not in unzipped.headers, refused
        routed = await api.client.request(
            "GET", url, content=b"{}", headers={**unzipped.request.headers, "Accept-Encoding": refused}
        )
        assert "content-encoding" not in routed.headers, refused
    assert (await api.get(url, **{"Accept-Encoding": "gzip;q=0.5"})).headers["content-encoding"] == "gzip"


async def test_the_hot_path_names_its_route_in_the_metrics_and_echoes_the_request_id(api: Api) -> None:
    answer = await api.get(f"/fhir/Patient?identifier={ALICE}", **{"X-Request-ID": "hot-1"})
    assert answer.headers["x-request-id"] == "hot-1"
    text = (await api.client.get("/metrics")).text
    assert 'concord_http_requests_total{method="GET",route="/fhir/Patient",status="2xx"} 1.0' in text
    assert ALICE not in text
