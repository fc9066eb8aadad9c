"""The FHIR read API: search, read, vread, history and ``$everything`` for Patient and CarePlan.

Every handler takes the same steps, in this order:

1. scopes, as a dependency: 401/403 before anything is parsed, read or logged;
2. parse and validate the request (``gateway.api.search``): 400 before anything is read or logged;
3. resolve the one person: the NHS number a search names, or the owner of the id asked for
   (only its NHS number is read, never content);
4. ``services.disclosure.person``: decide, and only on a permit run a loader that reads what
   this request needs, bound to that person; the decision is logged (one entry) either way;
5. join the stored bytes into the response.

A person the caller may not see gets what a person concord does not hold gets: an empty
searchset (total 0) for a search, 404 with the same OperationOutcome for a read, a history
or ``$everything``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncEngine

from consent.model import Purpose
from gateway.api import openapi
from gateway.api.deps import RequestId, require
from gateway.api.fhir_responses import (
    Link,
    Match,
    check_format_of,
    fhir,
    history,
    ignored_outcome,
    resource_response,
    searchset,
)
from gateway.api.outcome import BadRequest, NotFound, insufficient_scope
from gateway.api.principal import Principal
from gateway.api.search import (
    CAREPLAN_SEARCH,
    FORMAT,
    PAGE,
    PAGE_ONLY,
    PATIENT_SEARCH,
    Limits,
    PageTokens,
    Query,
    parse,
    query_string,
    strict_handling,
)
from gateway.bootstrap import Services
from gateway.disclosure import Ask, Disclosed, Loaded
from gateway.store import search as store
from gateway.store.hot_reads import Found, HotReads

router = APIRouter(prefix="/fhir", tags=["FHIR read"], responses=openapi.ERRORS)

PATIENT_READ = "system/Patient.read"
CAREPLAN_READ = "system/CarePlan.read"
PatientReader = Annotated[Principal, Depends(require(PATIENT_READ))]
CarePlanReader = Annotated[Principal, Depends(require(CAREPLAN_READ))]
ViewReader = Annotated[Principal, Depends(require(PATIENT_READ, CAREPLAN_READ))]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
PageRead = Callable[[str, int, int], Awaitable[tuple[int, list[Match]]]]


@dataclass(slots=True)
class Page:
    offset: int
    total: int = 0
    entries: list[Match] = field(default_factory=list)
    permitted: bool = False


@dataclass(slots=True)
class Call:
    """One request to the read API, however it arrived (a FastAPI route or ``gateway.api.hot_path``)."""

    principal: Principal
    request_id: str
    #: The query string's parameters in order.
    pairs: list[tuple[str, str]]
    #: Request headers by lower-case name.
    headers: Mapping[str, str]

    @classmethod
    def of(cls, request: Request, principal: Principal, request_id: str) -> Call:
        return cls(principal, request_id, request.query_params.multi_items(), request.headers)


class ReadApi:
    """What every read shares in a serving process: the services, the search reads, paging tokens."""

    def __init__(self, services: Services, engine: AsyncEngine) -> None:
        self.services = services
        #: The store for reads beyond the searches (``store.database.reader``: autocommit on PostgreSQL).
        self.engine = engine
        self.searches: HotReads = services.reads
        settings = services.settings
        self.base = settings.public_url.rstrip("/") + "/fhir/"
        self.tokens = PageTokens(settings.resolved_token_secret())

    @property
    def limits(self) -> Limits:
        settings = self.services.settings
        return Limits(min(settings.default_page_size, settings.max_page_size), settings.max_page_size)


def read_api(request: Request) -> ReadApi:
    api: ReadApi = request.app.state.read_api
    return api


@dataclass(slots=True)
class Context:
    """One request: who asks, under which request id, against which read API."""

    api: ReadApi
    call: Call

    @property
    def base(self) -> str:
        return self.api.base

    @property
    def principal(self) -> Principal:
        return self.call.principal

    def check_format(self) -> None:
        fmt = next((v for k, v in self.call.pairs if k == FORMAT), None)
        check_format_of(fmt, self.call.headers.get("accept", ""))

    def query(self, accepted: Mapping[str, str]) -> Query:
        self.check_format()
        strict = strict_handling(self.call.headers.get("prefer"))
        return parse(accepted, self.call.pairs, strict, self.api.limits, self.base)

    def offset(self, path: str, query: Query) -> int:
        return self.api.tokens.offset(query.page, self.principal.client_id, path, query.used)

    async def owner(self, rtype: str, rid: str | None) -> str | None:
        if rid is None or not _ID.fullmatch(rid):
            return None
        return await self.api.searches.owner(rtype, rid)

    def _ask(self, action: str) -> Ask:
        return Ask(self.principal.requester, Purpose.DIRECT_CARE.value, action, self.call.request_id)

    async def nobody(self, action: str) -> None:
        await self.api.services.disclosure.nobody(self._ask(action))

    async def disclose(
        self, action: str, nhs_number: str, load: Callable[[str], Awaitable[Loaded]]
    ) -> Disclosed:
        return await self.api.services.disclosure.person(self._ask(action), nhs_number, load)

    async def page(
        self, action: str, offset: int, limit: int, nhs_number: str | None, read: PageRead
    ) -> Page:
        """One page for one person, through the disclosure function (nothing without a person: a
        request about no one is logged as such, ``Disclosure.nobody``)."""
        page = Page(offset)
        if nhs_number is None:
            await self.nobody(action)
            return page

        async def load(number: str) -> Loaded:
            page.total, page.entries = await read(number, offset, limit)
            return [(rtype, rid, content) for rtype, rid, content, _ in page.entries]

        page.permitted = (await self.disclose(action, nhs_number, load)).permitted
        return page

    def links(self, path: str, query: Query, page: Page) -> list[Link]:
        """``self``, then ``next`` and ``previous`` when there are such pages.

        A withheld page has the links of a person concord does not hold, who has no page but the
        first: a paging token held from before an opt-out shows in neither ``self`` nor ``previous``.
        """
        if not page.permitted:
            page = Page(0)
        tokens = self.api.tokens

        def at(offset: int) -> str:
            pairs = list(query.used)
            if offset:
                pairs.append((PAGE, tokens.issue(self.principal.client_id, path, query.used, offset)))
            qs = query_string(pairs)
            return self.base + path + (f"?{qs}" if qs else "")

        links = [("self", at(page.offset))]
        if query.count and page.offset + query.count < page.total:
            links.append(("next", at(page.offset + query.count)))
        if query.count and page.offset > 0:
            links.append(("previous", at(max(0, page.offset - query.count))))
        return links

    def searchset(self, path: str, query: Query, page: Page) -> bytes:
        outcome = ignored_outcome(query.ignored)
        return searchset(self.base, page.entries, page.total, self.links(path, query, page), outcome)


def _not_found(rtype: str) -> NotFound:
    """The one answer for an id that is unknown, withheld, or has no such version."""
    return NotFound(f"{rtype} not found")


def _matches(mode: str, found: list[Found]) -> list[Match]:
    return [(rtype, rid, content, mode) for rtype, rid, content in found]


#: The scopes each search needs (the hot path checks them as the routes' dependencies do).
PATIENT_SEARCH_SCOPES = (PATIENT_READ,)
CAREPLAN_SEARCH_SCOPES = (CAREPLAN_READ,)


async def patient_search(ctx: Context) -> bytes:
    """``GET /fhir/Patient?identifier=...``: a searchset of the person's Patient (none if withheld)."""
    query = ctx.query(PATIENT_SEARCH)
    if query.person is None:
        raise BadRequest(
            "a Patient search needs identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS number}",
            code="required",
        )
    offset = ctx.offset("Patient", query)
    searches = ctx.api.searches

    async def read(number: str, offset: int, limit: int) -> tuple[int, list[Match]]:
        found = await searches.patient(number)
        return len(found), _matches("match", found[offset : offset + limit])

    page = await ctx.page("search", offset, query.count, query.person.nhs_number, read)
    return ctx.searchset("Patient", query, page)


