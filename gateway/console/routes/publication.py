"""Publication to the HIE for the IG board: what it holds per person, and what it refused.

``GET  /console/publication``    the outbox and the HIE's state in numbers, open dead letters with
                                 the HIE's reason, and the HIE's state person by person
``POST /console/publication``    the filter form (state, NHS number); a redirect to the filtered page

A person's state at the HIE says whether they opted out (``retracted``), so each page is logged
before it is shown (``publication-read``).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.console import queries
from gateway.console.filters import (
    HIE_STATES,
    PublicationFilter,
    read_publication,
)
from gateway.console.routes.common import filter_form, log_shown, page_number, sealed_filter
from gateway.console.web import AUDIT_READ, AUDITORS, ConsoleRoute, render, staff
from gateway.store import outbox

router = APIRouter(prefix="/console", route_class=ConsoleRoute)

SEAL: Final = "publication"
PAGE_SIZE: Final = 50
DEAD_LETTERS: Final = 100


@router.get("/publication")
async def publication_page(request: Request) -> Response:
    caller = staff(request, AUDITORS, [AUDIT_READ])
    wanted, _, expired = sealed_filter(caller, request, SEAL, PublicationFilter)
    page = page_number(request)
    async with caller.services.engine.connect() as conn:
        summary = await outbox.summary(conn)
        letters = await outbox.open_dead_letters(conn, DEAD_LETTERS)
        people, total = await queries.people_at_hie(conn, wanted, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    await log_shown(
        caller,
        "publication-read",
        wanted.nhs_number or None,
        what={"people": len(people), "dead-letters": len(letters)},
    )
    for letter in letters:
        letter["reasons"] = hie_reasons(str(letter["outcome"]))
    for person in people:
        person["held"] = len(orjson.loads(person["published"] or "[]"))
    return _page(
        request,
        wanted,
        summary=summary,
        letters=letters,
        people=people,
        total=total,
        page=page,
        expired=expired,
    )


@router.post("/publication")
async def filter_publication(request: Request) -> Response:
    return await filter_form(
        request, staff(request, AUDITORS, [AUDIT_READ]), "/console/publication", SEAL, read_publication, _page
    )


def hie_reasons(outcome: str) -> list[str]:
    """What the HIE said, in words: each issue's code and diagnostics (and which entry failed)."""
    try:
        body = orjson.loads(outcome)
    except orjson.JSONDecodeError:
        return [outcome[:500]]
    reasons: list[str] = []
    prefix = ""
    if isinstance(body, dict) and "failed_entry" in body:
        prefix = f"entry {body['failed_entry']}: "
        body = body.get("outcome")
    for node in _issues(body):
        text = ": ".join(str(node[k]) for k in ("code", "diagnostics") if node.get(k))
        if text:
            reasons.append(prefix + text)
    return reasons or [prefix + "no reason given"]


def _issues(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("issue"), list):
        return [i for i in body["issue"] if isinstance(i, dict)]
    if isinstance(body, dict) and body.get("diagnostics"):
        return [body]
    return []


def _page(request: Request, wanted: PublicationFilter, status: int = 200, **values: Any) -> Response:
    return render(
        request,
        "publication.jinja",
        status,
        title="Publication to the HIE",
        filter=wanted,
        q=request.query_params.get("q", ""),
        states=HIE_STATES,
        page_size=PAGE_SIZE,
        **values,
    )
