"""The consent register for the IG board: every opt-out and withdrawal, who recorded it, when, why.

``GET  /console/consent``                  a page of the register (filters sealed in ``q``)
``POST /console/consent``                  the filter form; a redirect to the filtered page
``GET  /console/consent/export.csv``       what the filters show, as CSV
``GET  /console/consent/export.ndjson``    the same as FHIR Consent resources, one a line

Every page and export is logged before it is shown (``consent-search``, ``consent-export``:
disclosure entries naming the reader, and the person when the filter names one).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.console import queries
from gateway.console.filters import (
    KINDS,
    SOURCES,
    STATUSES,
    ConsentFilter,
    read_consent,
)
from gateway.console.routes.common import download, filter_form, log_shown, page_number, sealed_filter
from gateway.console.web import (
    AUDITORS,
    CONSENT_READ,
    ConsoleRoute,
    Staff,
    render,
    staff,
)

router = APIRouter(prefix="/console", route_class=ConsoleRoute)

SEAL: Final = "consent"
PAGE_SIZE: Final = 50
CSV_COLUMNS: Final = (
    "id",
    "nhs_number",
    "kind",
    "status",
    "authority",
    "source",
    "recorded_at",
    "recorded_by",
    "recorded_by_ods",
    "withdrawn_at",
    "withdrawn_by",
    "withdrawal_authority",
    "version_id",
)


def _staff(request: Request) -> Staff:
    return staff(request, AUDITORS, [CONSENT_READ])


@router.get("/consent")
async def register_page(request: Request) -> Response:
    caller = _staff(request)
    wanted, _, expired = sealed_filter(caller, request, SEAL, ConsentFilter)
    page = page_number(request)
    async with caller.services.engine.connect() as conn:
        rows, total = await queries.consent_page(conn, wanted, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        names = await queries.client_names(conn)
    shown = [{"resourceType": "Consent", "id": r["id"]} for r in rows]
    await log_shown(caller, "consent-search", wanted.nhs_number or None, shown)
    return _page(request, wanted, rows=rows, total=total, page=page, names=names, expired=expired)


@router.post("/consent")
async def filter_register(request: Request) -> Response:
    return await filter_form(request, _staff(request), "/console/consent", SEAL, read_consent, _page)


@router.get("/consent/export.csv")
async def export_csv(request: Request) -> Response:
    caller, wanted = await _export(request)

    async def chunks() -> AsyncIterator[bytes]:
        yield _csv([CSV_COLUMNS])
        async with caller.services.engine.connect() as conn:
            async for rows in queries.consent_stream(conn, wanted):
                yield _csv([[_value(r[c]) for c in CSV_COLUMNS] for r in rows])

    return download(chunks(), "text/csv; charset=utf-8", "concord-consent-register.csv")


@router.get("/consent/export.ndjson")
async def export_ndjson(request: Request) -> Response:
    caller, wanted = await _export(request)

    async def chunks() -> AsyncIterator[bytes]:
        async with caller.services.engine.connect() as conn:
            async for rows in queries.consent_stream(conn, wanted):
                yield b"".join(str(r["content"]).encode() + b"\n" for r in rows)

    return download(chunks(), "application/fhir+ndjson", "concord-consent-register.ndjson")


async def _export(request: Request) -> tuple[Staff, ConsentFilter]:
    caller = _staff(request)
    wanted, _, _ = sealed_filter(caller, request, SEAL, ConsentFilter)
    async with caller.services.engine.connect() as conn:
        _, total = await queries.consent_page(conn, wanted, 0, 0)
    await log_shown(caller, "consent-export", wanted.nhs_number or None, what={"Consent": total})
    return caller, wanted


def _page(request: Request, wanted: ConsentFilter, status: int = 200, **values: Any) -> Response:
    q = request.query_params.get("q", "")
    return render(
        request,
        "consent.jinja",
        status,
        title="Consent register",
        filter=wanted,
        q=q,
        page_size=PAGE_SIZE,
        sources=SOURCES,
        statuses=STATUSES,
        kinds=KINDS,
        **values,
    )


def _value(value: object) -> str:
    """A CSV cell: times in UTC ISO 8601; a cell a spreadsheet would run as a formula gets a ``'``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    text = str(value)
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _csv(rows: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()