async def careplan_search(ctx: Context) -> bytes:
    """``GET /fhir/CarePlan?subject...``: a searchset of the person's CarePlans (none if withheld)."""
    query = ctx.query(CAREPLAN_SEARCH)
    if query.person is None:
        raise BadRequest("a CarePlan search needs patient, subject or subject:identifier", code="required")
    if query.include_subject and not ctx.principal.allows(PATIENT_READ):
        raise insufficient_scope(
            PATIENT_READ, diagnostics=f"scope {PATIENT_READ} is required for _include=CarePlan:subject"
        )
    offset = ctx.offset("CarePlan", query)
    person = query.person
    nhs_number = person.nhs_number or await ctx.owner("Patient", person.patient_id)
    searches = ctx.api.searches

    async def read(number: str, offset: int, limit: int) -> tuple[int, list[Match]]:
        if query.statuses is not None and not query.statuses:
            return 0, []  # no status satisfies every status parameter: nothing to read
        total, plans = await searches.careplans(number, query.statuses or (), offset, limit)
        entries = _matches("match", plans)
        if query.include_subject and plans:
            entries += _matches("include", await searches.patient(number))
        return total, entries

    page = await ctx.page("search", offset, query.count, nhs_number, read)
    return ctx.searchset("CarePlan", query, page)


@router.get(
    "/Patient",
    summary="Search Patients by NHS number",
    openapi_extra=openapi.search(("identifier", openapi.NHS_IDENTIFIER + " (required)")),
)
async def search_patients(request: Request, principal: PatientReader, request_id: RequestId) -> Response:
    return fhir(await patient_search(Context(read_api(request), Call.of(request, principal, request_id))))


