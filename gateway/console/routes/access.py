"""The access log for the IG board: every disclosure decision, and one person's whole history.

``GET  /console/access``                   disclosure decisions, newest first (filters sealed in ``q``)
``POST /console/access``                   the filter form; a redirect to the filtered page
``GET  /console/access/person``            a subject access request: everything the log holds about
                                           one person, on one page (the person sealed in ``q``)
``POST /console/access/person``            the NHS number; a redirect to that page
``GET  /console/access/export.csv``        what the filters show, as ``concord audit export`` writes it
``GET  /console/access/export.ndjson``     the same as FHIR AuditEvent resources (``gateway.audit.export``)

Each page and export is itself logged first (``audit-search``, ``audit-export``). An export is
a snapshot: it stops at the log's head when it was asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import APIRouter
from sqlalchemy import ColumnElement
from starlette.requests import Request
from starlette.responses import Response

from consent.chain import Kind
from gateway.audit.export import csv_header, csv_lines, ndjson_lines
from gateway.console import queries
from gateway.console.filters import (
    DECISIONS,
    PURPOSES,
    AccessFilter,
    error_list,
    read_access,
    read_nhs_number,
)
from gateway.console.routes.common import download, filter_form, log_shown, sealed_filter, seq_param
from gateway.console.web import (
    AUDIT_READ,
    AUDITORS,
    ConsoleRoute,
    Staff,
    check_csrf,
    form,
    redirect,
    render,
    staff,
)
from gateway.store.audit import read_head
from gateway.store.schema import audit_log

router = APIRouter(prefix="/console", route_class=ConsoleRoute)

SEAL: Final = "access"
PAGE_SIZE: Final = 50
#: A subject access page shows at most this many entries (the export has them all).
PERSON_CAP: Final = 5000


def _staff(request: Request) -> Staff:
    return staff(request, AUDITORS, [AUDIT_READ])


@router.get("/access")
async def access_page(request: Request) -> Response:
    caller = _staff(request)
    wanted, _, expired = sealed_filter(caller, request, SEAL, AccessFilter)
    before = seq_param(request, "before")
    async with caller.services.engine.connect() as conn:
        entries, more = await queries.access_page(conn, queries.access_conditions(wanted), before, PAGE_SIZE)
        names = await queries.client_names(conn)
    await log_shown(caller, "audit-search", wanted.nhs_number or None, what={"AuditEvent": len(entries)})
    return _page(request, wanted, entries=entries, more=more, names=names, expired=expired, before=before)


@router.post("/access")
async def filter_access(request: Request) -> Response:
    return await filter_form(request, _staff(request), "/console/access", SEAL, read_access, _page)


@router.get("/access/person")
async def person_page(request: Request) -> Response:
    caller = _staff(request)
    wanted, data, expired = sealed_filter(caller, request, SEAL, AccessFilter)
    if not wanted.nhs_number or not data.get("all"):
        return render(request, "person.jinja", title="Subject access request", expired=expired)
    where = queries.access_conditions(AccessFilter(nhs_number=wanted.nhs_number), kind=None)
    async with caller.services.engine.connect() as conn:
        entries, more = await queries.access_page(conn, where, None, PERSON_CAP)
        names = await queries.client_names(conn)
    await log_shown(caller, "audit-search", wanted.nhs_number, what={"AuditEvent": len(entries)})
    disclosures = [s for s in entries if s.entry.kind == Kind.DISCLOSURE]
    return render(
        request,
        "person.jinja",
        title="Subject access request",
        nhs_number=wanted.nhs_number,
        disclosures=disclosures,
        changes=[s for s in entries if s.entry.kind != Kind.DISCLOSURE],
        organisations=sorted({s.entry.org_ods for s in disclosures}),
        denied=sum(1 for s in disclosures if s.entry.decision == "deny"),
        more=more,
        cap=PERSON_CAP,
        names=names,
        q=request.query_params.get("q", ""),
    )


@router.post("/access/person")
async def find_person(request: Request) -> Response:
    caller = _staff(request)
    fields = await form(request)
    check_csrf(caller.session, fields)
    problems: dict[str, str] = {}
    number = read_nhs_number(fields.get("nhs_number", ""), "nhs-number", problems)
    if not number and not problems:
        problems["nhs-number"] = "Enter an NHS number"
    if problems:
        return render(
            request,
            "person.jinja",
            400,
            title="Subject access request",
            errors=error_list(problems),
            problems=problems,
        )
    return redirect("/console/access/person?q=" + caller.seal(SEAL, {"nhs_number": number, "all": True}))


@router.get("/access/export.csv")
async def export_csv(request: Request) -> Response:
    caller, where = await _export(request)

    async def chunks() -> AsyncIterator[bytes]:
        yield csv_header()
        async with caller.services.engine.connect() as conn:
            async for page in queries.entry_stream(conn, where):
                yield csv_lines(page)

    return download(chunks(), "text/csv; charset=utf-8", "concord-access-log.csv")


@router.get("/access/export.ndjson")
async def export_ndjson(request: Request) -> Response:
    caller, where = await _export(request)
    ods = caller.services.settings.organisation_ods

    async def chunks() -> AsyncIterator[bytes]:
        async with caller.services.engine.connect() as conn:
            async for page in queries.entry_stream(conn, where):
                yield ndjson_lines(page, ods)

    return download(chunks(), "application/fhir+ndjson", "concord-access-log.ndjson")


async def _export(request: Request) -> tuple[Staff, list[ColumnElement[bool]]]:
    """The export's conditions (up to the log's head now), logged before anything is sent."""
    caller = _staff(request)
    wanted, data, _ = sealed_filter(caller, request, SEAL, AccessFilter)
    where = queries.access_conditions(wanted, kind=None if data.get("all") else Kind.DISCLOSURE)
    async with caller.services.engine.connect() as conn:
        where.append(audit_log.c.seq <= (await read_head(conn)).seq)
        total = await queries.count_entries(conn, where)
    await log_shown(caller, "audit-export", wanted.nhs_number or None, what={"AuditEvent": total})
    return caller, where


def _page(request: Request, wanted: AccessFilter, status: int = 200, **values: Any) -> Response:
    return render(
        request,
        "access.jinja",
        status,
        title="Access log",
        filter=wanted,
        q=request.query_params.get("q", ""),
        purposes=PURPOSES,
        decisions=DECISIONS,
        **values,
    )