@router.get(
    "/CarePlan",
    summary="Search a person's CarePlans",
    openapi_extra=openapi.search(
        ("patient", "Patient/{id}: the person (or subject, subject:Patient)"),
        ("subject", "Patient/{id}: the person"),
        ("subject:identifier", openapi.NHS_IDENTIFIER + " (or patient:identifier, subject.identifier)"),
        ("status", "CarePlan status: comma-separated means any of them, repeated means all of them"),
        ("_include", "CarePlan:subject: add the Patient (needs system/Patient.read)"),
    ),
)
async def search_careplans(request: Request, principal: CarePlanReader, request_id: RequestId) -> Response:
    return fhir(await careplan_search(Context(read_api(request), Call.of(request, principal, request_id))))


async def _read(ctx: Context, rtype: str, rid: str, vid: str | None = None) -> Response:
    ctx.check_format()
    if vid is not None and not (vid.isascii() and vid.isdigit() and len(vid) < 10):
        raise _not_found(rtype)
    nhs_number = await ctx.owner(rtype, rid)
    if nhs_number is None:
        await ctx.nobody("read")
        raise _not_found(rtype)
    found: list[store.Stored] = []

    async def load(number: str) -> Loaded:
        async with ctx.api.engine.connect() as conn:
            if vid is None:
                stored = await store.read_one(conn, rtype, rid, number)
            else:
                stored = await store.read_version(conn, rtype, rid, int(vid), number)
        found.extend([stored] if stored is not None else [])
        return [s.triple for s in found]

    await ctx.disclose("read", nhs_number, load)
    if not found:
        raise _not_found(rtype)
    stored = found[0]
    return resource_response(
        ctx.call.headers.get("if-none-match"), stored.content, stored.version_id, stored.last_updated
    )


async def _history(ctx: Context, rtype: str, rid: str) -> Response:
    query = ctx.query(PAGE_ONLY)
    path = f"{rtype}/{rid}/_history"
    offset = ctx.offset(path, query)
    nhs_number = await ctx.owner(rtype, rid)
    versions: list[store.Stored] = []

    async def read(number: str, offset: int, limit: int) -> tuple[int, list[Match]]:
        async with ctx.api.engine.connect() as conn:
            total, found = await store.history_page(conn, rtype, rid, number, offset, limit)
        versions.extend(found)
        return total, _matches("history", [s.triple for s in found])

    page = await ctx.page("history", offset, query.count, nhs_number, read)
    if not page.permitted or page.total == 0:
        raise _not_found(rtype)
    listed = [(s.version_id, s.last_updated, s.content) for s in versions]
    return fhir(history(ctx.base, rtype, rid, listed, page.total, ctx.links(path, query, page)))


def _instance_routes(rtype: str, scope: str) -> None:
    """read, vread and history of one type, each under the type's read scope."""
    allowed = Depends(require(scope))

    async def read(rid: str, request: Request, request_id: RequestId, who: Principal = allowed) -> Response:
        return await _read(Context(read_api(request), Call.of(request, who, request_id)), rtype, rid)

    async def vread(
        rid: str, vid: str, request: Request, request_id: RequestId, who: Principal = allowed
    ) -> Response:
        return await _read(Context(read_api(request), Call.of(request, who, request_id)), rtype, rid, vid)

    async def instance_history(
        rid: str, request: Request, request_id: RequestId, who: Principal = allowed
    ) -> Response:
        return await _history(Context(read_api(request), Call.of(request, who, request_id)), rtype, rid)

    name = rtype.lower()
    router.add_api_route(f"/{rtype}/{{rid}}", read, methods=["GET"], name=f"read_{name}")
    router.add_api_route(
        f"/{rtype}/{{rid}}/_history",
        instance_history,
        methods=["GET"],
        name=f"{name}_history",
        openapi_extra=openapi.search(),
    )
    router.add_api_route(f"/{rtype}/{{rid}}/_history/{{vid}}", vread, methods=["GET"], name=f"vread_{name}")


_instance_routes("Patient", PATIENT_READ)
_instance_routes("CarePlan", CAREPLAN_READ)


@router.get("/Patient/{rid}/$everything", openapi_extra=openapi.search())
async def everything(rid: str, request: Request, principal: ViewReader, request_id: RequestId) -> Response:
    """The shared care view: the Patient, every source's CarePlans, their Provenance (a searchset)."""
    ctx = Context(read_api(request), Call.of(request, principal, request_id))
    query = ctx.query(PAGE_ONLY)
    path = f"Patient/{rid}/$everything"
    offset = ctx.offset(path, query)
    nhs_number = await ctx.owner("Patient", rid)

    async def read(number: str, offset: int, limit: int) -> tuple[int, list[Match]]:
        async with ctx.api.engine.connect() as conn:
            total, rows = await store.person_page(conn, number, offset, limit)
        return total, _matches("match", [s.triple for s in rows])

    page = await ctx.page("everything", offset, query.count, nhs_number, read)
    if not page.permitted:
        raise _not_found("Patient")
    return fhir(ctx.searchset(path, query, page))
